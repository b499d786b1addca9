"""The loopback Hugging Face hub emulator, exercised with the real huggingface_hub 2.4 client.

Everything talks to 127.0.0.1 only: the ``hf_hub`` fixture points huggingface_hub at the emulator, uses a
temporary HF_HOME, and refuses any non-loopback socket or DNS lookup while a test runs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .hfhub import DEFAULT_TOKEN, HubEmulator, Synthetic, gptoss_like_layout, make_gptoss_like_repo

REPO = "openai/gpt-oss-mini"
MiB = 1024 * 1024


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def raw_get(hub: HubEmulator, path: str, headers: dict | None = None, method: str = "GET"):
    """A plain http.client request (no proxies, no retries) -> (response, connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", int(hub.url.rsplit(":", 1)[1]), timeout=30)
    conn.request(method, path, headers=headers or {})
    return conn.getresponse(), conn


def local_files(root) -> list[str]:
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)


@pytest.fixture
def api(hf_hub):
    return HfApi(endpoint=hf_hub.url, token=False)


@pytest.fixture
def gptoss(hf_hub):
    return make_gptoss_like_repo(hf_hub, REPO, shard_size=1 * MiB, n_shards=3)


# ------------------------------------------------------------------------------------------ metadata

def test_model_info_by_branch_and_by_sha(hf_hub, api, gptoss):
    info = api.model_info(REPO, revision="main", files_metadata=True)
    assert info.id == REPO and info.sha == gptoss and len(info.sha) == 40
    assert info.private is False and info.gated is False
    layout = gptoss_like_layout(3)
    assert sorted(s.rfilename for s in info.siblings) == sorted(layout["root"] + layout["original"] + layout["metal"])
    sib = {s.rfilename: s for s in info.siblings}
    shard = "model-00000-of-00002.safetensors"
    assert sib[shard].size == MiB and sib[shard].lfs.sha256 == hf_hub.file_info(REPO, shard)["sha256"]
    assert sib["config.json"].lfs is None and sib["config.json"].blob_id == hf_hub.file_info(REPO, "config.json")["git_oid"]
    assert sib["tokenizer.json"].lfs is not None  # tracked by .gitattributes like the real repo, though small
    assert api.model_info(REPO, revision=gptoss).sha == gptoss
    assert api.model_info(REPO).sha == gptoss
    assert [r.path for r in hf_hub.requests] == [f"/api/models/{REPO}/revision/main",
                                                  f"/api/models/{REPO}/revision/{gptoss}", f"/api/models/{REPO}"]


def test_list_repo_tree_recursive_has_sizes_and_lfs_sha256(hf_hub, api, gptoss):
    entries = list(api.list_repo_tree(REPO, recursive=True))
    files = {e.path: e for e in entries if hasattr(e, "blob_id")}
    folders = sorted(e.path for e in entries if not hasattr(e, "blob_id"))
    assert folders == ["metal", "original"]
    assert len(files) == 18
    for path, e in files.items():
        published = hf_hub.file_info(REPO, path)
        assert e.size == published["size"] and e.blob_id == published["git_oid"]
        if path.endswith((".safetensors", ".bin")) or path == "tokenizer.json":
            assert e.lfs is not None and e.lfs.sha256 == published["sha256"] and e.lfs.size == e.size
            assert e.lfs.pointer_size > 100
        else:
            assert e.lfs is None
    assert files["original/model.safetensors"].size == files["metal/model.bin"].size == 3 * MiB

    top = sorted(e.path for e in api.list_repo_tree(REPO))
    assert "original" in top and "original/config.json" not in top
    assert sorted(e.path for e in api.list_repo_tree(REPO, path_in_repo="original")) == gptoss_like_layout()["original"]

    expanded = {e.path: e for e in api.list_repo_tree(REPO, recursive=True, expand=True)}
    assert expanded["config.json"].last_commit.oid == gptoss and expanded["config.json"].security.safe

    infos = api.get_paths_info(REPO, ["config.json", "original", "missing.txt"])
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "config.json"), ("RepoFolder", "original")]


def test_tree_pagination_follows_link_header(hf_hub, api, gptoss):
    hf_hub.tree_page_size = 4
    paths = [e.path for e in api.list_repo_tree(REPO, recursive=True)]
    assert len(paths) == len(set(paths)) == 20  # 18 files + 2 folders
    pages = hf_hub.find_requests("GET", r"/tree/")
    assert len(pages) == 5 and "cursor=" in pages[-1].query


# ------------------------------------------------------------------------------------------ downloads

