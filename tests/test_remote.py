"""Remote execution over SSH, against a second sshd on a loopback port (tests/sshd.py).

The "remote" host is this machine reached through that sshd, so what a remote command does can be
checked on disk and in /proc. Every session runs through the server's ForceCommand wrapper, which logs
the exact command line each session asked for (what becomes the remote shell's argv): the secrets
tests check that log, and poll every process's /proc/<pid>/cmdline while the commands run.
"""

from __future__ import annotations

import glob
import io
import json
import os
import sys
import threading
import time
import uuid

import invoke
import pytest

from gptoss_gke.core import Context, Redactor, Runner
from gptoss_gke.core.report import Printer
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.core.shell import Shell
from gptoss_gke.core.step import Change, Plan, Step, noop
from gptoss_gke.errors import ConfigError, StepError
from gptoss_gke.remote.session import RemoteSession, resolve_remote
from gptoss_gke.remote.shipping import code_bundle
from gptoss_gke.remote.steps import STAGING_MODULES, RemoteHost, run_task_remotely, stream_command
from tests.conftest import run_inv
from tests.emulators.gcp import gcloud_env
from tests.emulators.hfhub import make_gptoss_like_repo
from tests.envfiles import MODELS_BUCKET, staging_env
from tests.gcs import PROJECT_NUMBER
from tests.sshd import ArgvWatch, fingerprint, free_port, keygen

MiB = 1024 * 1024
REPO_ID = "openai/gpt-oss-120b"
BUCKET = MODELS_BUCKET
VLLM_LOADS = {
    "chat_template.jinja", "config.json", "generation_config.json", "model-00000-of-00001.safetensors",
    "model-00001-of-00001.safetensors", "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json",
}


# ---------------------------------------------------------------------------------------------
# helpers


class _Timestamped(io.StringIO):
    """Printer output with the time each line arrived (to prove output is relayed live)."""

    def __init__(self):
        super().__init__()
        self.stamps: list[tuple[float, str]] = []

    def write(self, s: str) -> int:
        self.stamps.append((time.monotonic(), s))
        return super().write(s)


def remote_context(session: RemoteSession, settings=None, *, redactor=None, remote_shell=True):
    redactor = redactor or Redactor()
    out = _Timestamped()
    printer = Printer(redactor, stream=out, color=False)
    executor = session.executor() if remote_shell else invoke.Context()
    shell = Shell(executor, redactor, dry_run=False, retry=RetryPolicy(2, 0.01, 0.02), emit=printer.line,
                  where=session.label if remote_shell else "local")
    ctx = Context(settings, shell, printer, redactor, interactive=False)
    return ctx, out


class MarkerFile(Step):
    """A step that reads and writes a file through ctx.shell: where it runs is the Shell's business."""

    section = "test"

    def __init__(self, path: str, content: str):
        self.path, self.content = path, content
        self.name = f"marker {os.path.basename(path)}"

    def observe(self, ctx):
        res = ctx.shell.read(["cat", self.path], ok_codes=(0, 1))
        return res.stdout if res.rc == 0 else None

    def plan(self, ctx, current) -> Plan:
        if current == self.content:
            return noop(f"{self.path} already holds {self.content!r}")
        script = 'echo "writing on $(hostname)" >&2; sleep 1; printf %s "$1" > "$2"; echo done >&2'
        return Plan([Change(f"write {self.path}", "create", argv=["sh", "-c", script, "sh", self.content, self.path])])


# ---------------------------------------------------------------------------------------------
# steps through the Shell, on the remote host


