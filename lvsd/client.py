"""lvsadm's side of the control socket, with lvsd auto-start.

When no daemon answers in this network namespace, lvsadm starts one in the
background, as the kernel loads ip_vs on first use.  ``--no-autostart`` or
``LVSADM_NO_AUTOSTART=1`` turns that off.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from lvs.protocol import encode

from .names import Impersonation, candidate_addresses, verify_peer

START_TIMEOUT = 10.0
__all__ = ["Client", "DaemonUnavailable", "Impersonation", "PermissionDenied"]


class DaemonUnavailable(Exception):
    """No lvsd answers (and none could be started)."""


class PermissionDenied(Exception):
    """lvsd refused this user."""


def _connect(address: str) -> socket.socket:
    """Connect and check who listens (SO_PEERCRED) before anything is sent."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
        verify_peer(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def _try(addresses: list[str]) -> socket.socket | None:
    for address in addresses:
        try:
            return _connect(address)
        except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
            continue
    return None


def connect(autostart: bool = True, name: str | None = None) -> tuple[socket.socket, bool]:
    """A connected control socket, and whether lvsadm had to start lvsd for it.
    Raises Impersonation when someone else's process answers."""
    addresses = candidate_addresses(name)
    sock = _try(addresses)
    if sock is not None:
        return sock, False
    if not autostart:
        raise DaemonUnavailable("no lvsd is running in this network namespace")
    start_daemon(name)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        sock = _try(addresses[-1:])
        if sock is not None:
            return sock, True
        if time.monotonic() > deadline:
            raise DaemonUnavailable("lvsd did not start")
        time.sleep(0.02)


def start_daemon(name: str | None = None) -> None:
    """Start ``lvsd`` in the background in this namespace (it restores the
    namespace's state file and logs to syslog or its log file)."""
    cmd = [sys.executable, "-m", "lvsd.main", "--started-by", "lvsadm"]
    if name:
        cmd += ["--socket", name]
    extra = os.environ.get("LVSD_ARGS")
    if extra:
        cmd += extra.split()
    subprocess.run(
        cmd, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


class Client:
    """One connection to lvsd."""

    def __init__(self, autostart: bool = True, name: str | None = None) -> None:
        self.sock, self.started = connect(autostart, name)
        self.file = self.sock.makefile("rb")
        self._id = 0

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self._id += 1
        # lvsd may have refused us and hung up: its reason is still to be read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(encode({"id": self._id, "op": op, **args}))
        try:
            line = self.file.readline()
        except ConnectionResetError:
            line = b""
        if not line:
            raise DaemonUnavailable("lvsd closed the connection")
        reply = json.loads(line)
        if reply.get("denied"):
            raise PermissionDenied(reply.get("error", "Permission denied (you must be root)"))
        return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