def test_hf_hub_download_small_and_large_files_are_byte_exact(hf_hub, tmp_path):
    big = Synthetic(24 * MiB, seed="big")
    sha = hf_hub.add_repo("acme/big", {"config.json": b'{"a": 1}\n', "weights.safetensors": big})
    small = hf_hub_download("acme/big", "config.json", endpoint=hf_hub.url, cache_dir=tmp_path, token=False)
    assert Path(small).read_bytes() == b'{"a": 1}\n'
    assert f"/snapshots/{sha}/" in small

    path = hf_hub_download("acme/big", "weights.safetensors", endpoint=hf_hub.url, cache_dir=tmp_path, token=False)
    tree = {e.path: e for e in HfApi(endpoint=hf_hub.url, token=False).list_repo_tree("acme/big")}
    assert os.path.getsize(path) == 24 * MiB
    assert sha256_file(path) == tree["weights.safetensors"].lfs.sha256 == hashlib.sha256(big.read()).hexdigest()
    # the blob in the cache is named after the ETag: sha256 for LFS files, git blob sha1 otherwise
    assert Path(path).resolve().name == tree["weights.safetensors"].lfs.sha256
    assert Path(small).resolve().name == tree["config.json"].blob_id

    calls = [(r.method, r.path, r.status) for r in hf_hub.requests if "/resolve/" in r.path]
    assert calls == [("HEAD", "/acme/big/resolve/main/config.json", 200), ("GET", "/acme/big/resolve/main/config.json", 200),
                     ("HEAD", "/acme/big/resolve/main/weights.safetensors", 200),
                     ("GET", "/acme/big/resolve/main/weights.safetensors", 200)]
    assert hf_hub.bytes_served_for("acme/big", "weights.safetensors") == 24 * MiB
    assert hf_hub.bytes_served == 24 * MiB + 9


def test_snapshot_download_ignore_patterns_gives_exactly_the_root_files(hf_hub, gptoss, tmp_path):
    out = snapshot_download(REPO, endpoint=hf_hub.url, local_dir=tmp_path / "m", token=False,
                            ignore_patterns=["original/*", "metal/*"])
    assert local_files(out) == gptoss_like_layout(3)["root"]
    assert sha256_file(Path(out) / "model-00001-of-00002.safetensors") == \
        hf_hub.file_info(REPO, "model-00001-of-00002.safetensors")["sha256"]
    assert not hf_hub.find_requests(path_regex=r"/(original|metal)/")
    assert hf_hub.bytes_served_for(REPO, "original/model.safetensors") == 0
    # the call sequence: resolve the branch, list the tree at the sha, then HEAD+GET each file at the sha
    paths = [(r.method, r.path, r.query) for r in hf_hub.requests]
    assert paths[:2] == [("GET", f"/api/models/{REPO}/revision/main", ""),
                         ("GET", f"/api/models/{REPO}/tree/{gptoss}", "recursive=true&expand=false")]
    resolves = paths[2:]
    assert len(resolves) == 2 * 14 and all(p.startswith(f"/{REPO}/resolve/{gptoss}/") for _, p, _ in resolves)
    assert sorted(m for m, _, _ in resolves) == ["GET"] * 14 + ["HEAD"] * 14


def test_allow_patterns_star_also_matches_inside_folders(hf_hub, gptoss, tmp_path):
    out = snapshot_download(REPO, endpoint=hf_hub.url, local_dir=tmp_path / "m", token=False,
                            allow_patterns=["*.safetensors"])
    got = local_files(out)
    assert "original/model.safetensors" in got  # fnmatch's "*" crosses "/": not what vLLM needs
    assert got == sorted([f"model-0000{i}-of-00002.safetensors" for i in range(3)] + ["original/model.safetensors"])


def test_safetensors_shards_are_valid_and_indexed(hf_hub, gptoss):
    index = json.loads(hf_hub.content(REPO, "model.safetensors.index.json"))
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00002.safetensors" for i in range(3)]
    for shard in sorted(set(index["weight_map"].values())):
        resp, conn = raw_get(hf_hub, f"/{REPO}/resolve/main/{shard}", {"Range": "bytes=0-7"})
        (n,) = struct.unpack("<Q", resp.read())
        conn.close()
        resp, conn = raw_get(hf_hub, f"/{REPO}/resolve/main/{shard}", {"Range": f"bytes=8-{8 + n - 1}"})
        header = json.loads(resp.read())
        conn.close()
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        assert max(v["data_offsets"][1] for v in tensors.values()) == MiB - 8 - n
        assert {k for k, v in index["weight_map"].items() if v == shard} == set(tensors)


