"""Loopback container registries for tests: Debian's `docker-registry` plus tiny OCI images built by hand.

Every registry binds 127.0.0.1 on a free port, stores blobs under a temp root and is stopped by its
PID. Images are written as an OCI layout (layers are tar+gzip with mtime 0, so the same inputs always
give the same digests) and pushed with the real skopeo, with an auth file holding `{}` so no user
credentials are ever read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require_tool

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])

_LOG_LINE = re.compile(r'msg="response completed".*?http\.request\.method=(\S+).*?http\.request\.uri="?([^" ]+)"?'
                       r'.*?http\.response\.status=(\d+)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Request:
    method: str
    uri: str
    status: int


@dataclass
class Registry:
    """One running docker-registry. ``host`` is what image references use: 127.0.0.1:PORT."""

    root: Path
    port: int
    proc: subprocess.Popen
    log_path: Path
    credentials: tuple[str, str] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self) -> list[Request]:
        """Every request the registry answered, from its own access log."""
        text = self.log_path.read_text(errors="replace")
        return [Request(m.group(1), m.group(2), int(m.group(3))) for m in _LOG_LINE.finditer(text)]

    def _get(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"http://{self.host}{path}", method=method, headers={"Accept": ACCEPT})
        if self.credentials:
            import base64

            pair = base64.b64encode(":".join(self.credentials).encode()).decode()
            req.add_header("Authorization", f"Basic {pair}")
        return urllib.request.urlopen(req, timeout=10)

    def manifest_digest(self, name: str, ref: str) -> str | None:
        """The digest a tag points at (what a puller would get), or None when absent."""
        try:
            with self._get(f"/v2/{name}/manifests/{ref}") as resp:
                return resp.headers.get("Docker-Content-Digest") or sha256(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def manifest(self, name: str, ref: str) -> dict:
        with self._get(f"/v2/{name}/manifests/{ref}") as resp:
            return json.loads(resp.read())

    def has_blob(self, name: str, digest: str) -> bool:
        try:
            with self._get(f"/v2/{name}/blobs/{digest}", method="HEAD"):
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    # ---- its storage as Artifact Registry's REST API sees it (GcpEmulator.serve_docker_images)

    def _manifests(self, name: str) -> Path:
        return self.root / "root" / "docker" / "registry" / "v2" / "repositories" / name / "_manifests"

    def tags(self, name: str) -> dict[str, str]:
        """tag → the manifest digest it points at."""
        folder = self._manifests(name) / "tags"
        links = [(t.name, t / "current" / "link") for t in folder.iterdir()] if folder.is_dir() else []
        return {tag: link.read_text().strip() for tag, link in links if link.is_file()}

    def digests(self, name: str) -> set[str]:
        """Every manifest stored under ``name``, tagged or not."""
        folder = self._manifests(name) / "revisions" / "sha256"
        return {f"sha256:{d.name}" for d in folder.iterdir() if (d / "link").is_file()} if folder.is_dir() else set()

    def untag(self, name: str, tag: str) -> None:
        """Remove one tag, the way the registry does internally (its API deletes manifests, not tags)."""
        shutil.rmtree(self._manifests(name) / "tags" / tag)

    def delete_manifest(self, name: str, digest: str) -> None:
        with self._get(f"/v2/{name}/manifests/{digest}", method="DELETE") as resp:
            assert resp.status == 202, resp.status

    def blob_uploads(self, digest: str) -> int:
        """How many times a blob was uploaded (the PUT that completes an upload names its digest)."""
        hexpart = digest.split(":", 1)[1]
        return sum(1 for r in self.requests() if r.method == "PUT" and "/blobs/uploads/" in r.uri and
                   hexpart in r.uri and r.status == 201)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_registry(workdir: Path, *, credentials: tuple[str, str] | None = None) -> Registry:
    """Start `docker-registry serve` on 127.0.0.1 with its storage under ``workdir``.

    ``credentials`` (user, password) turns on htpasswd basic auth, the way Artifact Registry accepts
    `oauth2accesstoken:<token>`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {workdir / 'root'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: loopback-test-secret",
    ]
    if credentials:
        import bcrypt

        htpasswd = workdir / "htpasswd"
        hashed = bcrypt.hashpw(credentials[1].encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{credentials[0]}:{hashed}\n")
        lines += ["auth:", "  htpasswd:", "    realm: loopback", f"    path: {htpasswd}"]
    config = workdir / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    log_path = workdir / "registry.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    reg = Registry(workdir, port, proc, log_path, credentials)
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://{reg.host}/v2/", timeout=1):
                break
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # auth on: up and asking for credentials
                break
            raise
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                reg.stop()
                raise RuntimeError("docker-registry did not start within 15s")
            time.sleep(0.02)
    return reg


# ---------------------------------------------------------------------------------------------
# Images built by hand


@dataclass
class Image:
    digest: str  # what the tag points at: an index, or a single manifest
    media_type: str
    platforms: dict[str, str] = field(default_factory=dict)  # "linux/amd64" → its manifest digest
    layers: dict[str, list[str]] = field(default_factory=dict)  # platform → its layer digests
    configs: dict[str, str] = field(default_factory=dict)  # platform → its config digest

    def blobs(self, platform: str) -> list[str]:
        return [*self.layers[platform], self.configs[platform]]


def _layer(content: bytes, name: str) -> tuple[bytes, bytes]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as fh:
        fh.write(tar_bytes)
    return tar_bytes, gz.getvalue()


def build_image(layout: Path, tag: str, *, version: str = "1", platforms: tuple[str, ...] = ("linux/amd64",),
                index: bool | None = None, layer_sizes: tuple[int, ...] = (2048,), title: str | None = None) -> Image:
    """Write an OCI layout holding one image (an index when several platforms, or ``index=True``).

    ``title`` annotates the index, written as raw UTF-8 (not \\u-escaped), the way Go
    tools write non-ASCII text.

    ``version`` changes every layer's content, so a "new release" has new digests.
    """
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(data: bytes) -> dict:
        digest = sha256(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    image = Image("", "")
    descriptors = []
    for plat in platforms:
        os_name, arch = plat.split("/")[:2]
        layers, diff_ids = [], []
        for i, size in enumerate(layer_sizes):
            seed = f"{version}|{plat}|{i}".encode()
            content = b"".join(hashlib.sha256(seed + n.to_bytes(4, "big")).digest() for n in range(size // 32 + 1))
            tar_bytes, gz_bytes = _layer(content[:size], f"layer{i}.bin")
            diff_ids.append(sha256(tar_bytes))
            layers.append({"mediaType": OCI_LAYER, **put(gz_bytes)})
            image.layers.setdefault(plat, []).append(layers[-1]["digest"])
        config = json.dumps({"architecture": arch, "os": os_name, "config": {"Labels": {"version": version}},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
        config_desc = {"mediaType": OCI_CONFIG, **put(config)}
        image.configs[plat] = config_desc["digest"]
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
                               "layers": layers}, sort_keys=True).encode()
        desc = {"mediaType": OCI_MANIFEST, **put(manifest), "platform": {"architecture": arch, "os": os_name}}
        image.platforms[plat] = desc["digest"]
        descriptors.append(desc)
    if index if index is not None else len(platforms) > 1:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        if title:
            doc["annotations"] = {"org.opencontainers.image.title": title}
        top = {"mediaType": OCI_INDEX, **put(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode())}
    else:
        top = {k: v for k, v in descriptors[0].items() if k != "platform"}
        if title:
            raise ValueError("title annotates an index; build one with index=True")
    image.digest, image.media_type = top["digest"], top["mediaType"]
    entry = {**top, "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return image


def push(layout: Path, tag: str, registry: Registry, name: str, *, workdir: Path) -> None:
    """Push the layout's image (every platform, digests unchanged) with the real skopeo."""
    auth = workdir / "empty-auth.json"
    auth.write_text("{}")
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth)}
    cmd = ["skopeo", "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false",
           f"oci:{layout}:{tag}", f"docker://{registry.host}/{name}:{tag}"]
    if registry.credentials:
        cmd.insert(-2, f"--dest-creds={':'.join(registry.credentials)}")
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=60)


def publish(registry: Registry, name: str, tag: str, workdir: Path, **kwargs) -> Image:
    """Build an image and push it to ``registry`` as ``name:tag``."""
    layout = workdir / f"oci-{name.replace('/', '_')}-{tag}-{kwargs.get('version', '1')}"
    image = build_image(layout, tag, **kwargs)
    push(layout, tag, registry, name, workdir=workdir)
    return image


@pytest.fixture
def registries(tmp_path):
    """A factory: ``registries("source")`` starts a loopback docker-registry; all stop afterwards."""
    require_tool("skopeo", "apt-get install -y skopeo")
    require_tool("docker-registry", "apt-get install -y docker-registry")
    started: list[Registry] = []

    def start(name: str, **kwargs) -> Registry:
        reg = start_registry(tmp_path / f"registry-{name}", **kwargs)
        started.append(reg)
        return reg

    try:
        yield start
    finally:
        for reg in started:
            reg.stop()


# ---------------------------------------------------------------------------------------------
# A loopback TCP relay in front of a registry that can break the way networks and permissions do


_WRITE = re.compile(rb"^(POST|PUT|PATCH|DELETE) /v2/")
_MANIFEST_PUT = re.compile(rb"PUT /v2/\S+/manifests/")
_DENIED_BODY = (b'{"errors":[{"code":"DENIED","message":"Permission \\"artifactregistry.repositories.'
                b'uploadArtifacts\\" denied on resource (or it may not exist)"}]}')


class FaultyProxy:
    """Relays 127.0.0.1:PORT to a registry byte for byte, until told to fail.

    * ``cut_on_manifest_put()``: the next manifest upload (skopeo writes the manifest after every blob)
      closes every connection, and new ones are refused until ``restore()``: the network went away
      mid-copy, after the blobs, before the tag.
    * ``deny_writes()``: every upload gets 403 DENIED, as Artifact Registry answers a reader-only account.
    * ``stall_on_manifest_put()``: the next manifest upload is held (connection open, nothing forwarded)
      until ``restore()``: a copy that is still running at its last step. Returns an event set when held.
    """

    def __init__(self, upstream: Registry):
        import threading

        self.upstream = upstream
        self.mode = "pass"
        self.down = False
        self.cuts = 0
        self.stalled = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut_on_manifest_put(self) -> None:
        self.mode = "cut"

    def deny_writes(self) -> None:
        self.mode = "deny"

    def stall_on_manifest_put(self):
        self.stalled.clear()
        self._released.clear()
        self.mode = "stall"
        return self.stalled

    def restore(self) -> None:
        with self._lock:
            self.mode, self.down = "pass", False
        self._released.set()

    def stop(self) -> None:
        self.down = True
        self._released.set()
        self._server.close()
        self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            socks, self._sockets = list(self._sockets), set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream.port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        window = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client and self.mode == "deny" and _WRITE.match(data):
                    src.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_DENIED_BODY) + _DENIED_BODY)
                    # Let the client read the answer: stop writing, drain what it still sends, then close
                    # (closing with unread data would reset the connection before the 403 is read).
                    src.shutdown(socket.SHUT_WR)
                    src.settimeout(10)
                    while src.recv(65536):
                        pass
                    break
                if from_client and self.mode == "stall" and _MANIFEST_PUT.search((window + data)[-4096:]):
                    self.stalled.set()
                    self._released.wait()
                if from_client and self.mode == "cut":
                    window = (window + data)[-4096:]
                    if _MANIFEST_PUT.search(window):
                        with self._lock:
                            self.down, self.cuts = True, self.cuts + 1
                        self._close_all()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._sockets -= {src, dst}


@pytest.fixture
def proxies():
    """A factory: ``proxies(registry)`` starts a FaultyProxy in front of it; all stop afterwards."""
    started: list[FaultyProxy] = []

    def start(upstream: Registry) -> FaultyProxy:
        proxy = FaultyProxy(upstream)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
