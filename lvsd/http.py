"""lvsd's HTTP listener (``lvsd --http ADDR:PORT``): metrics and status page.

Read-only and small, in the daemon's own asyncio loop (as HAProxy's stats
page and Prometheus exporter live inside HAProxy):

* ``GET /metrics``: Prometheus text format (:mod:`lvsd.metrics`);
* ``GET /``: the live status page (``lvsd/static/``, no CDN);
* ``GET /api/services`` (``lvsadm --json services``; ``?limit=N``),
  ``/api/conns`` (``--json conns``, at most ``?limit=N`` entries, default
  1000), ``/api/history`` (the sparklines' samples), ``/api/events``,
  ``/api/status`` (``lvsadm --status``).

Any method but GET and HEAD gets 405.  One request per connection
(``Connection: close``); the request head may be at most
:data:`MAX_REQUEST` bytes (431 beyond), must arrive within
:data:`READ_TIMEOUT` seconds (408), and at most :data:`MAX_CONNECTIONS`
connections are served at once (503 to the others).  Every answer is built
in steps with the loop let run between them, so the data plane goes on
while a big table is scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lvs import status as page_data

from . import metrics

log = logging.getLogger("lvsd.http")

MAX_REQUEST = 8192  # bytes of request line and headers
READ_TIMEOUT = 10.0  # seconds for the whole request head
WRITE_TIMEOUT = 60.0  # seconds a client may take to read an answer
MAX_CONNECTIONS = 64
DEFAULT_CONNS_LIMIT = 1000
MAX_CONNS_LIMIT = 100_000

REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

SECURITY_HEADERS = (
    "X-Content-Type-Options: nosniff\r\n"
    "Content-Security-Policy: default-src 'self'; img-src 'self' data:; frame-ancestors 'none'\r\n"
    "Referrer-Policy: no-referrer\r\n"
)
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class HttpError(Exception):
    def __init__(self, code: int, text: str = "") -> None:
        super().__init__(text or REASONS.get(code, ""))
        self.code = code


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[V6]:PORT`` or ``:PORT`` (loopback) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http wants ADDR:PORT, not {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


def parse_head(head: bytes) -> tuple[str, str, dict[str, list[str]]]:
    """(method, path, query) of a request head, or :class:`HttpError`."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not version.startswith(b"HTTP/"):
        raise HttpError(400, "malformed request line")
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise HttpError(505)
    for line in lines[1:]:
        if line and (b":" not in line or line[:1] in b" \t" or not set(line.split(b":", 1)[0]) <= _TOKEN):
            raise HttpError(400, "malformed header")
    if method not in (b"GET", b"HEAD"):
        raise HttpError(405)
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request target is not ASCII") from None
    if not text.startswith("/") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise HttpError(400, "bad request target")
    try:
        split = urlsplit(text)
        query = parse_qs(split.query, max_num_fields=20)
    except ValueError:
        raise HttpError(400, "bad query") from None
    return method.decode("ascii"), split.path, query


def _int_arg(query: dict[str, list[str]], name: str, default: int, top: int) -> int:
    values = query.get(name)
    if not values:
        return default
    text = values[-1]
    if not (text.isascii() and text.isdigit()) or len(text) > 9:  # "²".isdigit() too
        raise HttpError(400, f"{name} must be a whole number")
    return min(int(text), top)


