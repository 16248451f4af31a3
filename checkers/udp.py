"""UDP_CHECK (check_udp.c): send ``payload`` (empty by default) to the
server.  With ``require_reply`` an answer must come within connect_timeout
(and start with the given bytes, within min/max_reply_length); without it,
silence counts as up.  Either way an ICMP port unreachable (the kernel's
ECONNREFUSED on the connected socket) means down."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from .base import Outcome, describe_error, make_socket, target


async def probe(chk: Any) -> Outcome:
    _fam, host, port = target(chk)
    opts = chk.conf.options
    loop = asyncio.get_running_loop()
    sock = make_socket(chk, socket.SOCK_DGRAM)
    try:
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, opts.get("payload", b""))
        except OSError as exc:
            return Outcome(False, describe_error(exc))
        want = opts.get("require_reply")
        try:
            async with asyncio.timeout(chk.connect_timeout):
                data = await loop.sock_recv(sock, 65536)
        except TimeoutError:
            if want is not None:
                return Outcome(False, f"no reply within {chk.connect_timeout:g} s")
            return Outcome(True)
        except ConnectionRefusedError:
            return Outcome(False, "ICMP port unreachable")
        except OSError as exc:
            return Outcome(False, describe_error(exc))
        if want is not None:
            if not data.startswith(want):
                return Outcome(False, "reply data mismatch")
            lo, hi = opts.get("min_reply_length", 0), opts.get("max_reply_length", 0)
            if len(data) < lo or (hi and len(data) > hi):
                return Outcome(False, f"reply length {len(data)} outside {lo}-{hi or 'any'}")
        return Outcome(True)
    finally:
        sock.close()
