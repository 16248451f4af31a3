"""Bad input on lvsd's HTTP listener: 10,000 random and malformed requests
over real sockets never crash lvsd, never change its table, never get a 500;
the request parser alone, under hypothesis, only ever raises HttpError."""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvsd.http import HttpError, _int_arg, parse_head

from .helpers import lvsadm, running_lvsd
from .natlab import free_port

pytestmark = pytest.mark.timeout(300)

REQUESTS = 10_000
PARALLEL = 32
METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT", b"get", b"G\x00T", b""]
PATHS = [b"/", b"/metrics", b"/api/services", b"/api/conns", b"/api/history", b"/api/events", b"/api/status",
         b"/static/app.js", b"/static/../../etc/passwd", b"/favicon.svg", b"*", b"http://x/metrics", b"", b"/%00",
         b"/api/conns?limit=", b"/api/conns?limit=-1", b"/api/conns?limit=99999999999", b"/api/services?limit=0",
         b"/api/conns?limit=1&limit=2", b"/?" + b"a=1&" * 40, b"/\xff\xfe", b"/" + b"x" * 9000]  # fmt: skip
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1 extra", b"", b"http/1.1", b"HTTP/1.\xff"]


def fuzz_request(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # noise
        return rng.randbytes(rng.randrange(0, 600))
    method, path, version = rng.choice(METHODS), rng.choice(PATHS), rng.choice(VERSIONS)
    line = b" ".join(x for x in (method, path, version) if rng.random() > 0.05)
    headers = [b"Host: x"]
    for _ in range(rng.randrange(0, 6)):
        choices = [
            b"Content-Length: " + str(rng.randrange(-5, 10**6)).encode(),
            b"Transfer-Encoding: chunked",
            b"Accept-Encoding: gzip",
            b"X: " + rng.randbytes(rng.randrange(0, 64)),
            b"no colon here",
            b" folded",
            b"Connection: keep-alive",
            b"X-Long: " + b"a" * rng.randrange(0, 10000),
        ]
        headers.append(rng.choice(choices))
    eol = rng.choice([b"\r\n", b"\r\n", b"\n", b"\r"])
    req = line + eol + eol.join(headers) + eol + eol
    if kind == 1:  # a body, declared or not
        req += rng.randbytes(rng.randrange(0, 2000))
    elif kind == 2:  # cut short
        req = req[: rng.randrange(0, len(req) + 1)]
    elif kind == 3:  # a byte flipped
        i = rng.randrange(len(req))
        req = req[:i] + bytes([rng.randrange(256)]) + req[i + 1 :]
    return req


async def send(port: int, payload: bytes) -> bytes:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (TimeoutError, OSError):
        return b"connect failed"
    try:
        writer.write(payload)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(64), 20)
    except (TimeoutError, OSError):
        return b""
    finally:
        writer.close()


async def blast(port: int, seed: int) -> dict[bytes, int]:
    rng = random.Random(seed)
    payloads = [fuzz_request(rng) for _ in range(REQUESTS)]
    statuses: dict[bytes, int] = {}
    sem = asyncio.Semaphore(PARALLEL)

    async def one(p: bytes) -> None:
        async with sem:
            answer = await send(port, p)
        status = answer[:12] if answer.startswith(b"HTTP/1.1 ") else answer[:16] or b"(closed)"
        statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one(p) for p in payloads))
    return statuses


def test_ten_thousand_bad_requests(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "lvsd.log"
    with running_lvsd("--no-dr", "--http", f"127.0.0.1:{port}", "--log-file", str(log)) as name:
        for argv in (["-A", "-t", "127.0.0.1:1", "-s", "rr"], ["-a", "-t", "127.0.0.1:1", "-r", "127.0.0.1:2", "-m"],
                     ["-A", "-f", "3"]):  # fmt: skip
            assert lvsadm(name, *argv).returncode == 0
        before = lvsadm(name, "-S", "-n").stdout
        t0 = time.monotonic()
        statuses = asyncio.run(blast(port, seed=13))
        print(f"{REQUESTS} requests in {time.monotonic() - t0:.1f} s: {sorted(statuses.items())}")
        assert sum(statuses.values()) == REQUESTS
        assert not any(s.startswith(b"HTTP/1.1 500") for s in statuses), statuses
        assert statuses.get(b"HTTP/1.1 405", 0) > 100  # POST, PUT, DELETE ... refused
        assert statuses.get(b"HTTP/1.1 400", 0) > 100
        assert statuses.get(b"HTTP/1.1 200", 0) > 10
        # alive, same table, still answering
        assert lvsadm(name, "-S", "-n").stdout == before
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert b"node_ipvs_backend_weight{" in resp.read()
    text = log.read_text()
    assert "Traceback" not in text and "HTTP request failed" not in text


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda a, b: a + b" " + b + b" HTTP/1.1\r\nHost: x", st.binary(max_size=12), st.binary(max_size=60)))
def test_parse_head_only_raises_http_errors(head: bytes) -> None:
    try:
        method, path, query = parse_head(head)
    except HttpError as exc:
        assert 400 <= exc.code < 600
        return
    assert method in ("GET", "HEAD") and path.startswith("/")
    assert isinstance(query, dict)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_query_numbers_are_ascii_digits(text: str) -> None:
    try:
        value = _int_arg({"limit": [text]}, "limit", 5, 100)
    except HttpError as exc:
        assert exc.code == 400
        return
    assert text.isascii() and text.isdigit() and value == min(int(text), 100)