def test_a_step_runs_remotely_and_its_result_is_reported_here_live(sshd_server, tmp_path):
    session = RemoteSession(sshd_server.remote_settings())
    marker = tmp_path / "marker.txt"
    try:
        ctx, out = remote_context(session)
        [r] = Runner(ctx).run([MarkerFile(str(marker), "written over ssh")])
        assert r.status == "changed", out.getvalue()
        assert marker.read_text() == "written over ssh"  # the remote host is this machine
        # read, write, and the read that verifies it: all on the remote host, recorded as such
        assert [(c.argv.split()[0], c.where) for c in r.commands] == [("cat", session.label), ("sh", session.label),
                                                                        ("cat", session.label)]
        assert any("cat " in c and str(marker) in c for c in sshd_server.commands())  # (inside the lifeline wrapper)
        # The write's progress arrived while it ran (it sleeps 1 s between its two lines).
        first = next(t for t, s in out.stamps if "writing on" in s)
        last = next(t for t, s in out.stamps if "| done" in s)
        assert last - first > 0.7, out.getvalue()
        assert "$ sh -c" in out.getvalue()

        [r] = Runner(ctx).run([MarkerFile(str(marker), "written over ssh")])  # observed remotely: a no-op
        assert r.status == "ok" and "already holds" in r.reason
    finally:
        session.close()


def test_env_and_stdin_secrets_reach_the_remote_process_but_never_a_command_line(sshd_server):
    secret = "env-secret-" + uuid.uuid4().hex
    piped = "stdin-secret-" + uuid.uuid4().hex
    redactor = Redactor()
    redactor.add(secret)
    redactor.add(piped)
    session = RemoteSession(sshd_server.remote_settings())
    code = ("import hashlib, os, sys; print(hashlib.sha256(os.environ['GPTOSS_TEST_SECRET'].encode()).hexdigest()); "
            "print(hashlib.sha256(sys.stdin.read().encode()).hexdigest()); "
            "print(open('/proc/self/cmdline', 'rb').read().replace(bytes(1), b' ').decode())")
    before = len(sshd_server.commands())
    try:
        ctx, out = remote_context(session, redactor=redactor)
        with ArgvWatch(secret, piped) as watch:
            res = ctx.shell.read([sys.executable, "-c", code], env={"GPTOSS_TEST_SECRET": secret}, stdin=piped)
        env_hash, stdin_hash, argv = res.stdout.splitlines()
        import hashlib

        assert env_hash == hashlib.sha256(secret.encode()).hexdigest()  # it arrived
        assert stdin_hash == hashlib.sha256(piped.encode()).hexdigest()
        assert secret not in argv and piped not in argv
        sent = sshd_server.commands()[before:]
        assert sent and not [c for c in sent if secret in c or piped in c]  # not on any remote command line
        assert watch.scans > 2 and not watch.hits  # nor in any process's argv on the machine meanwhile
        # The 0600 files that carried them are gone; the private dir goes with the session.
        private = session._private_dir
        assert private and os.stat(private).st_mode & 0o777 == 0o700 and os.listdir(private) == []
        assert secret not in out.getvalue()
    finally:
        session.close()
    assert not os.path.exists(private)

    # The detector is not blind: a secret put on a command line is seen there.
    session = RemoteSession(sshd_server.remote_settings())
    try:
        with ArgvWatch(secret) as watch:
            session.run_plain(f"sleep 0.3 || echo {secret}")
        assert watch.hits and any(secret in c for c in sshd_server.commands())
    finally:
        session.close()


# ---------------------------------------------------------------------------------------------
# tunnels


def test_a_dropped_connection_fails_the_command_with_a_message(sshd_server):
    session = RemoteSession(sshd_server.remote_settings())
    try:
        ctx, _ = remote_context(session)
        errors: list[BaseException] = []

        def long_read():
            try:
                ctx.shell.read(["sleep", "30"])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        worker = threading.Thread(target=long_read)
        logged = len(sshd_server.commands())
        worker.start()
        sshd_server.wait_for_command("sleep 30", after=logged)  # logged in: the command runs there now
        dropped = time.monotonic()
        assert sshd_server.drop_connections() >= 1
        worker.join(timeout=20)
        assert time.monotonic() - dropped < 15  # the drop ends it, not the 30 s sleep
        [err] = errors
        assert isinstance(err, StepError), repr(err)
        assert f"the SSH connection to {session.label} dropped while running `sleep 30`" in err.problem
        assert "re-run" in err.fix

        # A streamed run (how staging runs there): lines arrive as printed, and a drop is a message.
        seen: list[str] = []

        def on_line(line: str) -> None:
            seen.append(line)
            if line == "started":
                threading.Timer(0.2, sshd_server.drop_connections).start()

        with pytest.raises(StepError, match="dropped while the test run ran there"):
            stream_command(session, "echo started; sleep 30; echo never", on_line=on_line,
                           doing="the test run ran there")
        assert seen == ["started"]

        # The next use reconnects (host key checked again).
        assert ctx.shell.read(["echo", "again"]).stdout.strip() == "again"
    finally:
        session.close()


