"""The transfer engine: chunks of every file pulled from the hub and pushed to Cloud Storage at once.

*Unit of work: a chunk.* A file is cut into ``models.chunk_mib`` chunks, each fetched with one HTTP
Range GET of the hub's resolve URL (plain ``requests``, whatever HTTP client the installed
huggingface_hub uses; the CDN redirect is followed and the token is dropped when the host or port
changes). Chunks of every file share ``models.workers`` download threads and as many upload threads, so
a 4 GB shard is pulled and pushed over many connections at once, small files don't wait behind large
ones, and each chunk's upload overlaps the next chunks' downloads. How many ranges of one file are in
flight adapts to what the hub gives that file (``staging/streams.py``): it starts at half the workers and
grows while one more range still brings more, so a fast edge is not held to a fixed count and a
struggling one (no gain, 429s, resets) is not pushed harder. The body is read from the socket straight
into the chunk's memory, which is reused for later chunks.

*Integrity.* SHA-256 cannot be computed out of order, so chunks are hashed strictly in file order as they
arrive together with a running crc32c. A file of several chunks is one XML API multipart upload to its
final name: each chunk is a part, sent with its crc32c and checked against the crc32c GCS reports for it.
The upload is completed only when the whole file's sha256 equals the one the hub publishes (LFS files;
small files are checked against their git blob id), then the object's crc32c is compared with the one we
computed over the hub's bytes. A mismatch aborts the upload. So the final name only ever receives
verified bytes.

*Resuming.* A killed run leaves its upload open and a resume record per part (``staging/state.py``), so
the next run continues at the first missing part and uploads only the parts after it. The parts already
uploaded are verified without reading them back from GCS (from a laptop that read is billed internet
egress, ~$0.12/GB, for every resumed file): their bytes are fetched again from the hub (Hugging Face
egress is free, and a downlink is usually several times an uplink, so this is the cheap direction),
hashed in order with the rest, so the whole file's sha256 is checked as in a fresh run, and each part's
MD5 is compared with the ETag GCS lists for it (the XML API's part ETag is the MD5 of the part's bytes).
A part that differs is uploaded again under its number (a multipart upload keeps the last copy of a
part), so a corrupt part costs one part, not the file. Restarting the file instead would re-fetch the same
bytes from the hub *and* upload them again.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gptoss_gke.core import interrupt
from gptoss_gke.core.report import format_size
from gptoss_gke.core.retry import is_transient_exception
from gptoss_gke.errors import StepError, ToolError
from gptoss_gke.gcp.storage import MultipartUploads, TransientError, b64_crc32c, gcs_error
from gptoss_gke.staging.chunks import (Budget, Buffer, ChunkMemory, Progress, Tuning, combine_crc32c,
                                       extend_crc32c)
from gptoss_gke.staging.claim import marker_name
from gptoss_gke.staging.hub import HubHttpError, HubRepo, RepoFile
from gptoss_gke.staging.state import (CRC_KEY, ETAG_KEY, PARTIAL_SUFFIX, SHA_KEY, UPLOAD_KEY, ResumePoint, StagedObject,
                                      chunk_name, partial_dir)
from gptoss_gke.staging.streams import SAMPLE_S, StreamController


PIECE = 1024 * 1024  # one read from the socket into the chunk (and how often a slow range is noticed)
# A range slower than a quarter of the others' median after this long is cut and asked for again (the rest of
# it) on a new connection: one slow CDN edge must not set the pace of the whole file.
HEDGE_AFTER_S = 2.0
MAX_REISSUES = 3
RATE_WINDOW = 16  # the ranges whose rates make "the others"


class _FileJob:
    """One file in flight: its chunks, the in-order hasher, what is uploaded."""

    def __init__(self, f: RepoFile, chunk: int, resume: ResumePoint | None, pdir: str, name: str,
                 streams: StreamController):
        self.f = f
        self.name = name  # the final object
        # Non-LFS files (configs, templates: small by the hub's rules) are one piece, checked against
        # their git blob id; LFS files are chunked and checked against their sha256.
        self.chunk = chunk if f.lfs else max(f.size, 1)
        self.n = max(1, -(-f.size // self.chunk))
        self.pdir = pdir
        self.lock = threading.Lock()
        # A continued upload: chunks below ``verify_below`` are uploaded already; they are fetched again
        # only to be hashed and checked against their parts (see the module docstring).
        self.verify_below = resume.chunks if resume else 0
        self.next_hash = 0
        self.sha = hashlib.sha256()
        self.crc = 0
        self.pending: dict[int, Buffer] = {}
        self.remaining = set(range(self.verify_below, self.n))
        self.reuploaded: list[int] = []  # parts found corrupt and sent again
        self.digest: str | None = None
        self.failed: str | None = None
        self.upload_id = resume.upload_id if resume else None  # the multipart upload, when several parts
        self.etags: dict[int, str] = dict(resume.etags) if resume else {}
        # Ranges in flight (under Transfer.sched): how many now, how many wanted, the window being measured.
        self.streams = streams
        self.next_index = 0  # the next chunk to download
        self.in_flight = 0
        self.window_start = 0.0
        self.window_bytes = 0
        self.window_errors = 0

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk
        return start, min(self.chunk, self.f.size - start)



class Transfer:
    def __init__(self, ctx, *, hub: HubRepo, bucket, folder: str, revision: str, files: list[RepoFile],
                 resume: dict[str, ResumePoint], tuning: Tuning, sweep_records: bool = True):
        self.ctx = ctx
        self.hub = hub
        self.bucket = bucket
        self.mpu = MultipartUploads(bucket)
        self.folder = folder
        self.revision = revision
        self.tuning = tuning
        self.sweep_records = sweep_records  # False in a pod of the Job: the other pods' records are theirs
        # Each file starts with half the workers' ranges in flight (a few streams are safe at any CDN edge)
        # and may grow to all of them while the hub gives more for each (staging/streams.py).
        self.jobs = [_FileJob(f, tuning.chunk, resume.get(f.path), partial_dir(folder, f, tuning.chunk),
                              folder + f.path, StreamController(max(1, tuning.workers // 2), tuning.workers))
                     for f in sorted(files, key=lambda f: (f.size > tuning.chunk, f.path))]
        self.memory = None if tuning.temp_dir else ChunkMemory(tuning.chunk)
        self.sched = threading.Condition()  # ranges in flight: per file and in all (at most models.workers)
        self.in_flight = 0
        self.resumed = sum(r.offset for r in resume.values())
        self.budget = Budget(tuning.budget)
        self.errors: list[str] = []
        self.fatal: BaseException | None = None
        self.done: dict[str, StagedObject] = {}
        self.lock = threading.Lock()
        self.bytes_down = 0
        self.bytes_up = 0
        self.rates: list[float] = []  # bytes/s of the ranges that completed lately
        self.reissued = 0
        self.headers = hub.headers()
        self.session = None
        self.stop = interrupt.current()

    def _stopping(self) -> bool:
        return self.fatal is not None or self.stop.is_set()

    def stats(self) -> dict:
        return {"files_moved": len(self.done), "bytes_downloaded": self.bytes_down, "bytes_uploaded": self.bytes_up,
                "resumed_bytes": self.resumed, "ranges_reissued": self.reissued,
                "streams": {j.f.path: {"start": j.streams.start, "peak": j.streams.peak, "end": j.streams.streams}
                            for j in self.jobs if j.n > 1}}

    # -- orchestration
    def run(self) -> None:
        import requests

        # Plain requests for the byte ranges (whatever HTTP client this huggingface_hub version uses):
        # one pooled connection per worker; redirects to the CDN are followed and requests drops the
        # Authorization header when the host changes.
        self.session = requests.Session()
        pool = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.tuning.workers + 4)
        self.session.mount("http://", pool)
        self.session.mount("https://", pool)
        total = sum(j.f.size for j in self.jobs)  # parts already uploaded count once checked against the hub's bytes
        self.progress = Progress(self.ctx, total, len(self.jobs))
        workers = self.tuning.workers
        self.down_pool = ThreadPoolExecutor(workers, thread_name_prefix="hf-get")
        self.up_pool = ThreadPoolExecutor(workers, thread_name_prefix="gcs-put")
        try:
            # Ctrl-C/SIGTERM: no chunk starts after it, and a wait for local space ends at once.
            with self.stop.on_interrupt(self._wake):
                self._dispatch()
        finally:
            self.down_pool.shutdown(wait=True)
            self.up_pool.shutdown(wait=True)
            self.progress.close()
        self._report_streams()
        self._cleanup_failed()
        if self.fatal is None and self.stop.is_set():
            self.fatal = self.stop.error(f"while staging into gs://{self.bucket.name}/{self.folder} (parts already "
                                         f"uploaded are kept: the next run resumes from them)")
        if self.fatal is None and not self.errors and self.sweep_records:
            # The resume records are done with; the run's claim is removed by FolderClaim.
            self._delete_prefix(f"{self.folder.rstrip('/')}{PARTIAL_SUFFIX}/", keep=marker_name(self.folder))
        if self.fatal is not None:
            if isinstance(self.fatal, StepError):
                raise self.fatal
            raise self.fatal
        if self.errors:
            first, *rest = self.errors
            more = f" (and {len(rest)} more: {'; '.join(rest)})" if rest else ""
            raise StepError(first + more, "nothing was written under the failing file's final name; re-run to "
                            "retry (the upstream file may be corrupt or have changed: if it persists, pin "
                            "another revision)")

    def _guard(self, fn, job: _FileJob, *args) -> None:
        try:
            fn(job, *args)
        except Exception as exc:  # noqa: BLE001 - recorded, the run stops
            with self.lock:
                if self.fatal is None:
                    self.fatal = exc
            self._wake()

    def _wake(self) -> None:
        """The run stops: a wait for local space or for a free stream ends at once."""
        self.budget.abort()
        with self.sched:
            self.sched.notify_all()

    # -- which chunk downloads next
    def _dispatch(self) -> None:
        """Start every chunk's download, files in order, each file keeping at most its controller's count of
        ranges in flight and all files together at most models.workers. A file at its count leaves the free
        workers to the next files (small files never wait behind a large one)."""
        while True:
            with self.sched:
                while True:
                    if self._stopping():
                        return
                    open_jobs = [j for j in self.jobs if j.next_index < j.n and not j.failed]
                    if not open_jobs:
                        return
                    job = next((j for j in open_jobs if j.in_flight < j.streams.streams), None) \
                        if self.in_flight < self.tuning.workers else None
                    if job is not None:
                        break
                    self.sched.wait(0.5)
                index = job.next_index
                job.next_index += 1
                job.in_flight += 1
                self.in_flight += 1
                if index == 0:  # the file's first range: its first measuring window starts
                    job.window_start = time.monotonic()
            if index == 0 and job.n > 1 and job.upload_id is None:
                self._guard(self._start, job)
            _, length = job.span(index)
            if self._stopping() or not self.budget.acquire(length):
                self._range_over(job)
                return
            self.down_pool.submit(self._guard, self._download, job, index, length)

    def _range_over(self, job: _FileJob) -> None:
        with self.sched:
            job.in_flight -= 1
            self.in_flight -= 1
            self.sched.notify_all()

    def _measure(self, job: _FileJob, nbytes: int, error: bool = False) -> None:
        """Bytes of ``job`` that arrived (or a transient error); every SAMPLE_S the window becomes a sample
        for the file's controller, and a higher count lets the dispatcher start another range at once."""
        now = time.monotonic()
        with self.sched:
            job.window_bytes += nbytes
            job.window_errors += error
            elapsed = now - job.window_start
            if elapsed < SAMPLE_S and not error:
                return
            before = job.streams.streams
            job.streams.sample(job.window_bytes, elapsed, job.window_errors)
            job.window_start, job.window_bytes, job.window_errors = now, 0, 0
            if job.streams.streams > before:
                self.sched.notify_all()

    def _report_streams(self) -> None:
        moved = [j for j in self.jobs if j.n > 1 and j.streams.peak != j.streams.start]
        if moved:
            self.ctx.printer.line("    ranges in flight per file, adapted to the hub: " + ", ".join(
                f"{j.f.path} {j.streams.start} → {j.streams.streams} (peak {j.streams.peak})" for j in moved), "dim")

    # -- per chunk
    def _download(self, job: _FileJob, index: int, length: int) -> None:
        try:
            if self._stopping() or job.failed:
                self.budget.release(length)
                return
            start, _ = job.span(index)
            buf = Buffer(self.tuning.temp_dir, length, self.memory)

            def attempt() -> None:
                try:
                    self._fetch(job, start, length, buf)
                except Exception as exc:
                    if is_transient_exception(exc):  # a 429, a 5xx, a reset: the file's controller backs off
                        self._measure(job, 0, error=True)
                    raise

            try:
                self.ctx.retrying(attempt, f"downloading {job.f.path}")
            except Exception as exc:
                buf.close()
                self.budget.release(length)
                if isinstance(exc, ToolError):  # (an interrupt among them)
                    raise
                raise self.hub.explain(exc, self.revision) from None
        finally:
            self._range_over(job)
        self._offer(job, index, buf)

    def _fetch(self, job: _FileJob, start: int, length: int, buf: Buffer) -> None:
        """One chunk from the hub. A range far slower than the others (one slow CDN edge) is cut and the rest
        of it asked for again on a new connection, keeping what arrived: at most MAX_REISSUES times."""
        f = job.f
        buf.reset()
        reissues = 0
        while True:
            slow = self._fetch_range(job, start, length, buf, hedge=reissues < MAX_REISSUES)
            if not slow:
                return
            reissues += 1
            with self.lock:
                self.reissued += 1
            self.ctx.note(f"    {f.path}: a range came at {slow}; asked for the rest of it again on a new "
                          f"connection", "dim")

    def _fetch_range(self, job: _FileJob, start: int, length: int, buf: Buffer, *, hedge: bool) -> str | None:
        """Fetch what ``buf`` still lacks of the chunk; returns the rate when it was cut as too slow."""
        f = job.f
        headers = dict(self.headers)
        headers["Accept-Encoding"] = "identity"  # the bytes as published, so sizes and hashes hold
        have = buf.size
        ranged = length != f.size or have > 0
        if ranged:
            headers["Range"] = f"bytes={start + have}-{start + length - 1}"
        url = self.hub.url(self.revision, f.path)
        began = time.monotonic()
        with self.session.get(url, headers=headers, stream=True, allow_redirects=True, timeout=(15, 60)) as r:
            if r.status_code >= 400:
                err = HubHttpError(r.status_code, r.headers.get("X-Error-Code"), r.headers.get("X-Error-Message"),
                                   url)
                err.response = r  # is_transient reads the status from here (429, 5xx)
                raise err
            if ranged and (r.status_code != 206 or not r.headers.get("Content-Range", "").startswith(
                    f"bytes {start + have}-{start + length - 1}/")):
                raise StepError(f"{self.hub.endpoint} did not answer a Range request for {f.path} with that range "
                                f"(HTTP {r.status_code}, Content-Range {r.headers.get('Content-Range')})",
                                "use the Hugging Face Hub or a mirror that supports byte ranges")
            # We asked for identity: the body is read from http.client's response (under urllib3's) straight
            # into the chunk's memory, with no bytes object per read. Were it encoded anyway (or that response
            # not there), urllib3 decodes it and its pieces are copied in.
            encoded = bool(r.headers.get("Content-Encoding", "identity") not in ("", "identity"))
            raw = None if encoded else getattr(r.raw, "_fp", None)
            pieces = None if hasattr(raw, "readinto") else (
                r.iter_content(PIECE) if encoded else r.raw.stream(PIECE, decode_content=False))
            got = 0
            while buf.size < length:
                self.stop.check(f"while downloading {f.path}")
                if pieces is None:
                    n = raw.readinto(buf.space(min(PIECE, length - buf.size)))
                    buf.commit(n)
                else:
                    piece = next(pieces, b"")
                    n = len(piece)
                    buf.write(piece)
                if not n:
                    break
                got += n
                with self.lock:
                    self.bytes_down += n
                self._measure(job, n)
                if hedge and buf.size < length:
                    slow = self._too_slow(got, time.monotonic() - began)
                    if slow:
                        r.close()  # this connection goes: the pool opens a new one (maybe another edge)
                        return slow
            if buf.size != length:
                raise TransientError(f"short read of {f.path}: {buf.size} of {length} bytes")
            if pieces is None and raw.isclosed():
                # Read to its end: the connection goes back to the pool for the next range (no new TLS
                # handshake and TCP slow start per chunk); closing the response would drop it.
                r.raw.release_conn()
            self._rate(got, time.monotonic() - began)
            return None

    def _rate(self, nbytes: int, seconds: float) -> None:
        if seconds > 0 and nbytes >= PIECE:
            with self.lock:
                self.rates = (self.rates + [nbytes / seconds])[-RATE_WINDOW:]

    def _too_slow(self, nbytes: int, seconds: float) -> str | None:
        """Slow: after HEDGE_AFTER_S, under a quarter of the median rate of the ranges that completed lately."""
        with self.lock:
            rates = list(self.rates)
        if seconds < HEDGE_AFTER_S or len(rates) < 2:
            return None
        rate, typical = nbytes / seconds, statistics.median(rates)
        return f"{format_size(rate)}/s (the others: {format_size(typical)}/s)" if rate < typical / 4 else None

    def _offer(self, job: _FileJob, index: int, buf: Buffer) -> None:
        """Hash chunks strictly in order; each hashed chunk goes to the upload pool with the crc32c after it.

        Each hash is there for one guarantee, and each reads the chunk's memory in place:
        * sha256 of the whole file (LFS files): equal to the one the hub publishes, or nothing is completed;
          the only check that these are the hub's bytes (the git blob id plays that part for small files).
        * crc32c of the chunk: sent with its part; GCS refuses a part whose body differs (the way to GCS).
        * crc32c of the file so far (combined from the chunks', no second pass): the completed object's
          crc32c must equal it (GCS's assembly of the parts), and a resume record keeps it.
        * MD5, only for parts an earlier run uploaded: GCS lists a part's ETag as its MD5, so a part is
          checked against the hub's bytes without reading it back (MD5 costs as much as sha256: never on a
          fresh upload, where the crc32c above already covers the part).
        """
        ready, verified = [], []
        with job.lock:
            job.pending[index] = buf
            while job.next_hash in job.pending:
                i = job.next_hash
                b = job.pending.pop(i)
                chunk_crc = 0
                md5 = hashlib.md5(usedforsecurity=False) if i < job.verify_below else None
                for piece in b.pieces():
                    job.sha.update(piece)
                    chunk_crc = extend_crc32c(chunk_crc, piece)
                    if md5 is not None:
                        md5.update(piece)
                job.crc = combine_crc32c(job.crc, chunk_crc, b.size)
                job.next_hash += 1
                if job.next_hash == job.n:
                    job.digest = job.sha.hexdigest()
                    if not self._matches(job, b):
                        job.failed = self._mismatch(job)
                if md5 is not None and md5.hexdigest() == job.etags.get(i + 1, "").strip('"'):
                    verified.append((i, b))  # GCS holds exactly these bytes: nothing to send
                    continue
                if md5 is not None:  # uploaded by an earlier run, but not these bytes: send the part again
                    job.remaining.add(i)
                    job.reuploaded.append(i + 1)
                ready.append((i, b, chunk_crc, job.crc))
        for i, b in verified:
            _, length = job.span(i)
            b.close()
            self.budget.release(length)
            self.progress.add(length)
        for i, b, chunk_crc, crc in ready:
            self.up_pool.submit(self._guard, self._upload, job, i, b, chunk_crc, crc)

    @staticmethod
    def _mismatch(job: _FileJob) -> str:
        return (f"{job.f.path}: content does not match the hash the hub publishes "
                f"({'sha256' if job.f.lfs else 'git blob id'}); upstream bytes corrupt or changed in transit")

    def _matches(self, job: _FileJob, whole: Buffer) -> bool:
        f = job.f
        if f.lfs:
            return job.digest == f.sha256
        h = hashlib.sha1(b"blob %d\0" % f.size)
        for piece in whole.pieces():
            h.update(piece)
        return h.hexdigest() == f.git_oid

    def _upload(self, job: _FileJob, index: int, buf: Buffer, chunk_crc: int, crc_after: int) -> None:
        _, length = job.span(index)
        try:
            if self._stopping() or job.failed:
                return
            if job.n == 1:
                obj = self._put(job.name, buf, chunk_crc, self._final_metadata(job))
                self.progress.add(length)
                self._finish(job, obj)
                return
            etag = self._put_part(job, index, buf, chunk_crc)
            self._record(job, index, etag, crc_after)
            self.progress.add(length)
            with job.lock:
                job.etags[index + 1] = etag
                job.remaining.discard(index)
                last = not job.remaining and job.next_hash == job.n
            if last and not job.failed:
                self._complete(job)
        finally:
            buf.close()
            self.budget.release(length)

    def _final_metadata(self, job: _FileJob) -> dict:
        meta = {SHA_KEY: job.digest or job.f.sha256, "hf-revision": self.revision}
        if not job.f.lfs:
            meta["git-oid"] = job.f.git_oid
        return meta

    def _put(self, name: str, buf: Buffer, crc: int, metadata: dict) -> StagedObject:
        want = b64_crc32c(crc)

        def once():
            blob = self.bucket.blob(name)
            blob.metadata = metadata
            blob.crc32c = want  # GCS rejects the upload if the body does not match
            blob.upload_from_file(buf.reader(), size=buf.size, content_type="application/octet-stream",
                                  checksum=None, retry=None, timeout=(15, 600))
            if blob.crc32c != want:
                self._delete_quietly(name)
                raise TransientError(f"crc32c of gs://{self.bucket.name}/{name} is {blob.crc32c}, sent {want}")
            with self.lock:
                self.bytes_up += buf.size
            return StagedObject(name, int(blob.size or buf.size), metadata.get(SHA_KEY), blob.crc32c, dict(metadata))

        try:
            return self.ctx.retrying(once, f"uploading {name.rsplit('/', 1)[-1]}")
        except StepError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket.name, doing="uploading to") from None

    # -- files of several parts: one multipart upload each
    def _start(self, job: _FileJob) -> None:
        """Open the file's upload under its final name, carrying the sha256 the hub publishes: it is only
        completed once our own hash of the bytes equals it."""
        try:
            job.upload_id = self.ctx.retrying(lambda: self.mpu.start(job.name, self._final_metadata(job)),
                                              f"starting the upload of {job.f.path}")
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket.name, doing="uploading to") from None

    def _put_part(self, job: _FileJob, index: int, buf: Buffer, crc: int) -> str:
        def once() -> str:
            etag = self.mpu.put_part(job.name, job.upload_id, index + 1, buf, crc)
            with self.lock:
                self.bytes_up += buf.size
            return etag

        try:
            return self.ctx.retrying(once, f"uploading part {index + 1} of {job.f.path}")
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket.name, doing="uploading to") from None

    def _record(self, job: _FileJob, index: int, etag: str, crc_after: int) -> None:
        """The zero-byte resume record of a part: what a killed run needs to continue the upload."""
        blob = self.bucket.blob(chunk_name(job.pdir, index))
        blob.metadata = {CRC_KEY: str(crc_after), UPLOAD_KEY: job.upload_id, ETAG_KEY: etag}
        try:
            self.ctx.retrying(lambda: blob.upload_from_string(b"", content_type="application/octet-stream",
                                                              retry=None), "recording progress")
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket.name, doing="uploading to") from None

    def _complete(self, job: _FileJob) -> None:
        """Assemble the parts under the final name (server-side), then check what GCS made of them."""
        from google.api_core import exceptions as gexc

        try:
            self.ctx.retrying(lambda: self.mpu.complete(job.name, job.upload_id, job.etags),
                              f"completing the upload of {job.f.path}")
        except gexc.NotFound:
            pass  # an earlier attempt completed it and the answer was lost: the check below decides
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket.name, doing="completing an upload in") from None
        final = self.ctx.retrying(lambda: self.bucket.get_blob(job.name, retry=None), f"reading {job.f.path}")
        if final is None or final.crc32c != b64_crc32c(job.crc) or int(final.size or 0) != job.f.size:
            if final is not None:
                self._delete_quietly(final.name)
            with job.lock:
                job.failed = (f"{job.f.path}: the uploaded object's crc32c/size "
                              f"({getattr(final, 'crc32c', None)}, {getattr(final, 'size', None)}) differs from the "
                              f"bytes we verified ({b64_crc32c(job.crc)}, {job.f.size})")
            return
        job.upload_id = None
        if job.reuploaded:
            self.ctx.note(f"{job.f.path}: part(s) {', '.join(map(str, job.reuploaded))} left by an earlier run "
                          f"differed from the hub's bytes and were uploaded again")
        self._finish(job, StagedObject(final.name, job.f.size, job.digest, final.crc32c, final.metadata or {}))
        self._delete_prefix(job.pdir)  # last: while its records remain, the object is not taken as staged

    def _finish(self, job: _FileJob, obj: StagedObject) -> None:
        with self.lock:
            self.done[job.f.path] = obj
        self.progress.file_done()

    # -- cleanup
    def _delete_quietly(self, name: str) -> None:
        from google.api_core import exceptions as gexc

        try:
            self.bucket.blob(name).delete(retry=None)
        except gexc.NotFound:
            pass
        except Exception:  # noqa: BLE001 - cleanup is best effort; leftovers are under .partial/
            pass

    def _delete_prefix(self, prefix: str, keep: str | None = None) -> None:
        try:
            names = [b.name for b in self.bucket.client.list_blobs(self.bucket.name, prefix=prefix, retry=None)]
        except Exception:  # noqa: BLE001
            return
        for name in names:
            if name != keep:
                self._delete_quietly(name)

    def _cleanup_failed(self) -> None:
        """A file that failed verification leaves nothing: no final object, no parts, nothing to resume from."""
        for job in self.jobs:
            if job.failed:  # its final name was never written (or was deleted when its crc32c differed)
                self.errors.append(job.failed)
                if job.upload_id:
                    try:
                        self.mpu.abort(job.name, job.upload_id)
                    except Exception:  # noqa: BLE001 - a later run aborts it (or purge does)
                        pass
                self._delete_prefix(job.pdir)
