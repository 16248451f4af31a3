"""SMTP_CHECK (check_smtp.c): connect, expect the 220 greeting, send
``HELO helo_name`` (default smtpchecker.keepalived.org), expect 250, QUIT.
Any other reply, or no reply within connect_timeout, fails."""

from __future__ import annotations

import asyncio
from typing import Any

from .base import Outcome, open_tcp, timed


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """One SMTP reply (multi-line replies end at ``NNN `` without a dash)."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("connection closed")
        text = line.decode("latin-1").rstrip("\r\n")
        if len(text) < 3 or not text[:3].isdigit():
            return 0, text
        if len(text) == 3 or text[3] != "-":
            return int(text[:3]), text


async def _attempt(chk: Any) -> Outcome:
    sock = await open_tcp(chk)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        code, text = await _reply(reader)
        if code != 220:
            return Outcome(False, f"bad greeting: {text!r}")
        writer.write(f"HELO {chk.conf.options.get('helo_name', 'smtpchecker.keepalived.org')}\r\n".encode())
        await writer.drain()
        code, text = await _reply(reader)
        if code != 250:
            return Outcome(False, f"HELO refused: {text!r}")
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return Outcome(True)
    finally:
        writer.close()


async def probe(chk: Any) -> Outcome:
    return await timed(chk, _attempt(chk))
