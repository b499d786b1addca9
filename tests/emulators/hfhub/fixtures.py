"""The loopback-only socket guard and the ``hf_hub`` pytest fixture (HF client pointed at a fresh emulator)."""

from __future__ import annotations

import ipaddress
import socket
from contextlib import contextmanager
from typing import Any

try:  # pytest is optional for importing the emulator itself.
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

from .client import _HF_ENV_DROP, _patch_hf_constants
from .server import HubEmulator


# --------------------------------------------------------------------------------------------------
# Loopback guard, fixture
# --------------------------------------------------------------------------------------------------

def _is_loopback(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@contextmanager
def loopback_only():
    """Refuse, in this process, every socket connect and DNS lookup that is not loopback (or AF_UNIX)."""
    orig_connect, orig_connect_ex, orig_gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise ConnectionRefusedError(f"hfhub emulator guard: refusing non-loopback connect to {address!r}")

    def connect(self, address):
        check(self, address)
        return orig_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return orig_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and not _is_loopback(h):
            raise socket.gaierror(socket.EAI_NONAME, f"hfhub emulator guard: refusing to resolve {h!r}")
        return orig_gai(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = orig_connect, orig_connect_ex, orig_gai


if pytest is not None:

    @pytest.fixture
    def hf_hub(tmp_path_factory, monkeypatch):
        """A started :class:`HubEmulator`; huggingface_hub (env and already-imported constants) points at it,
        ``HF_HOME`` is a fresh temp dir, no ambient token is picked up, and any non-loopback socket or DNS
        lookup in this process fails for the duration of the test."""
        hf_home = str(tmp_path_factory.mktemp("hf_home"))
        for name in _HF_ENV_DROP:
            monkeypatch.delenv(name, raising=False)
        with HubEmulator() as hub, loopback_only():
            for k, v in hub.env(hf_home).items():
                monkeypatch.setenv(k, v)
            _patch_hf_constants(monkeypatch, hub.url, hf_home)
            try:
                yield hub
            finally:
                try:
                    from huggingface_hub.utils import _http
                    _http.close_session()
                except ImportError:  # pragma: no cover
                    pass
else:  # pragma: no cover
    hf_hub = None
