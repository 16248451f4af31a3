"""Reuseport steering of ``lvsd --workers`` (forwarding.reuseport): with the
cBPF program on the group, every datagram (connection) of one client address
goes to one socket of the group, the one the program's hash names, whatever
the client's port; real sockets on loopback."""

from __future__ import annotations

import select
import socket
import time

from forwarding.reuseport import GOLDEN32, attach_client_steering, client_steering, detach_steering

N = 2
CLIENTS = [f"127.0.0.{i}" for i in range(1, 9)]


def expected_index(addr: str, n: int) -> int:
    """What the program computes: a 32-bit multiply, >> 16, mod n."""
    word = int.from_bytes(socket.inet_aton(addr), "big")
    return (((word * GOLDEN32) & 0xFFFFFFFF) >> 16) % n


def group(n: int) -> list[socket.socket]:
    socks = []
    port = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.setblocking(False)
        socks.append(s)
    return socks


def receive_all(socks: list[socket.socket], want: int) -> dict[str, set[int]]:
    """client address -> indexes of the group sockets that got its datagrams"""
    seen: dict[str, set[int]] = {}
    got = 0
    deadline = time.monotonic() + 5
    while got < want and time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 0.2)
        for s in ready:
            while True:
                try:
                    _data, (addr, _port) = s.recvfrom(64)
                except BlockingIOError:
                    break
                seen.setdefault(addr, set()).add(socks.index(s))
                got += 1
    assert got == want, f"received {got} of {want} datagrams"
    return seen


def send_from_many_ports(port: int, per_client: int) -> None:
    for addr in CLIENTS:
        for _ in range(per_client):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((addr, 0))  # a new source port each time
            c.sendto(b"x", ("127.0.0.1", port))
            c.close()


def test_one_client_address_meets_one_socket() -> None:
    socks = group(N)
    try:
        attach_client_steering(socks[0], socket.AF_INET, N)
        send_from_many_ports(socks[0].getsockname()[1], 6)
        seen = receive_all(socks, len(CLIENTS) * 6)
        assert seen == {addr: {expected_index(addr, N)} for addr in CLIENTS}
        assert {i for s in seen.values() for i in s} == set(range(N))  # both sockets serve someone
        detach_steering(socks[0])  # back to the 4-tuple hash: still delivered
        send_from_many_ports(socks[0].getsockname()[1], 1)
        receive_all(socks, len(CLIENTS))
    finally:
        for s in socks:
            s.close()


def test_the_program_reads_the_last_word_of_an_ipv6_source() -> None:
    v4, v6 = client_steering(socket.AF_INET, 3), client_steering(socket.AF_INET6, 3)
    assert v4[0][3] + 8 == v6[0][3] and v4[1:] == v6[1:]
    assert v4[3] == (0x94, 0, 0, 3)  # mod n
