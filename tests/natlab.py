"""Tools of the NAT end-to-end tests: lvsadm through the control socket
(:class:`Adm`), small servers on their own event loop thread
(:class:`Backends`), clients and bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from lvsd.client import Client


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(af, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_busy(host: str, port: int, kind: int = socket.SOCK_STREAM) -> bool:
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(af, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Adm:
    """lvsadm through the daemon's control socket, in-process (fast)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *argv: str, ok: bool = True) -> str:
        with Client(autostart=False, name=self.name) as c:
            reply = c.call("ipvsadm", argv=list(argv), stdin="")
        if ok:
            assert reply.get("rc") == 0, (argv, reply)
        return reply.get("stdout", "") + reply.get("stderr", "")

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        with Client(autostart=False, name=self.name) as c:
            return c.call(op, **args)

    def status(self) -> dict[str, Any]:
        return self.call("status")["data"]

    def counts(self, vip: str) -> dict[str, tuple[int, int]]:
        """{real server: (ActiveConn, InActConn)} from ``-L -n``."""
        out = self("-L", "-n")
        res: dict[str, tuple[int, int]] = {}
        for line in out.splitlines():
            m = re.match(r"\s+->\s+(\S+)\s+\w+\s+\d+\s+(\d+)\s+(\d+)", line)
            if m:
                res[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        return res

    def conns(self) -> list[list[str]]:
        out = self("-L", "-c", "-n")
        return [line.split() for line in out.splitlines()[2:] if line.strip()]


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)


class Backends:
    """Small servers on their own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[Any] = []
        self.held: list[asyncio.StreamWriter] = []
        self.events: list[tuple[str, Any]] = []

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    def close(self) -> None:
        async def _close() -> None:
            for w in self.held:
                w.transport.abort()
            for s in self.servers:
                s.close()

        with contextlib.suppress(Exception):
            self.run(_close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def tcp(self, handler: Callable[..., Any], host: str = "127.0.0.1", port: int = 0) -> int:
        async def start() -> int:
            srv = await asyncio.start_server(handler, host, port, backlog=4096, reuse_address=True)
            self.servers.append(srv)
            return srv.sockets[0].getsockname()[1]

        return self.run(start())

    def http(self, port: int, host: str = "127.0.0.1") -> int:
        """Answers every request with ``Hello, PORT!`` and closes."""

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                w.close()
                return
            me = w.get_extra_info("sockname")[1]
            body = f"Hello, {me}!".encode()
            w.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await w.drain()
            w.close()

        return self.tcp(handle, host, port)

    def greeter(self, host: str = "127.0.0.1", hold: bool = True) -> int:
        """Sends its port at once, then echoes; on EOF echoes the rest and closes."""

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            me = w.get_extra_info("sockname")[1]
            w.write(b"%d\n" % me)
            self.held.append(w)
            try:
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    w.write(data)
                    await w.drain()
                self.events.append(("eof", me))
                await asyncio.sleep(0.3)
                w.close()
            except ConnectionError as exc:
                self.events.append(("reset", type(exc).__name__))

        return self.tcp(handle, host)

    def udp_echo(self, host: str = "127.0.0.1") -> int:
        """Replies ``PORT:`` + the datagram."""

        class UdpEcho(asyncio.DatagramProtocol):
            def connection_made(self, t: Any) -> None:
                self.t = t
                self.me = t.get_extra_info("sockname")[1]

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.t.sendto(b"%d:" % self.me + data, addr)

        async def start() -> int:
            t, _ = await self.loop.create_datagram_endpoint(UdpEcho, local_addr=(host, 0))
            self.servers.append(t)
            return t.get_extra_info("sockname")[1]

        return self.run(start())


def tcp_get(
    host: str, port: int, payload: bytes = b"", timeout: float = 5.0, src: str | None = None
) -> bytes:
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(af, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        s.connect((host, port))
        if payload:
            s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            d = s.recv(65536)
            if not d:
                break
            chunks.append(d)
        return b"".join(chunks)


def greet(host: str, port: int, src: str | None = None, timeout: float = 5.0) -> tuple[socket.socket, int]:
    """Connect through the VIP to a greeter; return the socket and the backend port."""
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(af, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if src:
        s.bind((src, 0))
    s.connect((host, port))
    line = b""
    while not line.endswith(b"\n"):
        d = s.recv(1)
        if not d:
            raise ConnectionError("closed before the greeting")
        line += d
    return s, int(line)


def udp_ask(host: str, port: int, data: bytes, sock: socket.socket | None = None) -> bytes:
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = sock or socket.socket(af, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(data, (host, port))
        return s.recvfrom(65536)[0]
    finally:
        if sock is None:
            s.close()
