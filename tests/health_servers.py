"""Servers that fail as real servers fail, for the health-check tests.

Run as a process so a test can kill it (its port then answers RST, or ICMP
port unreachable for UDP):

    python tests/health_servers.py http HOST PORT [--status N] [--body TEXT] [--delay S]
    python tests/health_servers.py https HOST PORT --cert C --key K
    python tests/health_servers.py udp HOST PORT          # echoes datagrams
    python tests/health_servers.py dns HOST PORT [--rcode N]
    python tests/health_servers.py smtp HOST PORT [--greeting TEXT]

Prints ``ready`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import struct
import sys


async def http(args: argparse.Namespace, tls: ssl.SSLContext | None = None) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        body = args.body.encode()
        tls_obj = w.get_extra_info("ssl_object")
        if tls_obj is not None:  # say which TLS server name (SNI) the client sent
            body += b" sni=%s" % str(getattr(tls_obj, "sni", None)).encode()
        try:
            head = await r.readuntil(b"\r\n\r\n")
            status = args.status
            if args.paths:  # only these paths exist, as on a file server
                path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
                if path not in args.paths.split(","):
                    status, body = 404, b"not found"
            if args.delay:
                await asyncio.sleep(args.delay)
            w.write(b"HTTP/1.0 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
            await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(handle, args.host, args.port, ssl=tls, reuse_address=True, backlog=1024)
    print("ready", flush=True)
    async with srv:
        await srv.serve_forever()


class Udp(asyncio.DatagramProtocol):
    def __init__(self, answer) -> None:  # type: ignore[no-untyped-def]
        self.answer = answer

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        reply = self.answer(data)
        if reply is not None:
            self.transport.sendto(reply, addr)


async def udp(args: argparse.Namespace, answer) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Udp(answer), local_addr=(args.host, args.port))
    print("ready", flush=True)
    await asyncio.Event().wait()


def dns_answer(rcode: int):  # type: ignore[no-untyped-def]
    def answer(q: bytes) -> bytes | None:
        if len(q) < 12:
            return None
        ident, flags = struct.unpack("!HH", q[:4])
        # echo the question, no answer records; QR set, RD copied, RA, the rcode asked for
        out_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode
        return struct.pack("!HHHHHH", ident, out_flags, 1, 0, 0, 0) + q[12:]

    return answer


async def smtp(args: argparse.Namespace) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(f"{args.greeting}\r\n".encode())
            while True:
                line = await r.readline()
                if not line:
                    break
                cmd = line.decode().strip().upper()
                if cmd.startswith("HELO") or cmd.startswith("EHLO"):
                    w.write(b"250 hello\r\n")
                elif cmd == "QUIT":
                    w.write(b"221 bye\r\n")
                    await w.drain()
                    break
                else:
                    w.write(b"500 what\r\n")
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(handle, args.host, args.port, reuse_address=True)
    print("ready", flush=True)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["http", "https", "udp", "dns", "smtp"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--status", type=int, default=200)
    ap.add_argument("--body", default="hello")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--paths", default="", help="comma-separated paths that exist (others: 404)")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--rcode", type=int, default=0)
    ap.add_argument("--greeting", default="220 test ESMTP")
    args = ap.parse_args()
    if args.kind == "http":
        coro = http(args)
    elif args.kind == "https":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)

        def remember_sni(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            obj.sni = name  # type: ignore[attr-defined]

        ctx.sni_callback = remember_sni  # type: ignore[assignment]
        coro = http(args, ctx)
    elif args.kind == "udp":
        coro = udp(args, lambda data: data)
    elif args.kind == "dns":
        coro = udp(args, dns_answer(args.rcode))
    else:
        coro = smtp(args)
    try:
        asyncio.run(coro)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
