"""The ``gcp_emulator`` fixture (registered in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from .server import GcpEmulator


@pytest.fixture
def gcp_emulator():
    """A started :class:`GcpEmulator` (project ``test-project``, instant operations)."""
    emu = GcpEmulator(op_polls_before_done=0)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()
