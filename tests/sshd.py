"""A second sshd on a loopback port, for fabric: its own host key, client key and configuration.

``sshd_server`` (module-scoped fixture) starts ``/usr/sbin/sshd -D -f CFG -E LOG`` on 127.0.0.1 with a
fresh ed25519 host key and an authorized ed25519 client key, and stops it by its PID. The machine's own
sshd (if any), ``~/.ssh`` and ``/etc/ssh`` are never touched or read.

Every session goes through a ``ForceCommand`` wrapper that appends the command line the client sent
(``SSH_ORIGINAL_COMMAND``: exactly what the remote shell gets as its argv) to a log, then runs it with
``/bin/sh -c``; an sftp subsystem request is handed to ``sftp-server``. ``commands()`` reads that log, so
a test can prove a secret never travelled on a remote command line. ``ArgvWatch`` additionally polls
every process's ``/proc/<pid>/cmdline`` on this machine (the "remote" host is this machine) while a
block runs.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool

SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server",
                "/usr/libexec/sftp-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str = "test") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def fingerprint(pub: Path) -> str:
    """``SHA256:...`` as ssh-keygen prints it: the reference our messages are checked against."""
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True,
                          text=True).stdout.split()[1]


class SshServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name

    # ---- files a test uses
    @property
    def host_key_pub(self) -> Path:
        return self.root / "host_key.pub"

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file that trusts this server (and only it)."""
        return self.root / "known_hosts"

    @property
    def tmp(self) -> Path:
        """The "remote" host's temp folder (its sessions' TMPDIR): what a run leaves there is this
        server's alone, whatever other tests write to this machine's /tmp meanwhile."""
        return self.root / "tmp"

    @property
    def bin(self) -> Path:
        """First on the "remote" host's PATH: a test puts a stand-in for a tool there (and removes it)."""
        return self.root / "bin"

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    @property
    def host_fingerprint(self) -> str:
        return fingerprint(self.host_key_pub)

    def known_hosts_entry(self, pub: Path | None = None) -> str:
        kind, blob = (pub or self.host_key_pub).read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def remote_settings(self, **overrides):
        from gptoss_gke.config import RemoteSettings

        values = dict(host="127.0.0.1", port=self.port, user=self.user, key_file=str(self.client_key),
                      known_hosts=str(self.known_hosts), connect_timeout_s=5)
        values.update(overrides)
        return RemoteSettings(**values)

    # ---- what the wrapper saw
    def commands(self) -> list[str]:
        path = self.root / "commands.log"
        if not path.exists():
            return []
        # Only whole lines: the wrapper may be writing the next one right now.
        lines = path.read_text().split("\n")[:-1]
        return [base64.b64decode(line).decode(errors="replace") for line in lines if line]

    def wait_for_command(self, text: str, *, after: int = 0, timeout: float = 60) -> str:
        """The first command after the first ``after`` ones that contains ``text``, once a session has
        started it: the login is over and the command runs (the wrapper logs it just before it runs it)."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((c for c in self.commands()[after:] if text in c), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no session started a command containing {text!r} within {timeout}s; "
                                     f"commands: {self.commands()[after:]}")
            time.sleep(0.02)

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if self.proc is not None and ppid == self.proc.pid:
                pids.append(int(entry))
        return pids

    def drop_connections(self) -> int:
        """Kill every per-connection sshd process, as a network cut or a reboot would."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    # ---- lifecycle
    def start(self) -> "SshServer":
        sshd = "/usr/sbin/sshd"
        if not os.path.exists(sshd):
            require_tool("sshd", "apt-get install -y openssh-server")
        require_tool("ssh-keygen", "apt-get install -y openssh-client")
        sftp = next((p for p in SFTP_SERVERS if os.path.exists(p)), None)
        if sftp is None:
            require_tool("sftp-server", "apt-get install -y openssh-server")
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        self.root.mkdir(parents=True, exist_ok=True)
        keygen(self.root / "host_key", "test-host")
        keygen(self.client_key, "test-client")
        (self.root / "authorized_keys").write_text((self.root / "client_key.pub").read_text())
        wrapper = self.root / "force-command.sh"
        self.tmp.mkdir(exist_ok=True)
        self.bin.mkdir(exist_ok=True)
        wrapper.write_text(f"""#!/bin/sh
export TMPDIR={self.tmp}
export PATH={self.bin}:$PATH
printf '%s' "$SSH_ORIGINAL_COMMAND" | base64 -w0 >> {self.root}/commands.log
echo >> {self.root}/commands.log
if [ "$SSH_ORIGINAL_COMMAND" = internal-sftp ]; then exec {sftp}; fi
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
""")
        wrapper.chmod(0o755)
        for _ in range(5):
            self.port = free_port()
            cfg = self.root / "sshd_config"
            cfg.write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.root}/host_key
PidFile {self.root}/sshd.pid
AuthorizedKeysFile {self.root}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
ForceCommand {wrapper}
LogLevel VERBOSE
""")
            self.known_hosts.write_text(self.known_hosts_entry())
            self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(cfg), "-E", str(self.log)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            if self._ready():
                return self
            self.stop()
        raise RuntimeError(f"sshd did not start; its log:\n{self.log.read_text() if self.log.exists() else ''}")

    def _ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0"):
                        return True
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.drop_connections()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory):
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()


class ArgvWatch:
    """Poll every process's command line on this machine for any of ``needles`` while a block runs."""

    def __init__(self, *needles: str, interval: float = 0.003):
        self.needles = [n.encode() for n in needles if n]
        self.interval = interval
        self.hits: list[str] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="argv-watch")

    def _watch(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or entry == me:
                    continue
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as fh:
                        argv = fh.read()
                except OSError:
                    continue
                for needle in self.needles:
                    if needle in argv:
                        self.hits.append(f"pid {entry}: {argv.replace(bytes(1), b' ')[:200]!r}")
            self.scans += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "ArgvWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
