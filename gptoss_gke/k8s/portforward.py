"""A local port that reaches a Ready pod of a target, the way `kubectl port-forward` does.

Shaped like fabric's ``Connection.forward_local``: a context manager whose ``finally`` always
tears the tunnel down, so nothing keeps listening after the block, whatever happened inside it.

How it works with the kubernetes 37 client: for every connection accepted on 127.0.0.1 we open one
``kubernetes.stream.portforward`` websocket to the pod (``connect_get_namespaced_pod_portforward``,
``ports=<target port>``). The client's ``PortForward`` object hands back one end of a socket pair
per port and runs a daemon thread that moves bytes between that pair and the websocket; our relay
thread moves bytes between the accepted connection and that socket. When either side closes, the
other is closed too; what the API server or kubelet said on the port's error channel (nothing
listening in the pod, say) is kept and printed, so a dropped tunnel shows up as a message on the
client side (the connection closes) rather than as a hang.

``kubernetes.stream.portforward`` swaps ``call_api`` on the ApiClient it is given for the duration
of the call, which is not safe while other threads use the same client. The tunnel therefore gets
its own ApiClient (same configuration: same server, credentials and TLS settings), and opening a
tunnel is serialised with a lock.
"""

from __future__ import annotations

import select
import socket
import threading
from contextlib import contextmanager
from typing import Iterator

from gptoss_gke.errors import StepError
from gptoss_gke.k8s.client import kube
from gptoss_gke.k8s.manifests import selector

_OPEN_LOCK = threading.Lock()
_POLL_S = 0.2  # how often idle relay loops look at the "closing" flag


def _is_ready(pod) -> bool:
    status = pod.status
    if pod.metadata.deletion_timestamp is not None or status is None or status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in (status.conditions or []))


def ready_pod(ctx, target) -> str:
    """The name of a Ready pod of the target, or a StepError that says what to do."""
    from kubernetes.client.exceptions import ApiException

    ns = ctx.settings.kube.namespace
    label_selector = ",".join(f"{k}={v}" for k, v in selector(target).items())
    try:
        pods = kube(ctx).core.list_namespaced_pod(ns, label_selector=label_selector).items
    except ApiException as exc:
        raise StepError(f"cannot list the pods of target {target.name} in namespace {ns}: "
                        f"HTTP {exc.status} {exc.reason}",
                        "check your Kubernetes credentials (inv setup-cluster writes them)") from None
    ready = sorted((p for p in pods if _is_ready(p)), key=lambda p: p.metadata.name)
    if ready:
        return ready[0].metadata.name
    seen = ", ".join(f"{p.metadata.name} ({(p.status.phase if p.status else None) or 'unknown'}, not ready)"
                     for p in pods) or "none"
    raise StepError(f"no Ready pod of target {target.name} in namespace {ns} (selector {label_selector}); "
                    f"pods: {seen}",
                    f"run `inv deploy --target={target.name}` (it waits for the rollout), then try again")


