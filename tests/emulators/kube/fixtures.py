"""The ``kube_emulator`` fixture (registered in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from .server import KubeEmulator


@pytest.fixture
def kube_emulator(tmp_path):
    """A started :class:`KubeEmulator`; its kubeconfig (context ``test``) is at ``emu.kubeconfig_path``."""
    emu = KubeEmulator()
    emu.start()
    try:
        emu.write_kubeconfig(tmp_path / "kubeconfig", context="test")
        yield emu
    finally:
        emu.stop()
