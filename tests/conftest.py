"""Fixtures shared by several test files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from .test_nat_e2e import Backends

# every lvsd a test starts (autostarted ones too) keeps its state file and
# default log in this session's own directory, never in /var/lib/pylvs
if "LVSD_STATE_DIR" not in os.environ:
    os.environ["LVSD_STATE_DIR"] = tempfile.mkdtemp(prefix=f"pylvs-state-{os.getpid()}-")


@pytest.fixture
def backends() -> Iterator[Backends]:
    """Small TCP/UDP servers on their own event loop thread, closed after the test."""
    b = Backends()
    try:
        yield b
    finally:
        b.close()
