"""Ctrl-C and SIGTERM stop a run: real signals to a real `inv` while a write is in flight.

The GKE emulator holds the operation of one write RUNNING (gcloud polls it, as it polls a node-pool
delete that takes minutes), the test signals the `inv` process, and then checks what a user would:
the exit status, that no later write reached the emulator, that the child in flight is gone, and what
the recap and the report say.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import INV, LOOPBACK_DEFAULTS, REPO

P, L, C = "test-project", "us-central1", "gptoss"


def start_inv(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`inv` as a user would start it from a shell: SIGINT at its default, whatever ignores it here."""
    return subprocess.Popen([INV, *args], cwd=REPO, env={**LOOPBACK_DEFAULTS, **env}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


class Terminal:
    """`inv` with a pseudo-terminal as its controlling terminal: ``ctrl_c()`` types ^C, and the terminal
    driver sends SIGINT to its foreground process group, as a real terminal does."""

    def __init__(self, args: list[str], env: dict[str, str]):
        import fcntl
        import pty
        import termios
        import threading

        self.master, slave = pty.openpty()

        def become_its_session() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([INV, *args], cwd=REPO, env={**LOOPBACK_DEFAULTS, **env}, stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True, preexec_fn=become_its_session)
        os.close(slave)
        self.chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)  # a full pty would block inv
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every holder of the terminal has gone
                return
            if not data:
                return
            self.chunks.append(data)

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def wait(self, timeout: float) -> str:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return b"".join(self.chunks).decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def processes_with(env_key: str, value: str) -> list[int]:
    """PIDs of this user's processes whose environment has env_key=value (how a test finds its own children)."""
    needle = f"{env_key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(event, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not event.wait(0.1):
        if proc.poll() is not None:
            raise AssertionError(f"inv ended before {what}:\n{proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")


def test_sigint_during_a_node_pool_delete_stops_teardown_there(deploy_world):
    w = deploy_world
    hold = w.gcp.hold_operations(r"/nodePools/l4-gptoss$", method="DELETE")
    report = w.tmp / "report.json"
    config = w.env["CLOUDSDK_CONFIG"]
    proc = start_inv(["teardown", "--yes", f"--report={report}"], w.env)
    try:
        wait_for(hold.started, "node-pool delete", proc)
        os.kill(proc.pid, signal.SIGINT)  # to inv alone, as `kill -INT` or a CI runner sends it
        out = proc.communicate(timeout=60)[0]
        children_left = processes_with("CLOUDSDK_CONFIG", config)
    finally:
        hold.release()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        kill_all(processes_with("CLOUDSDK_CONFIG", config))

    assert proc.returncode == 130, out
    assert children_left == [], "gcloud kept running after inv stopped"
    # Nothing after the interrupted step reached the cloud: the other pool was never asked to go.
    assert w.gcp.find_requests("DELETE", r"/nodePools/ironwood-gptoss") == [], out
    assert w.gcp.get_nodepool(P, L, C, "ironwood-gptoss") is not None
    assert "interrupted by SIGINT while running: gcloud container node-pools delete l4-gptoss" in out
    assert "not started (SIGINT): node pool ironwood-gptoss" in out
    recap = [ln for ln in out.splitlines() if ln.startswith("RECAP")]
    assert recap and recap[-1].startswith("RECAP INTERRUPTED by SIGINT:") and "failed=0" not in recap[-1], out
    doc = json.loads(report.read_text())
    assert doc["outcome"] == "interrupted" and doc["recap"]["failed"] >= 1
    assert doc["interrupted"]["signal"] == "SIGINT" and doc["interrupted"]["exit_status"] == 130
    # (teardown also looks for l4's spot-profile pools, after every target's own pool)
    assert doc["interrupted"]["not_started"] == ["node pool ironwood-gptoss", "node pool l4-gptoss-spot",
                                                 "node pool l4-gptoss-fallback"]
    assert [s["name"] for s in doc["steps"] if s["interrupted"]] == ["node pool l4-gptoss"]


def test_sigterm_during_a_node_pool_create_stops_setup_cluster_with_143(gcloud_world, tmp_path):
    emu, env = gcloud_world
    hold = emu.hold_operations(r"/nodePools$", method="POST")
    report = tmp_path / "report.json"
    proc = start_inv(["setup-cluster", f"--report={report}"], env)
    try:
        wait_for(hold.started, "node-pool create", proc)
        os.kill(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
        children_left = processes_with("CLOUDSDK_CONFIG", env["CLOUDSDK_CONFIG"])
    finally:
        hold.release()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        kill_all(processes_with("CLOUDSDK_CONFIG", env["CLOUDSDK_CONFIG"]))

    assert proc.returncode == 143, out
    assert children_left == []
    created = [r.body["nodePool"]["name"] for r in emu.find_requests("POST", r"/nodePools$")]
    assert created == ["l4-gptoss"], out  # the second pool was never asked for
    assert "clusters get-credentials" not in out
    doc = json.loads(report.read_text())
    assert doc["outcome"] == "interrupted" and doc["interrupted"]["signal"] == "SIGTERM"
    assert doc["interrupted"]["not_started"] == ["node pool ironwood-gptoss (ironwood)", "kubectl credentials"]
    assert "RECAP INTERRUPTED by SIGTERM:" in out


def test_ctrl_c_at_a_terminal_stops_setup_cluster_with_130(gcloud_world):
    emu, env = gcloud_world
    hold = emu.hold_operations(r"/nodePools$", method="POST")
    term = Terminal(["setup-cluster"], env)
    try:
        wait_for(hold.started, "node-pool create", term.proc)
        term.ctrl_c()
        out = term.wait(timeout=60)
        children_left = processes_with("CLOUDSDK_CONFIG", env["CLOUDSDK_CONFIG"])
    finally:
        hold.release()
        term.close()
        kill_all(processes_with("CLOUDSDK_CONFIG", env["CLOUDSDK_CONFIG"]))
    assert term.proc.returncode == 130, out
    assert children_left == []
    assert [r.body["nodePool"]["name"] for r in emu.find_requests("POST", r"/nodePools$")] == ["l4-gptoss"], out
    assert "RECAP INTERRUPTED by SIGINT:" in out
