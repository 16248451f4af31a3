"""The control socket of lvsd: JSON lines over an abstract unix socket.

Requests are executed one at a time on the event loop, so the order in which
lvsd acknowledges commands is the order in which they changed the table.
Peers are checked with SO_PEERCRED: root, the daemon's own user, and members
of the configured groups get in; everybody else gets ipvsadm's "Permission
denied (you must be root)".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from lvs.protocol import MAX_MESSAGE, ProtocolError, decode_request, encode, error_reply

from .names import ensure_private_dir, peer_credentials, run_dir, socket_address

log = logging.getLogger("lvsd.control")

Handler = Callable[[Any], Awaitable[dict[str, Any]] | dict[str, Any]]

PERMISSION_DENIED = "Permission denied (you must be root)"


class AlreadyRunning(Exception):
    """Another lvsd holds this control socket's lock."""


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
    """Serves requests with ``handler(request) -> reply``.

    A filesystem socket is guarded by ``NAME.ctl.lock`` (flock, held for the
    daemon's life and handed to its successor on a hitless restart): a
    second lvsd is refused, a dead one's socket file is replaced."""

    def __init__(self, handler: Handler, policy: AccessPolicy, name: str | None = None) -> None:
        self.handler = handler
        self.policy = policy
        self.address = socket_address(name)
        self._server: asyncio.AbstractServer | None = None
        self._lock = asyncio.Lock()
        self.sock: socket.socket | None = None
        self.lock_fd: int | None = None
        self.denied = 0
        #: returns the state-file write a reply must wait for, if any
        self.pending_write: Callable[[], Awaitable[Any] | None] = lambda: None

    def bind(self, inherited_sock: int | None = None, inherited_lock: int | None = None) -> None:
        """Take the lock and bind (or adopt a predecessor's socket and lock)."""
        if inherited_sock is not None:
            self.sock = socket.socket(fileno=inherited_sock)
            self.lock_fd = inherited_lock
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not self.address.startswith("\0"):
            directory = os.path.dirname(self.address)
            if directory == run_dir():
                ensure_private_dir(directory)
            else:
                os.makedirs(directory, exist_ok=True)
            fd = os.open(self.address + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                sock.close()
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    who = f"another lvsd (pid {holder or '?'})"
                    raise AlreadyRunning(f"{who} serves {self.address}") from None
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.lock_fd = fd
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)  # a dead lvsd's socket: we hold the lock
        try:
            sock.bind(self.address)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and self.address.startswith("\0"):
                raise AlreadyRunning(f"the abstract name {self.address[1:]!r} is taken") from None
            raise
        if not self.address.startswith("\0"):
            os.chmod(self.address, 0o666)  # anyone may ask; the policy answers
        sock.listen(64)
        self.sock = sock

    def note_pid(self) -> None:
        """Record this process in the lock file (after a hand-over)."""
        if self.lock_fd is not None:
            os.ftruncate(self.lock_fd, 0)
            os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)

    async def start(self) -> None:
        if self.sock is None:
            self.bind()
        assert self.sock is not None
        self._server = await asyncio.start_unix_server(self._serve, sock=self.sock, limit=MAX_MESSAGE + 1)

    async def stop_accepting(self) -> None:
        """Stop taking connections (the listening socket stays open if a
        successor shares it)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def close(self, unlink: bool = True) -> None:
        await self.stop_accepting()
        if unlink and not self.address.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(self.address)
            with contextlib.suppress(OSError):
                os.unlink(self.address + ".lock")
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            pid, uid, gid = -1, -1, -1
        try:
            if not self.policy.permits(uid, gid):
                self.denied += 1
                log.warning("denied a control connection from pid %d, uid %d (%s): not root, "
                            "lvsd's user or an --allow-group member", pid, uid, _user(uid))  # fmt: skip
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
                    log.warning("bad request from pid %d, uid %d: %s", pid, uid, exc)
                    writer.write(encode(error_reply(0, str(exc))))
                    await writer.drain()
                    continue
                req.peer = (pid, uid)
                async with self._lock:
                    try:
                        reply = self.handler(req)
                        if asyncio.iscoroutine(reply):
                            reply = await reply
                    except Exception as exc:  # a bug must not kill the daemon
                        log.exception("request %s failed", req.op)
                        reply = error_reply(req.id, f"internal error: {type(exc).__name__}: {exc}")
                    durable = self.pending_write()
                if durable is not None:
                    await durable  # the change is on disk before it is acknowledged
                reply.setdefault("id", req.id)
                reply.setdefault("ok", True)
                writer.write(encode(reply))
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            writer.close()


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"
