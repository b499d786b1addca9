"""Files the tool writes: temp files holding a token never outlive a run (nor a killed one), and the
--report file is checked before the first step, written 0600 and never through a symlink.

Temp files are looked for where a user would find them: every file under the run's TMPDIR is read,
and none may hold the registry token (raw or as the base64 auth skopeo gets).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import stat
import time

import pytest

from tests.conftest import require_tool, run_inv
from tests.emulators.gcp import gcloud_env
from tests.envfiles import mirror_env
from tests.registry import publish
from tests.test_interrupts import kill_all, processes_with, start_inv, wait_for

PROJECT = "test-project"
NAME = "vllm/vllm-openai"


def files_holding(root, *needles: str) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            if any(n.encode() in data for n in needles):
                found.append(path)
    return found


@pytest.fixture
def mirror_world(tmp_path, gcp_emulator, registries, proxies):
    """`inv mirror-image` against a destination registry behind a proxy that can hold the copy at its end."""
    require_tool("gcloud", "install the Google Cloud CLI")
    require_tool("skopeo", "apt-get install -y skopeo")
    token = "gptoss-test-token-" + secrets.token_hex(16)
    (tmp_path / "gcloud-token").write_text(token + "\n")
    env = {k: v for k, v in gcloud_env(gcp_emulator, tmp_path, PROJECT).items() if not k.startswith("GPTOSS_")}
    src = registries("source")
    dst = registries("dest", credentials=("oauth2accesstoken", token))
    publish(src, NAME, "v1", tmp_path)
    proxy = proxies(dst)
    run_tmp = tmp_path / "run-tmp"  # the runs' TMPDIR: where their temp files would be left
    run_tmp.mkdir()
    env.update(GPTOSS_ENV_DIR=mirror_env(tmp_path, proxy.host, f"{src.host}/{NAME}:v1"), NO_COLOR="1",
               TMPDIR=str(run_tmp))
    secrets_ = [token, base64.b64encode(f"oauth2accesstoken:{token}".encode()).decode()]
    return env, proxy, dst, run_tmp, secrets_


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_token_file_never_outlives_the_run_that_wrote_it(mirror_world, how):
    env, proxy, dst, run_tmp, token_forms = mirror_world
    held = proxy.stall_on_manifest_put()
    report = run_tmp.parent / "report.json"
    proc = start_inv(["mirror-image", "--target=l4", f"--report={report}"], env)
    try:
        wait_for(held, "manifest upload", proc)
        assert files_holding(run_tmp, *token_forms), "precondition: skopeo runs with its auth file"
        os.kill(proc.pid, getattr(signal, how))
        out = proc.communicate(timeout=60)[0]
        if how == "SIGINT":  # caught: the copy is stopped and the file removed before inv exits
            assert proc.returncode == 130, out
            assert processes_with("TMPDIR", str(run_tmp)) == [], "skopeo kept running"
            assert files_holding(run_tmp, *token_forms) == []
            assert "RECAP INTERRUPTED by SIGINT" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        kill_all(processes_with("TMPDIR", str(run_tmp)))  # the killed run's skopeo
        proxy.restore()
    # Either way the report says the run did not finish (a killed run cannot write its end).
    assert json.loads(report.read_text())["outcome"] == ("interrupted" if how == "SIGINT" else "running")
    if how == "SIGKILL":
        assert files_holding(run_tmp, *token_forms), "precondition: a killed run cannot clean up"
        again = run_inv(["mirror-image", "--target=l4"], env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "temp folder(s) holding credentials that a killed run left behind" in again.stdout
        assert dst.manifest_digest(f"{PROJECT}/gptoss/{NAME}", "v1")  # and the copy did complete
    assert files_holding(run_tmp, *token_forms) == []


# ---------------------------------------------------------------------------------------------
# --report, and invoke's own --dry


def test_report_is_0600_even_when_it_existed_wider(offline_env, tmp_path):
    report = tmp_path / "plan.json"
    report.write_text("old")
    report.chmod(0o644)
    proc = run_inv(["setup-cluster", "--dry-run", f"--report={report}"], offline_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert json.loads(report.read_text())["outcome"] == "ok"


def test_report_is_never_written_through_a_symlink(offline_env, tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("someone else's file\n")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    proc = run_inv(["setup-cluster", "--dry-run", f"--report={link}"], offline_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is a symbolic link; refusing to write the report through it" in proc.stderr
    assert "PLAYBOOK" not in proc.stdout  # refused before the first step
    assert target.read_text() == "someone else's file\n" and link.is_symlink()


def test_report_in_a_missing_folder_is_exit_2_before_any_step(offline_env, tmp_path):
    report = tmp_path / "no-such-folder" / "report.json"
    proc = run_inv(["setup-cluster", "--dry-run", f"--report={report}"], offline_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--report {report}: folder {report.parent} does not exist" in proc.stderr
    assert "PLAYBOOK" not in proc.stdout and "Traceback" not in proc.stderr
    assert not report.parent.exists()


def test_invoke_dry_is_refused_before_anything_is_read(gcloud_world):
    emu, env = gcloud_world
    started = time.monotonic()
    proc = run_inv(["--dry", "teardown", "--yes"], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "use --dry-run" in proc.stderr and "fakes every command" in proc.stderr
    assert "RECAP" not in proc.stdout
    assert emu.requests == [] and time.monotonic() - started < 120


def test_a_copy_that_fails_leaves_no_auth_file(mirror_world):
    """Not a signal this time: skopeo itself fails (the network goes away after the blobs, at the
    manifest). The auth file it was given must go with the failed run, not wait for a sweep."""
    from gptoss_gke.core.private_files import PREFIX

    env, proxy, dst, run_tmp, token_forms = mirror_world
    proxy.cut_on_manifest_put()
    try:
        proc = run_inv(["mirror-image", "--target=l4"], env)
    finally:
        proxy.restore()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert proxy.cuts == 1  # skopeo got as far as the manifest upload: it used the auth file
    assert f"failed: the connection broke while copying to {proxy.host}/" in out
    assert dst.manifest_digest(f"{PROJECT}/gptoss/{NAME}", "v1") is None  # the copy really failed
    assert processes_with("TMPDIR", str(run_tmp)) == []
    # Nothing of ours is left where temp files go, and no file there holds the token in any form.
    assert [p.name for p in run_tmp.iterdir() if p.name.startswith(PREFIX)] == []
    assert files_holding(run_tmp, *token_forms) == []
    assert not any(t in out for t in token_forms)
