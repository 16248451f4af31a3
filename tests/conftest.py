"""Fixtures shared by several test files."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from .healthlab import stop
from .natlab import Backends

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


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts (:func:`tests.healthlab.start_server`), killed after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        stop(p)
