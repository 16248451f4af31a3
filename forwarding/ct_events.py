"""Conntrack events (ctnetlink multicast) for the kernel NAT engine.

The kernel NAT engine (:mod:`forwarding.nat_kernel`) sees only each flow's
first packet; netfilter's conntrack follows the rest.  This module listens
to conntrack's event groups (``NFNLGRP_CONNTRACK_NEW``, ``_UPDATE``,
``_DESTROY``) on a netlink socket and reports, per event, the original
tuple (client -> VIP), the TCP state conntrack reached and, with
accounting on (``net.netfilter.nf_conntrack_acct``), the packet and byte
counters of both directions.  Messages are parsed after
``include/uapi/linux/netfilter/nfnetlink_conntrack.h`` with the nfnetlink
helpers of :mod:`forwarding.nfqueue` (no library: pyroute2's NFCTSocket
runs an event loop of its own).

The kernel sends events for every conntrack entry of the namespace, not
only the engine's: the caller ignores those it has no IPVS entry for.  The
socket has a 32 MB buffer and ``NETLINK_NO_ENOBUFS``: when events come
faster than lvsd reads them some are lost (the kernel counts them), and
entries then keep their last state until their own timeout.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .nfqueue import (
    NETLINK_NETFILTER,
    NETLINK_NO_ENOBUFS,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_REQUEST,
    SO_RCVBUFFORCE,
    SOL_NETLINK,
    iter_attrs,
    iter_msgs,
    nl_errors,
    nla,
    nlmsg,
)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_DELETE = 2
NLM_F_CREATE = 0x400
#: groups 1..3: NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY (bit = group - 1)
GROUPS = 0b111

CTA_TUPLE_ORIG = 1
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2

# conntrack's TCP states (enum tcp_conntrack)
CT_TCP_SYN_SENT = 1
CT_TCP_SYN_RECV = 2
CT_TCP_ESTABLISHED = 3
CT_TCP_FIN_WAIT = 4
CT_TCP_CLOSE_WAIT = 5
CT_TCP_LAST_ACK = 6
CT_TCP_TIME_WAIT = 7
CT_TCP_CLOSE = 8

NEW, UPDATE, DESTROY = "new", "update", "destroy"
_U64 = struct.Struct("!Q")


@dataclass(slots=True)
class CtEvent:
    """One conntrack event: ``kind`` (new/update/destroy), the original
    direction's tuple, conntrack's TCP state (-1: none reported) and the
    counters (-1 when accounting is off)."""

    kind: str
    af: int
    protocol: int
    saddr: int
    sport: int
    daddr: int
    dport: int
    tcp_state: int = -1
    orig_packets: int = -1
    orig_bytes: int = -1
    reply_packets: int = -1
    reply_bytes: int = -1


def _nested(view: memoryview, s: int, e: int) -> dict[int, tuple[int, int]]:
    return {kind: (a, b) for kind, a, b in iter_attrs(view, s, e)}


def parse_event(view: memoryview, mtype: int, flags: int, body: int, end: int) -> CtEvent | None:
    """One ctnetlink message (body after nlmsghdr) as a :class:`CtEvent`."""
    if mtype >> 8 != NFNL_SUBSYS_CTNETLINK:
        return None
    msg = mtype & 0xFF
    if msg == IPCTNL_MSG_CT_DELETE:
        kind = DESTROY
    elif msg == IPCTNL_MSG_CT_NEW:
        kind = NEW if flags & NLM_F_CREATE else UPDATE
    else:
        return None
    top = _nested(view, body + 4, end)
    orig = top.get(CTA_TUPLE_ORIG)
    if orig is None:
        return None
    tup = _nested(view, *orig)
    ip, proto = tup.get(CTA_TUPLE_IP), tup.get(CTA_TUPLE_PROTO)
    if ip is None or proto is None:
        return None
    ips = _nested(view, *ip)
    if CTA_IP_V4_SRC in ips and CTA_IP_V4_DST in ips:
        af = socket.AF_INET
        (s1, e1), (s2, e2) = ips[CTA_IP_V4_SRC], ips[CTA_IP_V4_DST]
    elif CTA_IP_V6_SRC in ips and CTA_IP_V6_DST in ips:
        af = socket.AF_INET6
        (s1, e1), (s2, e2) = ips[CTA_IP_V6_SRC], ips[CTA_IP_V6_DST]
    else:
        return None
    saddr = int.from_bytes(view[s1:e1], "big")
    daddr = int.from_bytes(view[s2:e2], "big")
    pr = _nested(view, *proto)
    if CTA_PROTO_NUM not in pr:
        return None
    protocol = view[pr[CTA_PROTO_NUM][0]]
    sport = dport = 0
    if CTA_PROTO_SRC_PORT in pr and CTA_PROTO_DST_PORT in pr:
        sport = int.from_bytes(view[pr[CTA_PROTO_SRC_PORT][0] : pr[CTA_PROTO_SRC_PORT][0] + 2], "big")
        dport = int.from_bytes(view[pr[CTA_PROTO_DST_PORT][0] : pr[CTA_PROTO_DST_PORT][0] + 2], "big")
    ev = CtEvent(kind, af, protocol, saddr, sport, daddr, dport)
    info = top.get(CTA_PROTOINFO)
    if info is not None:
        tcp = _nested(view, *info).get(CTA_PROTOINFO_TCP)
        if tcp is not None:
            st = _nested(view, *tcp).get(CTA_PROTOINFO_TCP_STATE)
            if st is not None:
                ev.tcp_state = view[st[0]]
    for attr, names in ((CTA_COUNTERS_ORIG, ("orig_packets", "orig_bytes")),
                        (CTA_COUNTERS_REPLY, ("reply_packets", "reply_bytes"))):  # fmt: skip
        where = top.get(attr)
        if where is None:
            continue
        counters = _nested(view, *where)
        for key, name in zip((CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES), names, strict=True):
            if key in counters:
                setattr(ev, name, _U64.unpack_from(view, counters[key][0])[0])
    return ev


class ConntrackEvents:
    """A netlink socket subscribed to conntrack's new/update/destroy events."""

    def __init__(self, rcvbuf: int = 32 << 20) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, GROUPS))
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self._buf = bytearray(1 << 16)
        self.events = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, max_datagrams: int = 64) -> Iterator[CtEvent]:
        """The events waiting now (at most ``max_datagrams`` datagrams)."""
        view = memoryview(self._buf)
        for _ in range(max_datagrams):
            try:
                n = self.sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue
                raise
            for mtype, flags, body, end in iter_msgs(view, 0, n):
                ev = parse_event(view, mtype, flags, body, end)
                if ev is not None:
                    self.events += 1
                    yield ev

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def delete_message(af: int, protocol: int, saddr: int, sport: int, daddr: int, dport: int, seq: int) -> bytes:
    """IPCTNL_MSG_CT_DELETE of the entry whose original tuple is given
    (``ctnetlink_del_conntrack``), with an ACK asked for."""
    if af == socket.AF_INET6:
        ip = nla(CTA_IP_V6_SRC, saddr.to_bytes(16, "big")) + nla(CTA_IP_V6_DST, daddr.to_bytes(16, "big"))
    else:
        ip = nla(CTA_IP_V4_SRC, saddr.to_bytes(4, "big")) + nla(CTA_IP_V4_DST, daddr.to_bytes(4, "big"))
    proto = (nla(CTA_PROTO_NUM, bytes([protocol])) + nla(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
             + nla(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))  # fmt: skip
    tup = nla(CTA_TUPLE_IP | NLA_F_NESTED, ip) + nla(CTA_TUPLE_PROTO | NLA_F_NESTED, proto)
    body = nla(CTA_TUPLE_ORIG | NLA_F_NESTED, tup)
    mtype = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    return nlmsg(mtype, NLM_F_REQUEST | NLM_F_ACK, seq, af, 0, body)


def delete_entries(tuples: list[tuple[int, int, int, int, int, int]], timeout: float = 2.0) -> int:
    """Delete the conntrack entries of these original tuples ((af, protocol,
    saddr, sport, daddr, dport)); the number the kernel deleted (the others
    were already gone)."""
    if not tuples:
        return 0
    deleted = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sk:
        sk.bind((0, 0))
        sk.settimeout(timeout)
        for start in range(0, len(tuples), 256):
            chunk = tuples[start : start + 256]
            sk.send(b"".join(delete_message(*t, seq=start + i + 1) for i, t in enumerate(chunk)))
            got = 0
            while got < len(chunk):
                try:
                    reply = sk.recv(1 << 16)
                except TimeoutError:
                    return deleted
                for err in nl_errors(reply):
                    got += 1
                    deleted += err == 0
    return deleted


def enable_accounting() -> bool:
    """Turn on conntrack's per-entry counters in this namespace
    (``net.netfilter.nf_conntrack_acct``); False if it cannot."""
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_acct", "w") as fh:
            fh.write("1\n")
        return True
    except OSError:
        return False


__all__ = [
    "DESTROY",
    "NEW",
    "UPDATE",
    "ConntrackEvents",
    "CtEvent",
    "delete_entries",
    "delete_message",
    "enable_accounting",
    "parse_event",
]
