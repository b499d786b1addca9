"""Port-forward over WebSocket (``v4.channel.k8s.io``), as the kubelet serves it: each requested port gets a
data and an error channel; data is relayed to a loopback TCP target set with
:meth:`PortForwards.set_target`. No target, or a refused connection: the error channel carries the
kubelet's message and the port's data channel closes."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web

from .errors import bad_request

LOOPBACK = "127.0.0.1"


class PortForwards:
    def __init__(self):
        self._targets: list[tuple] = []  # (pod name or prefix, port, (host, port))

    def set_target(self, target: str, port: int, addr: tuple[str, int]) -> None:
        if not (isinstance(addr, tuple) and len(addr) == 2 and addr[0] == LOOPBACK and isinstance(addr[1], int)):
            raise ValueError(f"port-forward targets must be (\"{LOOPBACK}\", port), got {addr!r}")
        self._targets.append((target, int(port), addr))

    def target(self, pod_name: str, port: int) -> tuple | None:
        """Where ``port`` of ``pod_name`` leads: an exact name wins, else the longest matching prefix."""
        best = None
        for target, p, addr in self._targets:
            if p != port:
                continue
            if target == pod_name:
                return addr
            if pod_name.startswith(target) and (best is None or len(target) >= len(best[0])):
                best = (target, addr)
        return best[1] if best else None

    async def relay(self, request: web.Request, rec, pod: dict, ports: list[int],
                    targets: dict) -> web.StreamResponse:
        """Upgrade to the WebSocket and relay each of ``ports`` to its address in ``targets`` (or refuse it)."""
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",), max_msg_size=0, autoping=True)
        if not ws.can_prepare(request).ok:
            rec.status = 400
            exc = bad_request("Upgrade request required")
            return web.json_response(exc.status(), status=400)
        await ws.prepare(request)
        rec.status = 101
        writers: dict[int, asyncio.StreamWriter] = {}
        pumps: list[asyncio.Task] = []
        open_count = 0

        async def pump(idx: int, reader: asyncio.StreamReader):
            nonlocal open_count
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    await ws.send_bytes(bytes([2 * idx]) + data)
            except (ConnectionError, RuntimeError):
                pass
            finally:
                open_count -= 1
                if open_count <= 0 and not ws.closed:
                    await asyncio.sleep(0.05)  # let the client drain the last data frame first
                    await ws.close()

        for i, port in enumerate(ports):
            head = bytes([port & 0xFF, port >> 8])
            await ws.send_bytes(bytes([2 * i]) + head)
            await ws.send_bytes(bytes([2 * i + 1]) + head)
        for i, port in enumerate(ports):
            addr = targets[port]
            error = None
            if addr is None:
                error = "connect: connection refused"
            else:
                try:
                    reader, writer = await asyncio.open_connection(addr[0], addr[1])
                    writers[i] = writer
                    open_count += 1
                    pumps.append(asyncio.get_running_loop().create_task(pump(i, reader)))
                except OSError as exc:
                    error = f"connect: {exc.strerror or exc}".lower()
            if error:
                await ws.send_bytes(bytes([2 * i + 1]) + (
                    f"error forwarding port {port} to pod {pod['metadata']['uid']}, uid : failed to execute "
                    f"portforward in network namespace \"/var/run/netns/cni-emulator\": failed to connect to "
                    f"localhost:{port} inside namespace \"{pod['metadata']['uid']}\", IPv4: dial tcp4 "
                    f"127.0.0.1:{port}: {error} ").encode())
        if not writers:
            await asyncio.sleep(0.05)
            await ws.close()
            return ws
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data:
                    ch, data = msg.data[0], msg.data[1:]
                    w = writers.get(ch // 2)
                    if ch % 2 == 0 and w is not None and data:
                        w.write(data)
                        await w.drain()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        except (ConnectionError, RuntimeError):
            pass
        finally:
            for w in writers.values():
                w.close()
            for t in pumps:
                t.cancel()
        return ws
