"""The part the aiohttp-based emulators share: a socket bound on 127.0.0.1, an event loop in a
daemon thread, and a stop that always tears both down."""

from __future__ import annotations

import asyncio
import socket
import threading

LOOPBACK = "127.0.0.1"


class LoopbackAioServer:
    """Subclasses implement ``_astart`` (serve ``self._sock``) and ``_astop`` (cancel their tasks)."""

    thread_label = "emulator"

    _thread: threading.Thread | None = None
    _sock: socket.socket | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    port: int | None = None

    def start(self):
        if self._thread:
            return self
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))  # bound; _astart decides when it listens
        self.port = self._sock.getsockname()[1]
        self._before_start()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{self.thread_label}:{self.port}",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(10)
        return self

    def _before_start(self) -> None:
        pass

    async def _astart(self) -> None:
        raise NotImplementedError

    async def _astop(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if not self._thread:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._thread = None
            if self._sock:
                self._sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
