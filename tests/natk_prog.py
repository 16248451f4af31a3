"""Small programs for the kernel NAT engine's namespace test
(tests/test_nat_kernel_netns.py), run with ``python -m tests.natk_prog``.

    server PORT NAME        TCP and UDP on PORT: answer NAME|PEER-ADDRESS|data
                            (TCP: per line, for as long as the client talks)
    tcp HOST PORT COUNT     COUNT short connections; JSON list of the answers
    udp HOST PORT COUNT     COUNT datagrams, each from a fresh socket; JSON list
    hold HOST PORT          one connection: for each stdin line, send it and
                            print the answer line (or "error ...")
"""

from __future__ import annotations

import json
import socket
import sys
import threading

TIMEOUT = 5.0


def server(port: int, name: str) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(128)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))

    def serve_udp() -> None:
        while True:
            data, peer = udp.recvfrom(2048)
            udp.sendto(f"{name}|{peer[0]}|".encode() + data, peer)

    def serve_conn(c: socket.socket, peer: str) -> None:
        with c, c.makefile("rb") as rf:
            for line in rf:
                c.sendall(f"{name}|{peer}|".encode() + line)

    threading.Thread(target=serve_udp, daemon=True).start()
    print("ready", flush=True)
    while True:
        c, peer = tcp.accept()
        threading.Thread(target=serve_conn, args=(c, peer[0]), daemon=True).start()


def _answer(text: bytes) -> dict[str, str]:
    name, peer, data = text.decode().rstrip("\n").split("|", 2)
    return {"server": name, "peer": peer, "data": data}


def tcp_clients(host: str, port: int, count: int) -> list[dict[str, str]]:
    out = []
    for i in range(count):
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT) as s, s.makefile("rb") as rf:
                s.sendall(f"hello {i}\n".encode())
                out.append(_answer(rf.readline()))
        except OSError as exc:
            out.append({"error": str(exc)})
    return out


def udp_clients(host: str, port: int, count: int) -> list[dict[str, str]]:
    out = []
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT)
            try:
                s.sendto(f"dgram {i}".encode(), (host, port))
                out.append(_answer(s.recv(2048)))
            except OSError as exc:
                out.append({"error": str(exc)})
    return out


def hold(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=TIMEOUT) as s, s.makefile("rb") as rf:
        print("connected", flush=True)
        for line in sys.stdin:
            try:
                s.sendall(line.encode())
                print(rf.readline().decode().rstrip("\n") or "error closed", flush=True)
            except OSError as exc:
                print(f"error {exc}", flush=True)


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "server":
        server(int(argv[1]), argv[2])
    elif cmd in ("tcp", "udp"):
        fn = tcp_clients if cmd == "tcp" else udp_clients
        print(json.dumps(fn(argv[1], int(argv[2]), int(argv[3]))))
    elif cmd == "hold":
        hold(argv[1], int(argv[2]))
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
