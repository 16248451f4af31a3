"""ICMP port unreachable for UDP datagrams the director cannot schedule.

The kernel rule (ip_vs_core.c ``ip_vs_leave``, reached from
``udp_conn_schedule`` when ``ip_vs_schedule`` finds no real server, i.e. no
server at all, all of weight 0, or all overloaded): the datagram is dropped
and the client is told ``icmp_send(skb, ICMP_DEST_UNREACH,
ICMP_PORT_UNREACH)`` (``icmpv6_send(ICMPV6_DEST_UNREACH,
ICMPV6_PORT_UNREACH)`` for IPv6), from the address the datagram was sent to,
the VIP.  A connected UDP socket of the client then fails its next call with
ECONNREFUSED.  Datagrams dropped for other reasons (an entry whose real
server is unavailable, a scheduler that says drop) get no answer.

What is sent
    ICMP type 3 code 3 (ICMPv6 type 1 code 4) quoting the client's datagram
    as the kernel does, as much as fits in 576 bytes (IPv4, ``icmp_send``) or
    1280 bytes (IPv6, ``icmp6_send``).  The proxy received the payload from
    its socket, not the packet, so the quoted IP and UDP headers are rebuilt
    from the addresses, ports and payload: the TTL (hop limit) is 64 and the
    IP ID 0 rather than what the client sent; the client's stack matches the
    error to its socket by the quoted addresses and ports only.  Sent through
    a raw socket (``IP_PKTINFO`` / ``IPV6_PKTINFO`` choose the VIP as the
    source; the raw sockets filter out every incoming ICMP message, so they
    never queue any).  A service on the wildcard address (0.0.0.0, ::)
    sends nothing: the proxy does not know which address the client used.
    Needs CAP_NET_RAW; without it the datagram is dropped silently and the
    NAT plane says so once in its warnings.

Rate limit (net/ipv4/icmp.c ``icmpv4_xrlim_allow``, ``icmp_global_allow``)
    Per client address, a token bucket of ``icmp_ratelimit`` (1000 ms) per
    message with a burst of ``XRLIM_BURST_FACTOR`` (6) messages
    (``inet_peer_xrlim_allow``; a new peer starts with a full bucket); and
    for all clients together ``icmp_msgs_per_sec`` (1000) with a burst of
    ``icmp_msgs_burst`` (50).  As in the kernel, clients on a loopback
    address (127.0.0.0/8, ::1) are not limited (the kernel exempts every
    destination routed through ``lo``; pylvs does not look up routes, so
    other local addresses of the director are limited).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections import OrderedDict

from lvs.constants import AF_INET6

from .packet import checksum

log = logging.getLogger("lvsd.icmp")

#: ``net.ipv4.icmp_ratelimit`` (and ``net.ipv6.icmp.ratelimit``): seconds per message and peer
ICMP_RATELIMIT = 1.0
#: ``XRLIM_BURST_FACTOR``: a peer may save up this many messages
XRLIM_BURST_FACTOR = 6
#: ``net.ipv4.icmp_msgs_per_sec`` and ``icmp_msgs_burst``: all peers together
ICMP_MSGS_PER_SEC = 1000
ICMP_MSGS_BURST = 50
#: peers remembered (the kernel's inet_peer cache is bounded too): the
#: longest idle one is forgotten first, and comes back with a full bucket
MAX_PEERS = 65536

#: ``576 - sizeof(iphdr) - sizeof(icmphdr)``: the most of the datagram IPv4 quotes
QUOTE4 = 576 - 20 - 8
#: ``IPV6_MIN_MTU - sizeof(ipv6hdr) - sizeof(icmp6hdr)``
QUOTE6 = 1280 - 40 - 8

ICMP_DEST_UNREACH, ICMP_PORT_UNREACH = 3, 3
ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH = 1, 4
_IP_PKTINFO = 8
_IPV6_PKTINFO = 50
_ICMP_FILTER = 1  # SOL_RAW (255) option of IPPROTO_ICMP raw sockets
_SOL_RAW = 255
_ICMP6_FILTER = 1  # IPPROTO_ICMPV6 option
_TTL = 64


def _udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, v6: bool) -> bytes:
    """A UDP header and payload with the checksum over the pseudo-header."""
    length = 8 + len(payload)
    if v6:
        pseudo = src + dst + struct.pack("!IxxxB", length, socket.IPPROTO_UDP)
    else:
        pseudo = src + dst + struct.pack("!xBH", socket.IPPROTO_UDP, length & 0xFFFF)
    head = struct.pack("!HHHH", sport, dport, length & 0xFFFF, 0)
    csum = checksum(pseudo + head + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length & 0xFFFF, csum) + payload


def port_unreachable_v4(client: str, cport: int, vip: str, vport: int, payload: bytes) -> bytes:
    """The ICMP message (header and quote, no outer IP header) that answers
    the datagram ``client:cport -> vip:vport`` carrying ``payload``."""
    src, dst = socket.inet_aton(client), socket.inet_aton(vip)
    udp = _udp(src, dst, cport, vport, payload, False)
    total = 20 + len(udp)
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total & 0xFFFF, 0, 0, _TTL, socket.IPPROTO_UDP, 0, src, dst)
    iph = iph[:10] + struct.pack("!H", checksum(iph)) + iph[12:]
    quote = (iph + udp)[:QUOTE4]
    head = struct.pack("!BBHI", ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0)
    csum = checksum(head + quote)
    return head[:2] + struct.pack("!H", csum) + head[4:] + quote


def port_unreachable_v6(client: str, cport: int, vip: str, vport: int, payload: bytes) -> bytes:
    """The ICMPv6 message for an IPv6 datagram; the checksum field is left 0
    (the kernel fills it in for raw ICMPv6 sockets)."""
    src = socket.inet_pton(socket.AF_INET6, client.split("%", 1)[0])
    dst = socket.inet_pton(socket.AF_INET6, vip)
    udp = _udp(src, dst, cport, vport, payload, True)
    iph = struct.pack("!IHBB16s16s", 6 << 28, len(udp) & 0xFFFF, socket.IPPROTO_UDP, _TTL, src, dst)
    quote = (iph + udp)[:QUOTE6]
    return struct.pack("!BBHI", ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, 0) + quote


class RateLimit:
    """``icmp_global_allow`` + ``inet_peer_xrlim_allow``: may one more ICMP
    error go to ``peer`` at ``now`` (seconds)?  Pure: the caller gives the time."""

    def __init__(
        self,
        per_peer: float = ICMP_RATELIMIT,
        burst: int = XRLIM_BURST_FACTOR,
        per_sec: int = ICMP_MSGS_PER_SEC,
        global_burst: int = ICMP_MSGS_BURST,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self.per_peer = per_peer
        self.burst = burst
        self.per_sec = per_sec
        self.global_burst = global_burst
        self.max_peers = max_peers
        #: peer -> (tokens in seconds, time of the last check)
        self.peers: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.credit = float(global_burst)
        self.stamp: float | None = None

    def allow(self, peer: str, now: float) -> bool:
        if _loopback(peer):
            return True
        # the global bucket first, as __icmp_send checks it before the peer
        if self.stamp is not None:
            self.credit = min(self.global_burst, self.credit + (now - self.stamp) * self.per_sec)
        self.stamp = now
        if self.credit < 1:
            return False
        self.credit -= 1  # 6.1 takes the global credit before the peer's check
        # the peer's bucket: tokens are time, capped at burst * ratelimit
        tokens, last = self.peers.pop(peer, (self.burst * self.per_peer, now))
        tokens = min(tokens + (now - last), self.burst * self.per_peer)
        ok = tokens >= self.per_peer
        if ok:
            tokens -= self.per_peer
        self.peers[peer] = (tokens, now)
        if len(self.peers) > self.max_peers:
            self.peers.popitem(last=False)
        return ok


def _loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "::ffff:127.0.0.1") or addr.startswith("::ffff:127.")


class PortUnreachable:
    """Sends the ICMP answers of one lvsd (or worker) process: a raw socket
    per address family, opened on first use."""

    def __init__(self) -> None:
        self.limit = RateLimit()
        self.socks: dict[int, socket.socket] = {}
        self.sent = 0
        self.limited = 0
        #: why the raw socket could not be opened (None: it could, or not tried yet)
        self.error: str | None = None

    def _sock(self, af: int) -> socket.socket | None:
        sock = self.socks.get(af)
        if sock is not None or self.error is not None:
            return sock
        try:
            if af == AF_INET6:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, b"\xff" * 32)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", 0xFFFFFFFF))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256)
            sock.setblocking(False)
        except OSError as exc:
            if sock is not None:
                sock.close()
            self.error = f"cannot send ICMP port unreachable (raw socket: {exc.strerror or exc})"
            log.warning("%s", self.error)
            return None
        self.socks[af] = sock
        return sock

    def send(
        self, af: int, client: tuple[object, ...], vip: str, vport: int, payload: bytes, now: float
    ) -> bool:
        """Answer the datagram ``payload`` from ``client`` (the address tuple
        recvfrom gave) to ``vip:vport``.  False if nothing was sent (wildcard
        VIP, rate limit, no raw socket, the kernel refused)."""
        host = str(client[0])
        cport = int(client[1])  # type: ignore[call-overload]
        if vip in ("0.0.0.0", "::"):
            return False
        if not self.limit.allow(host, now):
            self.limited += 1
            return False
        sock = self._sock(af)
        if sock is None:
            return False
        try:
            if af == AF_INET6:
                msg = port_unreachable_v6(host, cport, vip, vport, payload)
                info = struct.pack("16si", socket.inet_pton(socket.AF_INET6, vip), 0)
                scope = int(client[3]) if len(client) > 3 else 0  # type: ignore[call-overload]
                dest: tuple[object, ...] = (host, 0, 0, scope)
                sock.sendmsg([msg], [(socket.IPPROTO_IPV6, _IPV6_PKTINFO, info)], 0, dest)
            else:
                msg = port_unreachable_v4(host, cport, vip, vport, payload)
                info = struct.pack("i4s4s", 0, socket.inet_aton(vip), b"\0" * 4)
                sock.sendmsg([msg], [(socket.IPPROTO_IP, _IP_PKTINFO, info)], 0, (host, 0))
        except (OSError, ValueError) as exc:
            log.debug("ICMP port unreachable to %s: %s", host, exc)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()


__all__ = ["PortUnreachable", "RateLimit", "port_unreachable_v4", "port_unreachable_v6"]
