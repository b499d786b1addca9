"""One SSH connection to one host (fabric), our host-key policy, and invoke's ``run`` over it.

Only the standard library is imported at module level (fabric and paramiko load when a connection is
made), so ``inv --list`` stays instant.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import shlex
import socket
import threading
import uuid
from typing import Any, Callable

from gptoss_gke.errors import ConfigError, StepError
from gptoss_gke.remote.entry import WORKDIR_PREFIX

KEEPALIVE_S = 15
MIN_PYTHON = (3, 10)

_PROBE = r"""
import importlib.util, json, sys
missing = []
for name in json.loads(sys.argv[1]):
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        missing.append(name)
print(json.dumps({"python": sys.version.split()[0], "version": list(sys.version_info[:2]),
                  "executable": sys.executable, "missing": missing}))
"""


# ---------------------------------------------------------------------------------------------
# Which host


def resolve_remote(base, on: str | bool | None):
    """``remote.*`` with ``--on`` applied: ``--on`` alone means remote.host; ``--on=[user@]host[:port]``
    overrides host (and user and port when given)."""
    if on is None or on is False:
        return base
    update: dict[str, Any] = {}
    if on is not True:
        text = str(on).strip()
        if "@" in text:
            user, text = text.rsplit("@", 1)
            if not user:
                raise ConfigError(f"--on {on}: empty user before '@'", "use --on=[user@]host[:port]")
            update["user"] = user
        m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text)
        if not m:
            raise ConfigError(f"--on {on}: expected [user@]host[:port]", "e.g. --on=stager@10.128.0.7:22")
        host = m.group(1) or m.group(3)
        port = m.group(2) or m.group(4)
        update["host"] = host
        if port:
            if not 0 < int(port) < 65536:
                raise ConfigError(f"--on {on}: port {port} is out of range", "use a port between 1 and 65535")
            update["port"] = int(port)
    merged = base.model_copy(update=update)
    if not merged.host:
        raise ConfigError("--on without a host, and remote.host is not set",
                          "pass --on=[user@]host[:port], or set remote.host in the environment file")
    return merged


def _sh_path(path: str) -> str:
    """A path for a POSIX shell command line, keeping a leading ~/ expandable."""
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def remote_cmd_path(path: str) -> str:
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def key_line(key) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _host_key_file(key) -> str:
    """Where sshd keeps a host key of this type, for the "check it on the host" hint."""
    name = key.get_name()
    kind = "ed25519" if "ed25519" in name else "ecdsa" if "ecdsa" in name else "rsa" if "rsa" in name else "*"
    return f"/etc/ssh/ssh_host_{kind}_key.pub"


# ---------------------------------------------------------------------------------------------
# Host keys


def _host_key_policy(session: "RemoteSession"):
    from paramiko.client import MissingHostKeyPolicy

    class Policy(MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            if session.settings.strict_host_keys:
                raise _UnknownHostKey(hostname, key)
            session._remember_host_key(client, hostname, key)

    return Policy()


class _UnknownHostKey(Exception):
    def __init__(self, name: str, key):
        super().__init__(f"unknown host key for {name}")
        self.name = name
        self.key = key


# ---------------------------------------------------------------------------------------------
# The connection


class RemoteSession:
    """One SSH connection to one host, with our host-key policy and error messages.

    Opened lazily by the first use and re-opened (host key checked again) if it dropped in between;
    :meth:`close` removes the private directory the session made on the host and closes the connection.
    """

    def __init__(self, settings, *, redactor=None, emit: Callable[[str], None] | None = None):
        self.settings = settings
        self.redactor = redactor
        self.emit = emit or (lambda line: None)
        user = settings.user or _local_user()
        self.user = user
        self.host = settings.host
        self.port = settings.port
        self.label = f"{user}@{self.host}" + (f":{self.port}" if self.port != 22 else "")
        self.known_hosts = settings.known_hosts
        self.conn = None
        self.host_key = None
        self._lock = threading.RLock()
        self._sftp = None
        self._sftp_transport = None
        self._private_dir: str | None = None

    # ---- names used in messages
    @property
    def hostkey_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def keyscan_fix(self) -> str:
        kh = self.known_hosts
        parent = os.path.dirname(os.path.expanduser(kh))
        mkdir = f"mkdir -p {_sh_path(os.path.dirname(kh))} && " if parent and not os.path.isdir(parent) else ""
        port = f"-p {self.port} " if self.port != 22 else ""
        return f"{mkdir}ssh-keyscan {port}{shlex.quote(self.host)} >> {_sh_path(kh)}"

    # ---- opening
    def _build(self):
        from fabric import Config, Connection
        from paramiko.config import SSHConfig

        s = self.settings
        if not self.host:
            raise ConfigError("no remote host: remote.host is not set", "pass --on=[user@]host[:port], or set "
                              "remote.host in the environment file")
        connect_kwargs: dict[str, Any] = {"banner_timeout": s.connect_timeout_s, "auth_timeout": s.connect_timeout_s}
        if s.key_file:
            path = os.path.expanduser(s.key_file)
            if not os.path.isfile(path):
                raise ConfigError(f"remote.key_file: {s.key_file} does not exist",
                                  "point it at your private SSH key (e.g. ~/.ssh/id_ed25519), or unset it to use "
                                  "ssh-agent and ~/.ssh/id_*")
            connect_kwargs.update(key_filename=[path], look_for_keys=False, allow_agent=False)
        # An explicit, empty ssh_config: the settings are the whole truth (no Host aliases or
        # ProxyCommands picked up from ~/.ssh/config), and env is never inlined on the command line.
        config = Config(ssh_config=SSHConfig(), lazy=True,
                        overrides={"load_ssh_configs": False, "inline_ssh_env": False})
        conn = Connection(self.host, user=self.user, port=self.port, config=config,
                          connect_timeout=max(1, math.ceil(s.connect_timeout_s)), connect_kwargs=connect_kwargs,
                          inline_ssh_env=False)
        client = conn.client
        client.set_missing_host_key_policy(_host_key_policy(self))
        kh = os.path.expanduser(self.known_hosts)
        if os.path.exists(kh):
            try:
                client.load_system_host_keys(kh)
            except Exception as exc:  # noqa: BLE001 - paramiko raises several kinds for a bad line
                raise ConfigError(f"remote.known_hosts: cannot read {self.known_hosts}: {exc}",
                                  "fix or remove the malformed line (ssh-keygen -F HOST -f FILE shows entries)")
        return conn

    def open(self):
        """The open fabric Connection, or a StepError/ConfigError that says what to do."""
        with self._lock:
            if self.conn is not None and self.conn.is_connected:
                return self.conn
            if self.conn is None:
                self.conn = self._build()
            try:
                self.conn.open()
            except Exception as exc:  # noqa: BLE001 - classified below
                try:
                    self.conn.close()
                except Exception:  # noqa: BLE001
                    pass
                self.conn = None
                raise self._explain(exc) from None
            transport = self.conn.transport
            transport.set_keepalive(KEEPALIVE_S)
            self.host_key = transport.get_remote_server_key()
            return self.conn

    def _explain(self, exc: Exception) -> Exception:
        from paramiko.ssh_exception import (AuthenticationException, BadHostKeyException, NoValidConnectionsError,
                                            PasswordRequiredException, SSHException)

        s = self.settings
        where = self.where
        if isinstance(exc, _UnknownHostKey):
            return StepError(
                f"unknown host {self.hostkey_name}: its {exc.key.get_name()} key {exc.key.fingerprint} is not in "
                f"{self.known_hosts}; refusing to connect to a host we cannot verify",
                f"confirm that fingerprint on the host itself (its console: ssh-keygen -lf "
                f"{_host_key_file(exc.key)}), then add it: {self.keyscan_fix()}")
        if isinstance(exc, BadHostKeyException):
            port = f"-p {self.port} " if self.port != 22 else ""
            return StepError(
                f"REMOTE HOST IDENTIFICATION HAS CHANGED for {self.hostkey_name}: it presented "
                f"{key_line(exc.key)}, but {self.known_hosts} holds {key_line(exc.expected_key)}. Someone could "
                f"be intercepting this connection (man-in-the-middle), or the host was rebuilt; refusing to connect",
                f"only if the host was rebuilt: confirm its new fingerprint on the host itself, then replace the "
                f"entry: ssh-keygen -f {_sh_path(self.known_hosts)} -R {shlex.quote(self.hostkey_name)} && "
                f"ssh-keyscan {port}{shlex.quote(self.host)} >> {_sh_path(self.known_hosts)}")
        if isinstance(exc, PasswordRequiredException):
            return StepError(f"the SSH key {s.key_file} is protected by a passphrase",
                             "load it into ssh-agent (ssh-add KEY) and unset remote.key_file, or use a key "
                             "without a passphrase for this host")
        if isinstance(exc, AuthenticationException):
            key = s.key_file or "ssh-agent / ~/.ssh/id_* keys"
            return StepError(
                f"{where} refused SSH authentication for user {self.user} with {key}",
                f"add the public key ({s.key_file + '.pub' if s.key_file else 'yours'}) to "
                f"~{self.user}/.ssh/authorized_keys on {self.host} (GCE: OS Login, or the instance's ssh-keys "
                f"metadata), or set remote.user / remote.key_file (or --on=USER@{self.host})")
        if isinstance(exc, socket.gaierror):
            return StepError(f"cannot resolve SSH host {self.host}: {exc.strerror or exc}",
                             "check remote.host (or --on): a name this machine can resolve, or an IP address")
        if isinstance(exc, (NoValidConnectionsError, ConnectionRefusedError)):
            reasons = sorted({(e.strerror or str(e)).lower() for e in (getattr(exc, "errors", None) or {}).values()})
            return StepError(f"cannot reach {where} over SSH: {', '.join(reasons) or 'connection refused'}",
                             f"check remote.host/remote.port (or --on), that sshd runs there, and that a firewall "
                             f"allows TCP {self.port} from here")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return StepError(f"cannot reach {where} over SSH: no answer within {s.connect_timeout_s:g}s",
                             f"check the address and that a firewall allows TCP {self.port} from here (GCE: a "
                             f"firewall rule, or IAP); raise remote.connect_timeout_s for slow links")
        if isinstance(exc, OSError):
            return StepError(f"cannot reach {where} over SSH: {exc.strerror or exc}",
                             "check remote.host/remote.port (or --on) and the network path to it")
        if isinstance(exc, SSHException):
            return StepError(f"SSH with {where} failed: {exc}",
                             f"check that {where} is an SSH server (remote.port) and try `ssh -p {self.port} "
                             f"{self.user}@{self.host}` to see the same failure")
        if isinstance(exc, (ConfigError, StepError)):
            return exc
        return StepError(f"SSH with {where} failed: {type(exc).__name__}: {exc}")

    def _remember_host_key(self, client, name: str, key) -> None:
        """strict_host_keys: false — trust on first use, and record the key so the next run checks it."""
        path = os.path.expanduser(self.known_hosts)
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(f"{name} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(name, key.get_name(), key)
        self.emit(f"    warning: trusted unknown host {name} on first use ({key_line(key)}), added to "
                  f"{self.known_hosts} (remote.strict_host_keys is off)")

    # ---- state of the link
    @property
    def transport(self):
        return self.conn.transport if self.conn is not None else None

    def alive(self) -> bool:
        t = self.transport
        return bool(t is not None and t.is_active())

    def dropped_error(self, doing: str) -> StepError:
        return StepError(f"the SSH connection to {self.label} dropped while {doing}",
                         f"check the network path to {self.host} and that the host is up; then re-run "
                         f"(steps are idempotent: the run resumes where it stopped)")

    # ---- files on the host
    def sftp(self):
        with self._lock:
            conn = self.open()
            if self._sftp is None or self._sftp_transport is not conn.transport:
                self._sftp = conn.client.open_sftp()
                self._sftp_transport = conn.transport
            return self._sftp

    def mkdtemp(self, prefix: str = WORKDIR_PREFIX) -> str:
        """A new private (0700) directory on the host."""
        res = self.run_plain(f'umask 077 && mktemp -d "${{TMPDIR:-/tmp}}/{prefix}XXXXXXXX"', doing="making a "
                             "private temp directory")
        path = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        if res.exited != 0 or not path.startswith("/"):
            raise StepError(f"cannot make a private temp directory on {self.label}: "
                            f"{(res.stderr or res.stdout).strip()[:300]}",
                            "check that /tmp (or $TMPDIR) is writable there")
        return path

    def private_dir(self) -> str:
        with self._lock:
            if self._private_dir is None:
                self._private_dir = self.mkdtemp(WORKDIR_PREFIX + "env.")
            return self._private_dir

    def put_private(self, data: bytes, name: str | None = None, directory: str | None = None) -> str:
        """Write ``data`` to a 0600 file in a 0700 directory on the host; returns its path."""
        directory = directory or self.private_dir()
        path = posixpath.join(directory, name or uuid.uuid4().hex)
        with self._lock:
            sftp = self.sftp()
            try:
                with sftp.open(path, "wb") as fh:
                    fh.chmod(0o600)  # before a byte is written (the directory is private anyway)
                    fh.write(data)
            except (EOFError, OSError) as exc:
                if not self.alive():
                    raise self.dropped_error("writing a file there") from None
                raise StepError(f"cannot write {path} on {self.label}: {exc}") from None
        return path

    def remove(self, *paths: str) -> None:
        """Best effort: a file that is already gone is fine."""
        if not paths or not self.alive():
            return
        with self._lock:
            try:
                sftp = self.sftp()
            except Exception:  # noqa: BLE001
                return
            for path in paths:
                try:
                    sftp.remove(path)
                except (OSError, EOFError):
                    pass

    def remove_tree(self, path: str) -> bool:
        if not path or not posixpath.basename(path).startswith(WORKDIR_PREFIX) or not self.alive():
            return False
        res = self.run_plain(f"rm -rf -- {shlex.quote(path)}", doing="cleaning up", check_drop=False)
        return res.exited == 0

    # ---- commands
    def run_plain(self, command: str, *, doing: str = "running a command", check_drop: bool = True, **kwargs):
        """A command with no secrets, its output captured (not echoed)."""
        conn = self.open()
        kwargs.setdefault("hide", True)
        kwargs.setdefault("warn", True)
        kwargs.setdefault("in_stream", False)
        try:
            res = conn.run(command, **kwargs)
        except (EOFError, OSError) as exc:
            raise self.dropped_error(doing) from exc
        except Exception as exc:  # noqa: BLE001 - paramiko's SSHException when the session cannot open
            if type(exc).__name__ == "SSHException" or not self.alive():
                raise self.dropped_error(doing) from exc
            raise
        if check_drop and res.exited in (-1, None):
            raise self.dropped_error(doing)
        return res

    def executor(self) -> "RemoteExecutor":
        return RemoteExecutor(self)

    def close(self) -> None:
        with self._lock:
            if self.conn is None:
                return
            if self._private_dir and self.alive():
                try:
                    self.remove_tree(self._private_dir)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            self._private_dir = None
            if self._sftp is not None:
                try:
                    self._sftp.close()
                except Exception:  # noqa: BLE001
                    pass
                self._sftp = None
            try:
                self.conn.close()
            finally:
                self.conn = None

    def __enter__(self) -> "RemoteSession":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the interpreter that runs shipped code
    def probe_python(self, modules: dict[str, str] | None = None, *, purpose: str = "staging") -> dict:
        py = self.settings.python
        names = list(modules or {})
        cmd = f"{remote_cmd_path(py)} -c {shlex.quote(_PROBE)} {shlex.quote(json.dumps(names))}"
        res = self.run_plain(cmd, doing="checking its python")
        if res.exited == 127 or "not found" in (res.stderr or "") and res.exited != 0:
            raise StepError(f"{py} not found on {self.label} (remote.python)",
                            "install Python 3.10 or newer there (Debian/Ubuntu: apt-get install -y python3 "
                            "python3-venv), or set remote.python to the interpreter's path")
        try:
            info = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepError(f"{py} on {self.label} did not run: {(res.stderr or res.stdout).strip()[-300:]}",
                            "set remote.python to a working Python 3.10+ interpreter") from None
        if tuple(info["version"]) < MIN_PYTHON:
            raise StepError(f"{py} on {self.label} is Python {info['python']}; {purpose} needs "
                            f"{'.'.join(map(str, MIN_PYTHON))} or newer",
                            "install a newer python there and point remote.python at it")
        info["missing_dists"] = [modules[m] for m in info["missing"]] if modules else []
        return info



def _local_user() -> str:
    import getpass

    return getpass.getuser()

# ---------------------------------------------------------------------------------------------
# invoke's `run`, on the remote host, secrets kept off the command line


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RemoteExecutor:
    """Anything the Shell runs, run on the session's host. Same signature as ``invoke.Context.run``.

    ``env`` (and text given as ``in_stream``) travels in a 0600 file, never on the command line: the
    command becomes ``/bin/sh -c 'set -a; . FILE; set +a; rm -f FILE; CMD' < STDIN_FILE`` and both files
    are removed again when it returns, whatever happened. A connection that drops while the command
    runs is a StepError saying so (not an exit status).
    """

    def __init__(self, session: RemoteSession):
        self.session = session

    def run(self, command: str, **kwargs):
        session = self.session
        conn = session.open()
        env = dict(kwargs.pop("env", None) or {})
        kwargs.pop("replace_env", None)
        stdin = kwargs.pop("in_stream", False)
        files: list[str] = []
        try:
            inner = []
            if env:
                for key in env:
                    if not _ENV_NAME.match(key):
                        raise StepError(f"not a valid environment variable name: {key!r}")
                text = "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in sorted(env.items()))
                path = session.put_private(text.encode())
                files.append(path)
                q = shlex.quote(path)
                inner.append(f"set -a; . {q} || exit 125; set +a; rm -f {q}")
            redirect = ""
            if stdin not in (False, None) and hasattr(stdin, "read"):
                data = stdin.read()
                path = session.put_private(data.encode() if isinstance(data, str) else data)
                files.append(path)
                redirect = f" < {shlex.quote(path)}"
                inner.append(f"rm -f {shlex.quote(path)}")  # the shell already holds it open
            if inner:
                command = f"/bin/sh -c {shlex.quote('; '.join(inner + [command]))}{redirect}"
            from gptoss_gke.core import interrupt

            stop = interrupt.current()
            try:
                running = conn.run(_with_lifeline(command), in_stream=False, asynchronous=True, **kwargs)
                # Closing the channel ends the lifeline: the host then kills the command and its children.
                with stop.on_interrupt(running.runner.kill):
                    res = running.join()
            except (EOFError, OSError) as exc:
                raise session.dropped_error(f"running `{_clip(command)}`") from exc
            except Exception as exc:
                if type(exc).__name__ == "CommandTimedOut":
                    raise
                if type(exc).__name__ == "SSHException" or not session.alive():
                    raise session.dropped_error(f"running `{_clip(command)}`") from exc
                raise
            if res.exited in (-1, None) and stop.is_set():
                return res  # the Shell reports it as interrupted
            if res.exited in (-1, None):
                if not session.alive():
                    raise session.dropped_error(f"running `{_clip(command)}`")
                raise StepError(f"`{_clip(command)}` on {session.label} ended without an exit status (killed by "
                                f"a signal?)", "look at the host's logs (dmesg: out of memory?)")
            return res
        finally:
            session.remove(*files)


# The command runs in a session of its own (setsid) while a watcher holds the channel's stdin, which this
# side never writes or closes. When the channel closes (an interrupt here, this process dying, the
# connection dropping) the watcher reads EOF and stops the command's whole process group, as an
# interrupted local run stops its children. Without setsid on the host the command runs as before.
_LIFELINE = (
    'command -v setsid >/dev/null 2>&1 || exec /bin/sh -c "$1"; '
    'exec 3<&0; '
    'setsid /bin/sh -c "$1" 0</dev/null 3<&- & c=$!; '
    "setsid /bin/sh -c 'cat >/dev/null; kill -TERM -$0 2>/dev/null; sleep 5; kill -KILL -$0 2>/dev/null' "
    '"$c" 0<&3 >/dev/null 2>&1 & w=$!; '
    'exec 3<&-; wait "$c"; rc=$?; kill -KILL -"$w" 2>/dev/null; exit "$rc"'
)


def _with_lifeline(command: str) -> str:
    return f"/bin/sh -c {shlex.quote(_LIFELINE)} gptoss-gke-lifeline {shlex.quote(command)}"


def _clip(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
