"""Fixtures shared by several test files."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from .healthlab import stop
from .natlab import Backends


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