def test_branch_moved_keeps_old_commit_reachable(hf_hub, api, gptoss, tmp_path):
    new = hf_hub.commit(REPO, {"config.json": b'{"moved": true}\n', "README.md": None})
    assert new != gptoss and api.model_info(REPO).sha == new
    assert "README.md" not in {e.path for e in api.list_repo_tree(REPO)}
    old_cfg = hf_hub_download(REPO, "config.json", revision=gptoss, endpoint=hf_hub.url, cache_dir=tmp_path, token=False)
    new_cfg = hf_hub_download(REPO, "config.json", endpoint=hf_hub.url, cache_dir=tmp_path, token=False)
    assert json.loads(Path(old_cfg).read_bytes())["model_type"] == "gpt_oss"
    assert Path(new_cfg).read_bytes() == b'{"moved": true}\n'
    assert [c.commit_id for c in api.list_repo_commits(REPO)] == [new, gptoss]
    hf_hub.set_ref(REPO, "v1", gptoss, tag=True)
    assert api.model_info(REPO, revision="v1").sha == gptoss


# ------------------------------------------------------------------------------------------ errors and auth

def test_errors_map_to_the_client_exceptions(hf_hub, api, gptoss, tmp_path):
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch", endpoint=hf_hub.url, cache_dir=tmp_path, token=False)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch", endpoint=hf_hub.url, cache_dir=tmp_path, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "config.json", endpoint=hf_hub.url, cache_dir=tmp_path, token=False)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "nope.txt", endpoint=hf_hub.url, cache_dir=tmp_path, token=False)
    resp, conn = raw_get(hf_hub, f"/api/models/{REPO}/revision/nope")
    assert (resp.status, resp.getheader("X-Error-Code"), json.loads(resp.read())) == \
        (404, "RevisionNotFound", {"error": "Invalid rev id: nope"})
    conn.close()
    resp, conn = raw_get(hf_hub, "/nobody/nothing/resolve/main/x", method="HEAD")
    assert (resp.status, resp.getheader("X-Error-Code")) == (401, "RepoNotFound")
    conn.close()


def test_gated_and_private_repos_need_the_token(hf_hub, tmp_path):
    hf_hub.add_repo("acme/gated", {"config.json": b"{}"}, gated=True)
    hf_hub.add_repo("acme/private", {"config.json": b"{}"}, private=True)
    hf_hub.add_token("hf_valid_but_not_authorized")
    kw = dict(endpoint=hf_hub.url, cache_dir=tmp_path)

    with pytest.raises(GatedRepoError) as e:
        hf_hub_download("acme/gated", "config.json", token=False, **kw)
    assert e.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as e:
        hf_hub_download("acme/gated", "config.json", token="hf_valid_but_not_authorized", **kw)
    assert e.value.response.status_code == 403
    assert HfApi(endpoint=hf_hub.url, token=False).model_info("acme/gated").gated == "manual"  # metadata is public
    assert Path(hf_hub_download("acme/gated", "config.json", token=hf_hub.token, **kw)).read_bytes() == b"{}"

    with pytest.raises(RepositoryNotFoundError) as e:
        HfApi(endpoint=hf_hub.url, token=False).model_info("acme/private")
    assert e.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as e:
        HfApi(endpoint=hf_hub.url, token="hf_valid_but_not_authorized").model_info("acme/private")
    assert e.value.response.status_code == 404
    assert HfApi(endpoint=hf_hub.url, token=hf_hub.token).model_info("acme/private").private is True

    with pytest.raises(HfHubHTTPError) as e:  # unknown token: 401 "Invalid credentials", not "not found"
        HfApi(endpoint=hf_hub.url, token="hf_garbage").model_info("acme/gated")
    assert e.value.response.status_code == 401 and not isinstance(e.value, RepositoryNotFoundError)

    assert {r.had_token for r in hf_hub.requests} == {True, False}
    dump = repr(hf_hub.requests)
    assert hf_hub.token not in dump and "hf_valid_but_not_authorized" not in dump