class HttpServer:
    """The listener; ``daemon`` gives the table (``ipvs``, ``now()``,
    ``worker_pool()``, ``status()``, ``history``, ``events``)."""

    def __init__(
        self,
        daemon: Any,
        host: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_request: int = MAX_REQUEST,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.daemon = daemon
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.max_request = max_request
        self.read_timeout = read_timeout
        self.server: asyncio.Server | None = None
        self.active: set[asyncio.Task[Any]] = set()
        self.answers: Counter[int] = Counter()
        self._static: dict[str, bytes] = {}
        self.routes: dict[str, Callable[[dict[str, list[str]]], Any]] = {
            "/api/services": self.api_services,
            "/api/conns": self.api_conns,
            "/api/history": self.api_history,
            "/api/events": self.api_events,
            "/api/status": self.api_status,
        }

    async def start(self) -> None:
        for name, _ctype in STATIC.values():
            self._static[name] = resources.files(__package__).joinpath("static", name).read_bytes()
        self.server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=self.max_request, backlog=128, reuse_address=True
        )
        sock = self.server.sockets[0].getsockname()
        self.port = sock[1]
        log.info("HTTP status page and /metrics on http://%s/", self.url_host())

    def url_host(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        for task in list(self.active):
            task.cancel()
        self.server = None

    # -- connections --------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.active) >= self.max_connections:
            await self._finish(writer, self._simple(503, "too many connections\n", head=False))
            return
        self.active.add(task)
        try:
            await self._serve(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not take lvsd down: log it, answer 500
            log.exception("HTTP request failed")
            with contextlib.suppress(Exception):
                writer.write(self._simple(500, "internal error\n", head=False))
        finally:
            self.active.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _finish(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        with contextlib.suppress(Exception):
            writer.write(data)
            await asyncio.wait_for(writer.drain(), 1.0)
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
        except asyncio.LimitOverrunError:
            writer.write(self._simple(431, "request head too large\n", head=False))
            return
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                writer.write(self._simple(400, "incomplete request\n", head=False))
            return
        except TimeoutError:
            writer.write(self._simple(408, "request timeout\n", head=False))
            return
        try:
            method, path, query = parse_head(head[:-4])
        except HttpError as exc:
            writer.write(self._simple(exc.code, f"{exc}\n", head=False))
            return
        is_head = method == "HEAD"
        try:
            if path == "/metrics":
                await self._metrics(writer, is_head)
                return
            if path in STATIC:
                name, ctype = STATIC[path]
                writer.write(self._response(200, ctype, self._static[name], is_head, cache="no-cache"))
                return
            route = self.routes.get(path)
            if route is None:
                raise HttpError(404, "not found")
            body = await route(query)
            writer.write(self._response(200, "application/json", body, is_head))
        except HttpError as exc:
            writer.write(self._simple(exc.code, f"{exc}\n", head=is_head))
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    def _response(
        self, code: int, ctype: str, body: bytes, head_only: bool, *, cache: str = "no-store", extra: str = ""
    ) -> bytes:
        self.answers[code] += 1
        head = (
            f"HTTP/1.1 {code} {REASONS.get(code, '')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: {cache}\r\n{SECURITY_HEADERS}{extra}Connection: close\r\n\r\n"
        ).encode("ascii")
        return head if head_only else head + body

    def _simple(self, code: int, text: str, *, head: bool) -> bytes:
        extra = "Allow: GET, HEAD\r\n" if code == 405 else ""
        return self._response(code, "text/plain; charset=utf-8", text.encode(), head, extra=extra)

    async def _metrics(self, writer: asyncio.StreamWriter, head_only: bool) -> None:
        """Streamed: the body ends when the connection closes (no length is
        known before the last piece is rendered)."""
        self.answers[200] += 1
        writer.write(
            (
                f"HTTP/1.1 200 OK\r\nContent-Type: {metrics.CONTENT_TYPE}\r\n"
                f"Cache-Control: no-store\r\n{SECURITY_HEADERS}Connection: close\r\n\r\n"
            ).encode("ascii")
        )
        if head_only:
            return
        async with contextlib.aclosing(metrics.scrape(self.daemon)) as pieces:
            async for piece in pieces:
                writer.write(piece.encode("utf-8"))
                if writer.transport.get_write_buffer_size() > 1 << 20:
                    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    # -- the JSON API -------------------------------------------------------------
    async def api_services(self, query: dict[str, list[str]]) -> bytes:
        limit = _int_arg(query, "limit", 1 << 30, 1 << 30)
        pool = self.daemon.worker_pool()
        if pool is not None:
            await pool.query(False)
        whole = await metrics._drive(
            page_data.services_steps(self.daemon.ipvs, self.daemon.now(), limit=limit)
        )
        health = getattr(self.daemon, "health", None)
        if health is not None:
            health.annotate(whole)
        rows = whole.pop("services")
        parts = [json.dumps(whole)[:-1], ', "services": [']
        for start in range(0, len(rows), 200):
            if start:
                parts.append(",")
                await asyncio.sleep(0)
            parts.append(",".join(json.dumps(r) for r in rows[start : start + 200]))
        parts.append("]}")
        return "".join(parts).encode()

    async def api_conns(self, query: dict[str, list[str]]) -> bytes:
        limit = _int_arg(query, "limit", DEFAULT_CONNS_LIMIT, MAX_CONNS_LIMIT)
        pool = self.daemon.worker_pool()
        remote = await pool.query(True) if pool is not None else []
        view = page_data.conns_view(self.daemon.ipvs, self.daemon.now(), limit, remote)
        return json.dumps(view).encode()

    async def api_history(self, query: dict[str, list[str]]) -> bytes:
        return json.dumps(self.daemon.observer.history.view(self.daemon.now())).encode()

    async def api_events(self, query: dict[str, list[str]]) -> bytes:
        return json.dumps(self.daemon.observer.events.view()).encode()

    async def api_status(self, query: dict[str, list[str]]) -> bytes:
        from lvs import __version__

        pool = self.daemon.worker_pool()
        if pool is not None:
            await pool.query(False)
        data = dict(self.daemon.status())
        data["version"] = __version__
        data["time"] = time.time()
        return json.dumps(data).encode()
