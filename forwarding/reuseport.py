"""Steering on a SO_REUSEPORT group (``lvsd --workers N``).

By default the kernel spreads a group's connections and datagrams by their
4-tuple hash.  For a persistent service one client address must always meet
the same worker (its template lives there), so a classic BPF program on the
group picks the socket from a hash of the client's address instead
(SO_ATTACH_REUSEPORT_CBPF; the program's return value is the socket's index
in the group, in the order the workers bound).
"""

from __future__ import annotations

import socket

from lvs.constants import AF_INET6

from . import cbpf

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68
#: a BPF load from the network header (``SKF_NET_OFF``)
SKF_NET_OFF = -0x100000
#: Fibonacci hashing's multiplier (2^32 / golden ratio)
GOLDEN32 = 0x9E3779B1


def client_steering(af: int, n: int) -> list[cbpf.Insn]:
    """The program: socket index = hash(client address) mod ``n`` (for IPv6
    the last 32 bits of the address)."""
    off = 12 if af != AF_INET6 else 8 + 12  # IPv4 saddr; IPv6: last word of saddr
    return [
        (0x20, 0, 0, (SKF_NET_OFF + off) & 0xFFFFFFFF),  # BPF_LD|BPF_W|BPF_ABS
        (0x24, 0, 0, GOLDEN32),  # BPF_ALU|BPF_MUL|BPF_K
        (0x74, 0, 0, 16),  # BPF_ALU|BPF_RSH|BPF_K
        (0x94, 0, 0, n),  # BPF_ALU|BPF_MOD|BPF_K
        (0x16, 0, 0, 0),  # BPF_RET|BPF_A
    ]


def attach_client_steering(sock: socket.socket, af: int, n: int) -> None:
    """One client address meets one of the ``n`` sockets of the group."""
    cbpf.attach(sock, SO_ATTACH_REUSEPORT_CBPF, client_steering(af, n))


def detach_steering(sock: socket.socket) -> None:
    """Back to the kernel's 4-tuple hash."""
    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)


__all__ = ["attach_client_steering", "client_steering", "detach_steering"]