def test_lfs_redirect_to_cdn_strips_the_token(hf_hub, tmp_path):
    hf_hub.lfs_redirect = True
    hf_hub.add_repo("acme/gated", {"w.safetensors": Synthetic(3 * MiB, 7), "config.json": b"{}"}, gated=True)
    path = hf_hub_download("acme/gated", "w.safetensors", endpoint=hf_hub.url, cache_dir=tmp_path, token=hf_hub.token)
    assert sha256_file(path) == hf_hub.file_info("acme/gated", "w.safetensors")["sha256"]
    seen = [(r.server, r.method, r.status, r.had_token) for r in hf_hub.requests]
    assert seen == [("hub", "HEAD", 302, True), ("cdn", "GET", 200, False)]
    resp, conn = raw_get(hf_hub, "/acme/gated/resolve/main/config.json", {"Authorization": f"Bearer {hf_hub.token}"})
    assert resp.status == 200 and resp.read() == b"{}"  # small non-LFS files are served directly
    conn.close()


# ------------------------------------------------------------------------------------------ HTTP features and faults

def test_range_requests_return_the_exact_slice(hf_hub):
    data = Synthetic(5 * MiB + 123, seed="r")
    hf_hub.add_repo("acme/r", {"w.bin": data})
    for rng, (start, end) in {"bytes=1000-1999": (1000, 2000), f"bytes={MiB - 10}-{MiB + 10}": (MiB - 10, MiB + 11),
                              "bytes=-100": (data.size - 100, data.size), f"bytes={5 * MiB}-": (5 * MiB, data.size)}.items():
        resp, conn = raw_get(hf_hub, "/acme/r/resolve/main/w.bin", {"Range": rng})
        body = resp.read()
        conn.close()
        assert resp.status == 206 and body == data.read(start, end)
        assert resp.getheader("Content-Range") == f"bytes {start}-{end - 1}/{data.size}"
        assert resp.getheader("Content-Length") == str(end - start)
    resp, conn = raw_get(hf_hub, "/acme/r/resolve/main/w.bin", {"Range": f"bytes={data.size}-"})
    assert resp.status == 416 and resp.getheader("Content-Range") == f"bytes */{data.size}"
    resp.read()
    conn.close()
    resp, conn = raw_get(hf_hub, "/acme/r/resolve/main/w.bin", method="HEAD")
    sha = hf_hub.file_info("acme/r", "w.bin")["sha256"]
    assert resp.getheader("ETag") == resp.getheader("X-Linked-Etag") == f'"{sha}"'
    assert resp.getheader("X-Linked-Size") == resp.getheader("Content-Length") == str(data.size)
    assert resp.getheader("Accept-Ranges") == "bytes" and len(resp.getheader("X-Repo-Commit")) == 40
    conn.close()


def test_drop_after_cuts_a_plain_streaming_get(hf_hub):
    import httpx2

    hf_hub.add_repo("acme/d", {"w.bin": Synthetic(4 * MiB, 1)})
    url = f"{hf_hub.url}/acme/d/resolve/main/w.bin"
    hf_hub.drop_after("acme/d", "w.bin", 1_500_000)
    got = 0
    with pytest.raises(httpx2.RemoteProtocolError):  # streaming client: premature end of body
        with httpx2.stream("GET", url, trust_env=False) as resp:
            assert resp.headers["Content-Length"] == str(4 * MiB)
            for chunk in resp.iter_bytes(64 * 1024):
                got += len(chunk)
    assert got <= 1_500_000 and hf_hub.requests[-1].aborted and hf_hub.bytes_served == 1_500_000

    hf_hub.drop_after("acme/d", "w.bin", 100_000, mode="rst")
    resp, conn = raw_get(hf_hub, "/acme/d/resolve/main/w.bin")
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        resp.read()
    conn.close()

    resp, conn = raw_get(hf_hub, "/acme/d/resolve/main/w.bin")  # times=1 each: the next GET is whole
    assert resp.read() == hf_hub.content("acme/d", "w.bin")
    conn.close()


def test_hf_hub_download_resumes_after_a_clean_cut_but_not_after_a_reset(hf_hub, tmp_path):
    big = Synthetic(24 * MiB, 2)
    hf_hub.add_repo("acme/d", {"w.bin": big})
    sha = hf_hub.file_info("acme/d", "w.bin")["sha256"]
    # http_get reads 10 MiB chunks: a cut after 15 MiB keeps the first 10 MiB and resumes with a Range request
    hf_hub.drop_after("acme/d", "w.bin", 15 * MiB, mode="fin")
    path = hf_hub_download("acme/d", "w.bin", endpoint=hf_hub.url, cache_dir=tmp_path / "a", token=False)
    assert sha256_file(path) == sha
    gets = [(r.range, r.status, r.aborted) for r in hf_hub.find_requests("GET")]
    assert gets == [(None, 200, True), (f"bytes={10 * MiB}-", 206, False)]
    # a TCP reset surfaces as httpx2.ReadError, which huggingface_hub 2.4 does not retry
    hf_hub.drop_after("acme/d", "w.bin", 15 * MiB, mode="rst")
    with pytest.raises(Exception) as e:
        hf_hub_download("acme/d", "w.bin", endpoint=hf_hub.url, cache_dir=tmp_path / "b", token=False)
    assert type(e.value).__name__ == "ReadError"


