"""TCP_CHECK (check_tcp.c): the server is up when a TCP connection to it
completes within connect_timeout; the connection is closed at once."""

from __future__ import annotations

from typing import Any

from .base import Outcome, open_tcp, timed


async def _attempt(chk: Any) -> Outcome:
    sock = await open_tcp(chk)
    sock.close()
    return Outcome(True)


async def probe(chk: Any) -> Outcome:
    return await timed(chk, _attempt(chk))
