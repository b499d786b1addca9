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

import socket
import threading
from contextlib import contextmanager
from typing import Iterator

from gptoss_gke.core.forward import LocalForwarder, close_quietly
from gptoss_gke.errors import StepError
from gptoss_gke.k8s.client import explain, kube
from gptoss_gke.k8s.manifests import selector

_OPEN_LOCK = threading.Lock()


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
        explained = explain(ctx, exc)  # in words, as every Kubernetes step says it
        raise StepError(f"cannot list the pods of target {target.name} in namespace {ns}: {explained.problem}",
                        explained.fix) from None
    ready = sorted((p for p in pods if _is_ready(p)), key=lambda p: p.metadata.name)
    if ready:
        return ready[0].metadata.name
    seen = ", ".join(f"{p.metadata.name} ({(p.status.phase if p.status else None) or 'unknown'}, not ready)"
                     for p in pods) or "none"
    raise StepError(f"no Ready pod of target {target.name} in namespace {ns} (selector {label_selector}); "
                    f"pods: {seen}",
                    f"run `inv deploy --target={target.name}` (it waits for the rollout), then try again")


class _Tunnel(LocalForwarder):
    """The listening socket, the accept loop and one relay per accepted connection."""

    backlog = 16
    join_timeout_s = 5
    acceptor_name = "port-forward :{port}"
    relay_name = "port-forward relay :{port}"
    bind_fix = "pick another --local-port, or 0 for any free port"

    def __init__(self, ctx, pod: str, namespace: str, remote_port: int, local_port: int):
        from kubernetes import client

        self.ctx = ctx
        self.pod = pod
        self.namespace = namespace
        self.remote_port = remote_port
        # A client of its own (see the module docstring); same configuration as the run's client.
        self.core = client.CoreV1Api(client.ApiClient(kube(ctx).api_client.configuration))
        super().__init__(local_port)
        self.errors: list[str] = self.notes

    def released(self) -> None:
        try:
            self.core.api_client.close()
        except Exception:  # noqa: BLE001 - releasing a connection pool; nothing to report
            pass

    def on_note(self, message: str) -> None:
        self.ctx.printer.line(f"  port-forward: {message}", "failed")

    def _accepted(self, conn: socket.socket, peer) -> bool:
        if self._closing.is_set():
            close_quietly(conn)
            return False
        return super()._accepted(conn, peer)

    # ---- one connection: a PortForward websocket, opened on the relay thread

    def open_upstream(self, conn: socket.socket, peer):
        from kubernetes.stream import portforward

        _quiet_proxy_resets()
        try:
            with _OPEN_LOCK:
                return portforward(self.core.connect_get_namespaced_pod_portforward, self.pod, self.namespace,
                                   ports=str(self.remote_port))
        except Exception as exc:  # ApiException(status=0) for websocket failures, among others
            reason = getattr(exc, "reason", None) or str(exc)
            self._note(f"cannot open a tunnel to pod {self.namespace}/{self.pod}: {_clip(str(reason))}")
            return None

    def relay(self, conn: socket.socket, pf) -> None:
        remote = pf.socket(self.remote_port)
        remote.setblocking(True)
        self._pump(conn, remote)
        error = pf.error(self.remote_port)
        if error:
            self._note(f"pod {self.pod} port {self.remote_port}: {_clip(error.strip())}")


_PROXY_THREAD = "Kubernetes port forward proxy"  # the client library's thread per port-forward websocket


def _quiet_proxy_resets() -> None:
    """The client library's proxy thread ends with ConnectionResetError when a connection is reset: a closed
    connection (relay() says so per connection), not a crash to print as a traceback on the terminal."""
    previous = threading.excepthook
    if getattr(previous, "quiet_proxy_resets", False):
        return

    def hook(args) -> None:
        if (args.thread is not None and args.thread.name.startswith(_PROXY_THREAD)
                and issubclass(args.exc_type, (ConnectionResetError, BrokenPipeError))):
            return
        previous(args)

    hook.quiet_proxy_resets = True
    threading.excepthook = hook


def _clip(text: str, limit: int = 400) -> str:
    """Long kubelet messages keep their head and their tail (where the cause is: "connection refused")."""
    if len(text) <= limit:
        return text
    return text[: limit // 3] + " ... " + text[-(limit * 2 // 3):]


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