def test_corrupt_changes_served_bytes_but_not_the_published_hash(hf_hub, tmp_path):
    hf_hub.add_repo("acme/c", {"w.safetensors": Synthetic(2 * MiB, 3)})
    published = hf_hub.file_info("acme/c", "w.safetensors")["sha256"]
    hf_hub.corrupt("acme/c", "w.safetensors", offset=MiB + 5)
    path = hf_hub_download("acme/c", "w.safetensors", endpoint=hf_hub.url, cache_dir=tmp_path, token=False)
    # huggingface_hub's plain-HTTP path does not check the sha256: the corrupt file lands in the cache
    assert Path(path).resolve().name == published and sha256_file(path) != published
    body = Path(path).read_bytes()
    original = hf_hub.content("acme/c", "w.safetensors")
    assert [i for i in range(len(body)) if body[i] != original[i]] == [MiB + 5]
    tree = list(HfApi(endpoint=hf_hub.url, token=False).list_repo_tree("acme/c"))
    assert {e.path: e.lfs.sha256 for e in tree if e.lfs} == {"w.safetensors": published}


def test_inject_and_slow(hf_hub, api, gptoss):
    hf_hub.inject("GET", r"^/api/models/.*/revision/", 503, times=1, error_code="ServiceUnavailable")
    with pytest.raises(HfHubHTTPError) as e:
        api.model_info(REPO, revision="main")
    assert e.value.response.status_code == 503 and hf_hub.requests[-1].injected
    assert api.model_info(REPO, revision="main").sha == gptoss
    hf_hub.slow(4 * MiB)
    t0 = time.monotonic()
    resp, conn = raw_get(hf_hub, f"/{REPO}/resolve/main/model-00000-of-00002.safetensors")
    assert len(resp.read()) == MiB
    conn.close()
    assert time.monotonic() - t0 >= 0.2


def test_concurrent_downloads_and_hffilesystem(hf_hub, gptoss):
    shard = "model-00001-of-00002.safetensors"
    expected = hf_hub.content(REPO, shard)
    results, errors = [], []

    def fetch():
        try:
            resp, conn = raw_get(hf_hub, f"/{REPO}/resolve/main/{shard}")
            results.append(resp.read())
            conn.close()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and results == [expected] * 8

    fs = HfFileSystem(endpoint=hf_hub.url, token=False, skip_instance_cache=True)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{REPO}/original", detail=False)) == \
        ["config.json", "dtypes.json", "model.safetensors"]
    with fs.open(f"{REPO}/{shard}", "rb", block_size=64 * 1024) as f:
        f.seek(MiB // 2)
        assert f.read(1000) == expected[MiB // 2: MiB // 2 + 1000]
    assert any(r.range for r in hf_hub.find_requests("GET", "/resolve/"))


def test_serving_1gb_keeps_memory_flat(hf_hub):
    size = 1024 * MiB
    hf_hub.add_repo("acme/huge", {"model.bin": Synthetic(size, "huge")})

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    base, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    resp, conn = raw_get(hf_hub, "/acme/huge/resolve/main/model.bin")
    h, n = hashlib.sha256(), 0
    while chunk := resp.read(4 * MiB):
        h.update(chunk)
        n += len(chunk)
    conn.close()
    done.set()
    sampler.join()
    assert n == size and resp.getheader("ETag") == f'"{h.hexdigest()}"'
    assert peak[0] - base < 64 * MiB, f"RSS grew by {(peak[0] - base) / MiB:.0f} MiB"


def test_fixture_keeps_everything_on_loopback(hf_hub):
    from huggingface_hub import constants

    assert constants.ENDPOINT == hf_hub.url and os.environ["HF_ENDPOINT"] == hf_hub.url
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and "HF_HUB_OFFLINE" not in os.environ
    assert hf_hub.url.startswith("http://127.0.0.1:") and hf_hub.cdn_url.startswith("http://127.0.0.1:")
    with pytest.raises(OSError):
        socket.getaddrinfo("huggingface.co", 443)
    s = socket.socket()
    with pytest.raises(ConnectionRefusedError):
        s.connect(("192.0.2.1", 443))  # refused by the guard before any packet leaves
    s.close()
    assert DEFAULT_TOKEN == hf_hub.token
