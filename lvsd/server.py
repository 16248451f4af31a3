"""The control socket of lvsd: JSON lines over an abstract unix socket.

Requests are executed one at a time on the event loop, so the order in which
lvsd acknowledges commands is the order in which they changed the table.
Peers are checked with SO_PEERCRED: root, the daemon's own user, and members
of the configured groups get in; everybody else gets ipvsadm's "Permission
denied (you must be root)".
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from lvs.protocol import MAX_MESSAGE, ProtocolError, decode_request, encode, error_reply

from .names import socket_address

log = logging.getLogger("lvsd.control")

Handler = Callable[[Any], Awaitable[dict[str, Any]] | dict[str, Any]]

PERMISSION_DENIED = "Permission denied (you must be root)"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


class AccessPolicy:
    """Who may talk to lvsd."""

    def __init__(self, groups: list[str] | None = None) -> None:
        self.gids: set[int] = set()
        for name in groups or []:
            try:
                self.gids.add(grp.getgrnam(name).gr_gid)
            except KeyError:
                log.warning("access group %r does not exist", name)
        self.owner = os.geteuid()

    def permits(self, uid: int, gid: int) -> bool:
        if uid == 0 or uid == self.owner:
            return True
        if gid in self.gids:
            return True
        if self.gids:
            try:
                user = pwd.getpwuid(uid).pw_name
                return bool(self.gids.intersection(os.getgrouplist(user, gid)))
            except KeyError:
                return False
        return False


class ControlServer:
    """Serves requests with ``handler(request) -> reply``."""

    def __init__(self, handler: Handler, policy: AccessPolicy, name: str | None = None) -> None:
        self.handler = handler
        self.policy = policy
        self.address = socket_address(name)
        self._server: asyncio.AbstractServer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not self.address.startswith("\0") and os.path.exists(self.address):
            os.unlink(self.address)
        sock.bind(self.address)
        sock.listen(64)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_MESSAGE + 1)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            _, uid, gid = peer_credentials(sock)
        except OSError:
            uid, gid = -1, -1
        try:
            if not self.policy.permits(uid, gid):
                writer.write(encode({"id": 0, "ok": False, "error": PERMISSION_DENIED, "denied": True}))
                await writer.drain()
                return
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(encode(error_reply(0, "message too large")))
                    await writer.drain()
                    return
                if not line:
                    return
                try:
                    req = decode_request(line)
                except ProtocolError as exc:
                    writer.write(encode(error_reply(0, str(exc))))
                    await writer.drain()
                    continue
                async with self._lock:
                    try:
                        reply = self.handler(req)
                        if asyncio.iscoroutine(reply):
                            reply = await reply
                    except Exception as exc:  # a bug must not kill the daemon
                        log.exception("request %s failed", req.op)
                        reply = error_reply(req.id, f"internal error: {type(exc).__name__}: {exc}")
                reply.setdefault("id", req.id)
                reply.setdefault("ok", True)
                writer.write(encode(reply))
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            writer.close()