class _Tunnel:
    """The listening socket, the accept loop and one relay per accepted connection."""

    def __init__(self, ctx, pod: str, namespace: str, remote_port: int, local_port: int):
        from kubernetes import client

        self.ctx = ctx
        self.pod = pod
        self.namespace = namespace
        self.remote_port = remote_port
        # A client of its own (see the module docstring); same configuration as the run's client.
        self.core = client.CoreV1Api(client.ApiClient(kube(ctx).api_client.configuration))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(("127.0.0.1", local_port))
        except OSError as exc:
            self.listener.close()
            raise StepError(f"cannot listen on 127.0.0.1:{local_port}: {exc.strerror or exc}",
                            "pick another --local-port, or 0 for any free port") from None
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.errors: list[str] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._forwards: set = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"port-forward :{self.port}",
                                          daemon=True)

    # ---- lifecycle ----

    def start(self) -> None:
        self._acceptor.start()

    def close(self) -> None:
        self._closing.set()
        try:
            self.listener.close()
        except OSError:
            pass
        self._acceptor.join(timeout=5)
        with self._lock:
            socks, forwards = list(self._open), list(self._forwards)
        for s in socks:
            _close(s)
        for pf in forwards:
            try:
                pf.close()
            except Exception:  # noqa: BLE001 - already closed or broken: nothing left to release
                pass
        for t in list(self._threads):
            t.join(timeout=5)
        try:
            self.core.api_client.close()
        except Exception:  # noqa: BLE001 - releasing a connection pool; nothing to report
            pass

    # ---- accepting ----

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                readable, _, _ = select.select([self.listener], [], [], _POLL_S)
            except (OSError, ValueError):  # the listener was closed under us
                return
            if not readable:
                continue
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self._closing.is_set():
                _close(conn)
                return
            t = threading.Thread(target=self._relay, args=(conn,), daemon=True,
                                 name=f"port-forward relay :{self.port}")
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    # ---- one connection ----

    def _open_forward(self):
        from kubernetes.stream import portforward

        with _OPEN_LOCK:
            return portforward(self.core.connect_get_namespaced_pod_portforward, self.pod, self.namespace,
                               ports=str(self.remote_port))

    def _note(self, message: str) -> None:
        with self._lock:
            first = message not in self.errors
            if first:
                self.errors.append(message)
        if first:
            self.ctx.printer.line(f"  port-forward: {message}", "failed")

    def _relay(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.add(conn)
        pf = None
        try:
            try:
                pf = self._open_forward()
            except Exception as exc:  # ApiException(status=0) for websocket failures, among others
                reason = getattr(exc, "reason", None) or str(exc)
                self._note(f"cannot open a tunnel to pod {self.namespace}/{self.pod}: {_clip(str(reason))}")
                return
            with self._lock:
                self._forwards.add(pf)
            remote = pf.socket(self.remote_port)
            remote.setblocking(True)
            self._pump(conn, remote)
            error = pf.error(self.remote_port)
            if error:
                self._note(f"pod {self.pod} port {self.remote_port}: {_clip(error.strip())}")
        finally:
            _close(conn)
            if pf is not None:
                try:
                    pf.close()
                except Exception:  # noqa: BLE001
                    pass
            with self._lock:
                self._open.discard(conn)
                if pf is not None:
                    self._forwards.discard(pf)

    def _pump(self, conn: socket.socket, remote) -> None:
        """Copy both ways until one side closes or the tunnel is being torn down."""
        peers = {conn.fileno(): remote, remote.fileno(): conn}
        while not self._closing.is_set():
            try:
                readable, _, _ = select.select([conn, remote], [], [], _POLL_S)
            except (OSError, ValueError):
                return
            for src in readable:
                try:
                    data = src.recv(65536)
                except OSError:
                    return
                if not data:
                    return  # one side closed: the relay ends and closes the other
                try:
                    peers[src.fileno()].sendall(data)
                except OSError:
                    return


def _clip(text: str, limit: int = 400) -> str:
    """Long kubelet messages keep their head and their tail (where the cause is: "connection refused")."""
    if len(text) <= limit:
        return text
    return text[: limit // 3] + " ... " + text[-(limit * 2 // 3):]


def _close(s) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


@contextmanager
def port_forward_tunnel(ctx, target, *, local_port: int = 0) -> Iterator[_Tunnel]:
    """Like ``port_forward``, yielding the tunnel itself (``.port``, ``.pod``, ``.errors``)."""
    pod = ready_pod(ctx, target)
    tunnel = _Tunnel(ctx, pod, ctx.settings.kube.namespace, target.port, local_port)
    tunnel.start()
    try:
        yield tunnel
    finally:
        tunnel.close()


@contextmanager
def port_forward(ctx, target, *, local_port: int = 0) -> Iterator[int]:
    """Forward 127.0.0.1:<local_port> (any free port when 0) to a Ready pod of ``target``.

    Yields the local port. Leaving the block closes the listener and every open connection.
    """
    with port_forward_tunnel(ctx, target, local_port=local_port) as tunnel:
        yield tunnel.port
