"""What every probe shares: the outcome, and sockets set up as keepalived's
conn_opts say (connect_ip/connect_port, bindto/bind_port, bind_if, fwmark as
SO_MARK)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from dataclasses import dataclass
from typing import Any

from lvs.addr import format_ip, parse_ip
from lvs.constants import AF_INET6

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


@dataclass
class Outcome:
    """One attempt: passed or not, why not, and a MISC_CHECK's exit status."""

    ok: bool
    reason: str = ""
    exit_code: int | None = None


def family(af: int) -> int:
    return socket.AF_INET6 if af == AF_INET6 else socket.AF_INET


def target(chk: Any) -> tuple[int, str, int]:
    """(socket family, address text, port) the checker connects to."""
    return family(chk.af), format_ip(chk.af, chk.host), chk.port


def make_socket(chk: Any, kind: int, proto: int = 0) -> socket.socket:
    """A non-blocking socket with the checker's bindto/bind_port/bind_if/fwmark."""
    fam, _, _ = target(chk)
    sock = socket.socket(fam, kind, proto)
    try:
        sock.setblocking(False)
        conf = chk.conf
        if conf.fwmark:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, conf.fwmark)
        if conf.bind_if:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, conf.bind_if.encode())
        if conf.bindto or conf.bind_port:
            if conf.bind_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            addr = conf.bindto or ("::" if fam == socket.AF_INET6 else "0.0.0.0")
            parse_ip(addr)
            sock.bind((addr, conf.bind_port or 0))
    except BaseException:
        sock.close()
        raise
    return sock


def describe_error(exc: BaseException) -> str:
    """Short words for a socket failure, as an operator reads them."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{os.strerror(exc.errno)}" if exc.errno != errno.EINPROGRESS else "in progress"
    return str(exc) or type(exc).__name__


async def open_tcp(chk: Any) -> socket.socket:
    """Connect a TCP socket to the checker's target (within the caller's timeout)."""
    fam, host, port = target(chk)
    sock = make_socket(chk, socket.SOCK_STREAM)
    try:
        addr: tuple[Any, ...] = (host, port) if fam == socket.AF_INET else (host, port, 0, 0)
        await asyncio.get_running_loop().sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def timed(chk: Any, coro: Any) -> Outcome:
    """Run one attempt within connect_timeout; socket errors become a failed
    Outcome with the reason."""
    try:
        async with asyncio.timeout(chk.connect_timeout):  # no extra task, unlike wait_for
            return await coro
    except TimeoutError:
        return Outcome(False, f"timeout after {chk.connect_timeout:g} s")
    except OSError as exc:
        return Outcome(False, describe_error(exc))
