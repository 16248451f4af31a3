"""HTTP_GET (check_http.c): for every url block, GET the path and check the
answer: the status code within ``status_code`` (default 200-299, ranges
allowed), the MD5 ``digest`` of the body, the ``regex`` found in the body
(or not, with ``regex_no_match``).  All urls must pass.  The request is
HTTP/1.0 with ``Host:`` set to the virtualhost (url, checker, real server
or virtual server level) or the address, as keepalived sends it; the whole
attempt must finish within connect_timeout."""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from typing import Any

from .base import Outcome, open_tcp, target, timed

#: keepalived reads at most this much of a body it does not hash
MAX_BODY = 1 << 20


def build_request(chk: Any, url: dict[str, Any]) -> bytes:
    _, host, port = target(chk)
    if ":" in host:
        host = f"[{host}]"
    vhost = url.get("virtualhost") or chk.conf.options.get("virtualhost")
    host_header = vhost or f"{host}:{port}"
    proto = chk.conf.options.get("http_protocol", "1.0")
    version = "HTTP/1.1" if proto.startswith("1.1") else "HTTP/1.0"
    lines = [f"GET {url['path']} {version}", "User-Agent: KeepAliveClient", f"Host: {host_header}"]
    if version == "HTTP/1.1" or proto == "1.0C":
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_answer(url: dict[str, Any], raw: bytes) -> Outcome:
    """Judge one answer against its url block."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    status_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return Outcome(False, "no HTTP status line in the answer")
    code = int(parts[1])
    if not any(lo <= code <= hi for lo, hi in url["status_code"]):
        return Outcome(False, f"HTTP status code error to {url['path']}: {code}")
    digest = url.get("digest")
    if digest:
        got = hashlib.md5(body, usedforsecurity=False).hexdigest()
        if got != digest:
            return Outcome(False, f"MD5 digest error to {url['path']}: {got} != {digest}")
    pattern = url.get("regex")
    if pattern:
        found = re.search(pattern, body.decode("latin-1")) is not None
        if found == bool(url.get("regex_no_match")):
            return Outcome(False, f"regex {'matched' if found else 'did not match'} on {url['path']}")
    return Outcome(True)


async def fetch(
    chk: Any, url: dict[str, Any], tls: ssl.SSLContext | None = None, sni: str | None = None
) -> bytes:
    sock = await open_tcp(chk)
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=tls, server_hostname=(sni or "") if tls else None
    )
    try:
        writer.write(build_request(chk, url))
        await writer.drain()
        chunks = []
        size = 0
        while size <= MAX_BODY:
            chunk = await reader.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


async def _attempt(chk: Any, tls: ssl.SSLContext | None = None, sni: str | None = None) -> Outcome:
    for url in chk.conf.options["urls"]:
        raw = await fetch(chk, url, tls, sni)
        result = check_answer(url, raw)
        if not result.ok:
            return result
    return Outcome(True)


async def probe(chk: Any) -> Outcome:
    return await timed(chk, _attempt(chk))