# ---------------------------------------------------------------------------------------------
# host keys, reachability, authentication


def test_unknown_host_key_is_refused_with_its_fingerprint_and_the_exact_fix(sshd_server, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"  # its folder does not exist yet either
    session = RemoteSession(sshd_server.remote_settings(known_hosts=str(known)))
    with pytest.raises(StepError) as info:
        session.open()
    err = info.value
    assert f"unknown host [127.0.0.1]:{sshd_server.port}" in err.problem
    assert f"ssh-ed25519 key {sshd_server.host_fingerprint}" in err.problem  # what ssh-keygen -lf prints
    fix = err.fix.split("then add it: ", 1)[1]
    assert fix == f"mkdir -p {known.parent} && ssh-keyscan -p {sshd_server.port} 127.0.0.1 >> {known}"
    import subprocess

    subprocess.run(["sh", "-c", fix], check=True, capture_output=True, timeout=30)  # the fix, verbatim
    with RemoteSession(sshd_server.remote_settings(known_hosts=str(known))) as ok:
        assert ok.run_plain("echo connected").stdout.strip() == "connected"

    # strict_host_keys: false trusts on first use, says so, and records the key for next time.
    first = tmp_path / "tofu_known_hosts"
    notes: list[str] = []
    with RemoteSession(sshd_server.remote_settings(known_hosts=str(first), strict_host_keys=False),
                       emit=notes.append) as tofu:
        tofu.run_plain("true")
    assert first.read_text() == sshd_server.known_hosts_entry()
    assert notes and "trusted unknown host" in notes[0] and sshd_server.host_fingerprint in notes[0]
    with RemoteSession(sshd_server.remote_settings(known_hosts=str(first))) as strict:
        strict.run_plain("true")


@pytest.mark.parametrize("strict", [True, False])
def test_changed_host_key_is_refused_even_when_not_strict(sshd_server, tmp_path, strict):
    other = keygen(tmp_path / "other_host_key", "impostor")
    known = tmp_path / "known_hosts"
    known.write_text(sshd_server.known_hosts_entry(other.with_suffix(".pub")))
    session = RemoteSession(sshd_server.remote_settings(known_hosts=str(known), strict_host_keys=strict))
    with pytest.raises(StepError) as info:
        session.open()
    err = info.value
    assert err.problem.startswith(f"REMOTE HOST IDENTIFICATION HAS CHANGED for [127.0.0.1]:{sshd_server.port}")
    assert sshd_server.host_fingerprint in err.problem and fingerprint(other.with_suffix(".pub")) in err.problem
    assert "man-in-the-middle" in err.problem
    if strict:
        import subprocess

        fix = err.fix.split("replace the entry: ", 1)[1]
        assert fix.startswith(f"ssh-keygen -f {known} -R '[127.0.0.1]:{sshd_server.port}' && ssh-keyscan -p ")
        subprocess.run(["sh", "-c", fix], check=True, capture_output=True, timeout=30)
        with RemoteSession(sshd_server.remote_settings(known_hosts=str(known))) as ok:
            ok.run_plain("true")
    else:
        assert known.read_text() == sshd_server.known_hosts_entry(other.with_suffix(".pub"))  # nothing trusted


def test_unreachable_host_refused_key_and_missing_key_file_say_what_to_do(sshd_server, tmp_path):
    closed = free_port()
    with pytest.raises(StepError) as info:
        RemoteSession(sshd_server.remote_settings(port=closed)).open()
    assert info.value.problem == f"cannot reach 127.0.0.1:{closed} over SSH: connection refused"
    assert "that sshd runs there" in info.value.fix

    stranger = keygen(tmp_path / "stranger_key")
    with pytest.raises(StepError) as info:
        RemoteSession(sshd_server.remote_settings(key_file=str(stranger))).open()
    assert info.value.problem == (f"127.0.0.1:{sshd_server.port} refused SSH authentication for user "
                                  f"{sshd_server.user} with {stranger}")
    assert f"add the public key ({stranger}.pub) to ~{sshd_server.user}/.ssh/authorized_keys" in info.value.fix

    with pytest.raises(ConfigError, match="remote.key_file: .* does not exist"):
        RemoteSession(sshd_server.remote_settings(key_file=str(tmp_path / "nope"))).open()

    base = sshd_server.remote_settings()
    assert resolve_remote(base, "ops@bastion:2200").model_dump(include={"user", "host", "port"}) == {
        "user": "ops", "host": "bastion", "port": 2200}
    assert resolve_remote(base, True) == base
    with pytest.raises(ConfigError, match="remote.host is not set"):
        resolve_remote(base.model_copy(update={"host": None}), True)


def test_missing_remote_python_or_modules_are_reported_with_the_fix(sshd_server, tmp_path):
    bare = tmp_path / "python-without-site-packages"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    results = {}
    for label, python in (("absent", "/nonexistent/python3"), ("bare", str(bare))):
        session = RemoteSession(sshd_server.remote_settings(python=python))
        try:
            ctx, out = remote_context(session, remote_shell=False)
            [results[label]] = Runner(ctx).run([RemoteHost(session, modules=STAGING_MODULES)])
        finally:
            session.close()
    absent, missing = results["absent"], results["bare"]
    assert absent.status == "failed" and absent.error == "/nonexistent/python3 not found on " + session.label + \
        " (remote.python)"
    assert "set remote.python" in absent.fix
    assert missing.status == "failed"
    assert "lacks what staging imports: pydantic, pyyaml, invoke, requests, google-cloud-storage" in missing.error
    # The pins this checkout declares, ready to paste.
    assert ("python3 -m venv ~/gptoss-venv && ~/gptoss-venv/bin/pip install 'pydantic<3,>=2.6' 'pyyaml<7,>=6' "
            "'invoke<3,>=2.2' 'requests<3,>=2.28' 'google-cloud-storage<4,>=2.18' 'google-crc32c<2,>=1.5' "
            "'huggingface-hub<3,>=0.30'"
            ) in missing.fix
    assert "remote.python: ~/gptoss-venv/bin/python" in missing.fix


# ---------------------------------------------------------------------------------------------
# staging on the remote host


def _staging_settings(tmp_path, hub, revision, **environ):
    from gptoss_gke.config import load_settings

    return load_settings(environ={"GPTOSS_ENV_DIR": staging_env(tmp_path, revision), "HF_ENDPOINT": hub.url,
                                  **environ})


def _workdirs(server) -> set[str]:
    """What runs left in the remote host's temp folder."""
    return set(glob.glob(os.path.join(server.tmp, "gptoss-gke.*")))


def test_stage_model_runs_on_the_remote_host_against_loopback_gcs_and_hub(sshd_server, tmp_path, hf_hub, gcs_front,
                                                                          fake_gcs):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=9 * MiB, n_shards=2, copy_size=MiB, gated="manual")
    settings = _staging_settings(tmp_path, hf_hub, sha, HF_TOKEN=hf_hub.token)
    access_token = "ya29.remote-test-" + uuid.uuid4().hex
    session = RemoteSession(sshd_server.remote_settings(python=sys.executable))
    before = _workdirs(sshd_server)
    n_commands = len(sshd_server.commands())
    try:
        redactor = Redactor()
        redactor.add(hf_hub.token)
        ctx, out = remote_context(session, settings, redactor=redactor, remote_shell=False)
        ctx.targets = ["ironwood"]
        [host] = Runner(ctx).run([RemoteHost(session, modules=STAGING_MODULES)])
        assert host.status == "ok" and "has what staging imports" in host.reason, out.getvalue()
        with ArgvWatch(hf_hub.token, access_token) as watch:
            results = run_task_remotely(
                ctx, session, "stage-model",
                secrets={"hf_token": hf_hub.token, "gcp_access_token": access_token},
                facts={"gcp.project": {"projectNumber": PROJECT_NUMBER, "lifecycleState": "ACTIVE"}})
    finally:
        session.close()
    text = out.getvalue()
    assert [(r.section, r.status) for r in results] == [("models", "changed")] * 3, text
    assert [r.name for r in results] == [f"bucket {BUCKET}", "bucket IAM: objectViewer for gptoss/vllm",
                                         f"stage {REPO_ID} (ironwood)"]
    assert all(r.facts["ran_on"] == session.label for r in results)
    stage = results[-1]
    assert stage.facts["revision"] == sha and stage.facts["transfer"]["bytes_uploaded"] > 18 * MiB

    # The weights really landed, through the remote process, with the token it got on stdin.
    folder = f"models/{REPO_ID}/{sha}/"
    names = {b.name for b in fake_gcs.client().list_blobs(BUCKET)}
    assert names == {folder + p for p in VLLM_LOADS} | {folder + ".gptoss-gke-manifest.json"}
    assert hf_hub.find_requests("GET", r"/resolve/") and all(r.had_token for r in hf_hub.find_requests("GET",
                                                                                                          r"/resolve/"))
    assert len(gcs_front.iam_sets) == 1

    # Its output arrived here as it ran, marked with the host; its code was this checkout, shipped.
    assert f"TASK [models : stage {REPO_ID} (ironwood)] on {session.label}" in text
    assert "changed: stage 10 of 10 files" in text or "changed: stage" in text
    bundle = code_bundle()
    assert f"shipping {bundle.describe()} to {session.label}" in text
    assert f"code from {tempfile_root(sshd_server)}" in text and f"sha256 {bundle.sha256[:12]}" in text

    # No secret on any command line, in any argv, in the output; nothing left on the host.
    sent = sshd_server.commands()[n_commands:]
    assert sent and not [c for c in sent if hf_hub.token in c or access_token in c]
    assert watch.scans > 2 and not watch.hits
    assert hf_hub.token not in text and access_token not in text
    assert _workdirs(sshd_server) == before

    # A checkout that differs from what the host imports is refused, not run.
    session = RemoteSession(sshd_server.remote_settings(python=sys.executable))
    tampered = code_bundle()
    tampered.marker["sha256"] = "0" * 64
    try:
        with pytest.raises(StepError, match="is not the code that was sent"):
            run_task_remotely(ctx, session, "stage-model", bundle=tampered)
    finally:
        session.close()
    assert _workdirs(sshd_server) == before


