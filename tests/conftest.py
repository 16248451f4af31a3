"""Fixtures shared by several test files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .natlab import Backends


@pytest.fixture
def backends() -> Iterator[Backends]:
    """Small TCP/UDP servers on their own event loop thread, closed after the test."""
    b = Backends()
    try:
        yield b
    finally:
        b.close()
