"""A local listening port whose connections are relayed to an upstream, one relay thread each.

:class:`LocalForwarder` is the tunnel's plumbing (``k8s/portforward.py`` is the one tunnel): the
127.0.0.1 listener (an ephemeral port when 0), the accept loop (``select`` with a short poll so
it notices ``close``), one relay thread per accepted connection, the tracking of what is open, and
a ``close`` that stops the listener, closes everything and joins the threads. A subclass says how to
reach the far end (:meth:`LocalForwarder.open_upstream`) and, when a plain two-way copy is not
enough, how to relay (:meth:`LocalForwarder.relay`).
"""

from __future__ import annotations

import select
import socket
import threading

from gptoss_gke.errors import StepError

POLL_S = 0.2  # how often idle loops look at the "closing" flag


def close_quietly(obj) -> None:
    """Close a socket (shut down first, so the peer sees the end at once) or anything with ``close``."""
    if isinstance(obj, socket.socket):
        try:
            obj.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    try:
        obj.close()
    except Exception:  # noqa: BLE001 - already closed or broken: nothing left to release
        pass


class LocalForwarder:
    """127.0.0.1:<local_port> → ``open_upstream`` for every accepted connection."""

    backlog = 16
    join_timeout_s = 5.0
    acceptor_name = "forward :{port}"
    relay_name = "forward relay :{port}"
    bind_fix = "pick another local port (0: any free one)"

    def __init__(self, local_port: int = 0):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(("127.0.0.1", int(local_port)))
        except OSError as exc:
            self.listener.close()
            raise StepError(f"cannot listen on 127.0.0.1:{local_port}: {exc.strerror or exc}",
                            self.bind_fix) from None
        self.listener.listen(self.backlog)
        self.port = self.listener.getsockname()[1]
        self.notes: list[str] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._open: set = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=self.acceptor_name.format(port=self.port))

    # ---- hooks

    def open_upstream(self, conn: socket.socket, peer):
        """The far end for one accepted connection, or None (after noting why) to drop it."""
        raise NotImplementedError

    def relay(self, conn: socket.socket, upstream) -> None:
        """Move bytes both ways; by default ``upstream`` is a selectable socket-like object."""
        self._pump(conn, upstream)

    def on_note(self, text: str) -> None:
        """Called once per distinct note."""

    def released(self) -> None:
        """Called last by ``close``: release what the subclass holds."""

    # ---- lifecycle

    def start(self):
        self._acceptor.start()
        return self

    def close(self) -> None:
        self._closing.set()
        try:
            self.listener.close()
        except OSError:
            pass
        self._acceptor.join(timeout=self.join_timeout_s)
        self._close_open()  # first: a relay blocked on a socket ends when it closes
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=self.join_timeout_s)
        self.released()

    # ---- bookkeeping

    def _note(self, text: str) -> None:
        with self._lock:
            first = text not in self.notes
            if first:
                self.notes.append(text)
        if first:
            self.on_note(text)

    def _track(self, *objs) -> None:
        with self._lock:
            self._open.update(o for o in objs if o is not None)

    def _untrack_close(self, *objs) -> None:
        objs = tuple(o for o in objs if o is not None)
        for o in objs:
            close_quietly(o)
        with self._lock:
            self._open.difference_update(objs)

    def _close_open(self) -> None:
        with self._lock:
            leftovers = list(self._open)
        # sockets first: the clients see the end before the upstreams are torn down
        self._untrack_close(*sorted(leftovers, key=lambda o: not isinstance(o, socket.socket)))

    # ---- accepting

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                readable, _, _ = select.select([self.listener], [], [], POLL_S)
            except (OSError, ValueError):  # the listener was closed under us
                return
            if not readable:
                continue
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            if not self._accepted(conn, peer):
                return

    def _accepted(self, conn: socket.socket, peer) -> bool:
        """Start relaying one accepted connection; False stops the accept loop."""
        self._track(conn)
        t = threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                             name=self.relay_name.format(port=self.port))
        t.start()
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        return True

    # ---- one connection

    def _serve(self, conn: socket.socket, peer) -> None:
        """On the relay thread: open the far end (it may take a while), then move bytes."""
        upstream = None
        try:
            upstream = self.open_upstream(conn, peer)
            if upstream is None:
                return
            self._track(upstream)
            self.relay(conn, upstream)
        finally:
            self._untrack_close(conn, upstream)

    def _pump(self, conn: socket.socket, remote) -> None:
        """Copy both ways until one side closes or the forwarder is being closed."""
        peers = {conn.fileno(): remote, remote.fileno(): conn}
        while not self._closing.is_set():
            try:
                readable, _, _ = select.select([conn, remote], [], [], POLL_S)
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