def tempfile_root(server) -> str:
    return os.path.join(server.tmp, "gptoss-gke.")


# ---------------------------------------------------------------------------------------------
# through `inv`


def test_inv_stage_model_on_host_end_to_end(sshd_server, tmp_path, hf_hub, gcs_front, fake_gcs, gcp_emulator):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=MiB, n_shards=2, copy_size=MiB, gated="manual")
    gcp_emulator.add_project("test-project", PROJECT_NUMBER)
    env = gcloud_env(gcp_emulator, tmp_path, "test-project")
    env.update(GPTOSS_ENV_DIR=staging_env(tmp_path, sha, server=sshd_server), HF_ENDPOINT=hf_hub.url,
               HF_TOKEN=hf_hub.token, STORAGE_EMULATOR_HOST=gcs_front.url, HF_HUB_DISABLE_TELEMETRY="1",
               NO_COLOR="1")
    report = tmp_path / "report.json"
    proc = run_inv(["stage-model", "--target=ironwood", "--on", f"--report={report}"], env, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    label = f"{sshd_server.user}@127.0.0.1:{sshd_server.port}"
    assert f"PLAYBOOK [stage-model] env=dev project=test-project targets=ironwood on={label}" in out
    assert "RECAP ok=3 changed=3 skipped=0 failed=0" in out
    doc = json.loads(report.read_text())
    assert [s["section"] for s in doc["steps"]] == ["auth", "auth", "remote", "models", "models", "models"]
    assert all(s["facts"].get("ran_on") == label for s in doc["steps"][3:])
    assert hf_hub.token not in out and hf_hub.token not in report.read_text()
    assert f"models/{REPO_ID}/{sha}/.gptoss-gke-manifest.json" in {b.name for b in fake_gcs.client().list_blobs(BUCKET)}


def test_inv_doctor_on_an_unknown_host_refuses_once_and_skips_the_checks(sshd_server, tmp_path, offline_env):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    env = {**offline_env, "GPTOSS_ENV_DIR": staging_env(tmp_path, "main", server=sshd_server, known_hosts=empty)}
    proc = run_inv(["doctor", "--on"], env, timeout=60)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert f"failed: unknown host [127.0.0.1]:{sshd_server.port}: its ssh-ed25519 key " \
           f"{sshd_server.host_fingerprint} is not in {empty}" in out
    assert f"ssh-keyscan -p {sshd_server.port} 127.0.0.1 >> {empty}" in out
    assert out.count("skipped: not run: remote host") == 6 and "RECAP ok=1 changed=0 skipped=6 failed=1" in out

    proc = run_inv(["doctor", "--on", "--set", "remote.host="], env, timeout=60)
    assert proc.returncode == 2 and "remote.host is not set" in proc.stderr


def test_ctrl_c_during_doctor_on_a_bastion_stops_the_command_there_too(sshd_server, tmp_path, offline_env):
    """A check hangs on the bastion (gcloud waiting on a network that never answers): Ctrl-C here ends the
    run at once, the command on the host is killed with everything it started, and no later check runs."""
    import signal
    import subprocess

    from tests.conftest import INV, LOOPBACK_DEFAULTS, REPO

    pidfile = tmp_path / "remote-gcloud.pid"
    fake = sshd_server.bin / "gcloud"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $$ $! > {pidfile}.part && mv {pidfile}.part {pidfile}\nwait\n")
    fake.chmod(0o755)
    env = {**LOOPBACK_DEFAULTS, **offline_env, "GPTOSS_ENV_DIR": staging_env(tmp_path, "main", server=sshd_server),
           "NO_COLOR": "1"}
    proc = subprocess.Popen([INV, "doctor", "--on"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    remote_pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pidfile.exists(), proc.communicate(timeout=60)[0] if proc.poll() is not None else "no remote gcloud"
        remote_pids = [int(p) for p in pidfile.read_text().split()]
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)  # a hang here is the bug: the run waited for the remote command
        assert proc.returncode == 130, out
        assert "RECAP INTERRUPTED by SIGINT" in out, out
        gone = time.monotonic() + 30
        while any(_alive(p) for p in remote_pids) and time.monotonic() < gone:
            time.sleep(0.1)
        assert not any(_alive(p) for p in remote_pids), f"left running on the host: {remote_pids}"
        # Whatever else was in flight there (the other checks run concurrently) ended too.
        gone = time.monotonic() + 60  # a loaded machine may take a while to schedule the host's cleanup
        while _lifelines(sshd_server) and time.monotonic() < gone:
            time.sleep(0.2)
        assert _lifelines(sshd_server) == [], (_lifelines(sshd_server), _host_processes(sshd_server))
    finally:
        fake.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in remote_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _lifelines(server) -> list[str]:
    """Commands this sshd's sessions still run (each of ours runs under a lifeline wrapper)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as f:
                mine = f"TMPDIR={server.tmp}".encode() in f.read().split(b"\0")
        except OSError:
            continue
        if mine and b"gptoss-gke-lifeline" in argv and _alive(int(entry)):
            found.append(b" ".join(argv).decode(errors="replace")[-80:])
    return found


def _host_processes(server) -> list[str]:
    """Every process the host's sessions left (pid, state, pgid, argv): what to look at when one lingers."""
    rows = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"TMPDIR={server.tmp}".encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().replace(b"\0", b" ").decode(errors="replace")[-100:]
        except OSError:
            continue
        rows.append(f"{entry} {fields[0]} ppid={fields[1]} pgid={fields[2]} {argv}")
    return rows


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its sshd) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
