"""Small programs the namespace tests run inside their namespaces
(``ip netns exec NS python -m tests.nsprog ...``).  Every one is bounded in
time and exits by itself.

    tcp-server PORT NAME [--lifetime S]       reply NAME + b"|" + all data received
    udp-server PORT NAME [--lifetime S]       reply NAME + b"|" + datagram
    tcp-clients HOST PORT COUNT [--size N]    one connection each; JSON result
    udp-clients HOST PORT COUNT [--same]      one datagram each (new source port
                                              each, or one socket with --same)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp_server(port: int, name: str, lifetime: float) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen(512)
    srv.settimeout(0.5)
    deadline = time.monotonic() + lifetime
    print("ready", flush=True)

    def handle(c: socket.socket) -> None:
        c.settimeout(10)
        data = b""
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
            c.sendall(name.encode() + b"|" + data)
        except OSError:
            pass
        finally:
            c.close()

    while time.monotonic() < deadline:
        try:
            c, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def udp_server(port: int, name: str, lifetime: float) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.settimeout(0.5)
    deadline = time.monotonic() + lifetime
    print("ready", flush=True)
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(65536)
        except TimeoutError:
            continue
        s.sendto(name.encode() + b"|" + data, peer)


def tcp_clients(host: str, port: int, count: int, size: int, timeout: float, pause: float) -> list[dict]:
    out = []
    for i in range(count):
        payload = os.urandom(size)
        res: dict = {"i": i}
        t0 = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=timeout) as c:
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                data = b""
                while True:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            server, _, echo = data.partition(b"|")
            res.update(server=server.decode(errors="replace"), intact=echo == payload, ok=True)
        except OSError as exc:
            res.update(ok=False, error=str(exc))
        res["ms"] = round((time.monotonic() - t0) * 1000, 1)
        out.append(res)
        if pause:
            time.sleep(pause)
    return out


def _fresh_udp_socket(family: int, used: set[int]) -> socket.socket:
    """A UDP socket bound to an ephemeral port that no earlier socket of this
    run had.  The kernel picks UDP ports at random, so 40 sockets in a row
    share a port about one run in twenty; the repeated flow would then hit
    the director's existing UDP connection entry instead of being scheduled,
    which shifts a weighted split (29/11 for 30/10)."""
    for _ in range(64):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        port = s.getsockname()[1]
        if port not in used:
            used.add(port)
            return s
        s.close()
    raise OSError("no fresh UDP source port in 64 tries")


def udp_clients(host: str, port: int, count: int, same: bool, timeout: float, pause: float) -> list[dict]:
    out = []
    shared = socket.socket(_family(host), socket.SOCK_DGRAM) if same else None
    used: set[int] = set()
    for i in range(count):
        s = shared or _fresh_udp_socket(_family(host), used)
        s.settimeout(timeout)
        payload = os.urandom(16)
        res: dict = {"i": i}
        try:
            s.sendto(payload, (host, port))
            data, _ = s.recvfrom(65536)
            server, _, echo = data.partition(b"|")
            res.update(server=server.decode(errors="replace"), intact=echo == payload, ok=True)
        except OSError as exc:
            res.update(ok=False, error=str(exc))
        finally:
            if shared is None:
                s.close()
        out.append(res)
        if pause:
            time.sleep(pause)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nsprog")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("tcp-server", "udp-server"):
        p = sub.add_parser(name)
        p.add_argument("port", type=int)
        p.add_argument("name")
        p.add_argument("--lifetime", type=float, default=120.0)
    p = sub.add_parser("tcp-clients")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--pause", type=float, default=0.0)
    p = sub.add_parser("udp-clients")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--same", action="store_true")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--pause", type=float, default=0.0)
    a = ap.parse_args(argv)
    if a.cmd == "tcp-server":
        tcp_server(a.port, a.name, a.lifetime)
    elif a.cmd == "udp-server":
        udp_server(a.port, a.name, a.lifetime)
    elif a.cmd == "tcp-clients":
        json.dump(tcp_clients(a.host, a.port, a.count, a.size, a.timeout, a.pause), sys.stdout)
    else:
        json.dump(udp_clients(a.host, a.port, a.count, a.same, a.timeout, a.pause), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
