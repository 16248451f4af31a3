"""Next hops of real servers for the DR/TUN plane (:mod:`forwarding.dr`):
route, link and neighbour, from netlink in a worker thread.

For a real server the route to it gives the egress interface, the gateway
(or the server itself when on-link), our preferred source address and the
route MTU; the destination MAC is that next hop's, taken from the kernel's
neighbour table.  On a miss the kernel is asked to resolve it (NTF_USE, as
``neigh_output`` does for the kernel's IPVS), and when it gets no answer
either, one ARP request / neighbour solicitation is sent by scapy.  Packets
for an unresolved next hop wait in a short queue, as in the kernel's
``unres_qlen``.  Resolved next hops are cached (:data:`NEIGH_TTL`, refreshed
in the background while still used), unreachable ones for :data:`NEG_TTL`;
nothing here blocks the packet loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lvs.addr import format_ip

from . import packet

log = logging.getLogger("lvsd.dr")

# neighbour states (linux/neighbour.h)
NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT
RTN_UNICAST = 1
RTN_LOCAL = 2
NTF_USE = 0x01

NEIGH_TTL = 10.0  # seconds a resolved next hop is used before it is checked again
NEG_TTL = 1.0  # seconds an unreachable next hop is remembered
UNRES_QLEN = 100  # packets waiting for one neighbour
ARP_TIMEOUT = 1.0


@dataclass(slots=True)
class NextHop:
    """How to reach one real server: egress interface, the 14-byte Ethernet
    header to put in front (next hop MAC, our MAC, ethertype of the real
    server's family), our source address on that route, the route MTU."""

    ifindex: int = 0
    l2: bytes = b""
    src: int = 0
    mtu: int = 1500
    expires: float = 0.0
    ok: bool = False
    local: bool = False
    error: str = ""
    refreshing: bool = False


@dataclass(slots=True)
class LinkInfo:
    ifindex: int
    name: str
    mac: bytes
    mtu: int


class NetInfo:
    """Synchronous netlink look-ups (pyroute2), run only in the resolver's
    worker thread: pyroute2's synchronous API cannot run inside the daemon's
    own event loop, so the thread gets its own selector loop."""

    def __init__(self) -> None:
        self._ipr: Any = None

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute(use_event_loop=asyncio.SelectorEventLoop())
        return self._ipr

    def link(self, ifindex: int) -> LinkInfo:
        msg = self.ipr.link("get", index=ifindex)[0]
        mac = msg.get("IFLA_ADDRESS") or "00:00:00:00:00:00"
        mtu = int(msg.get("IFLA_MTU") or 1500)
        return LinkInfo(ifindex, msg.get("IFLA_IFNAME"), packet.mac_bytes(mac), mtu)

    def all_links(self) -> list[LinkInfo]:
        out = []
        for msg in self.ipr.get_links():
            mac = msg.get("IFLA_ADDRESS") or "00:00:00:00:00:00"
            try:
                raw = packet.mac_bytes(mac)
            except ValueError:
                raw = bytes(6)
            out.append(LinkInfo(msg["index"], msg.get("IFLA_IFNAME"), raw, int(msg.get("IFLA_MTU") or 1500)))
        return out

    def route(self, af: int, addr: int) -> tuple[int, int, int, int, int]:
        """(route type, oif, gateway or 0, preferred source or 0, metrics MTU or 0)."""
        msg = self.ipr.route("get", dst=format_ip(af, addr))[0]
        gw = msg.get("RTA_GATEWAY")
        src = msg.get("RTA_PREFSRC")
        mtu = 0
        metrics = msg.get("RTA_METRICS")
        if metrics:
            mtu = int(metrics.get("RTAX_MTU") or 0)
        return (
            int(msg.get("type", RTN_UNICAST)),
            int(msg.get("RTA_OIF") or 0),
            _ip_int(af, gw) if gw else 0,
            _ip_int(af, src) if src else 0,
            mtu,
        )

    def source_for(self, af: int, ifindex: int) -> int:
        """A global address of ``ifindex`` (IPv6 routes carry no preferred source)."""
        for msg in self.ipr.get_addr(family=af, index=ifindex):
            if msg.get("scope", 0) == 0:
                return _ip_int(af, msg.get("IFA_ADDRESS"))
        return 0

    def kernel_resolve(self, af: int, addr: int, ifindex: int, timeout: float = ARP_TIMEOUT) -> bytes | None:
        """Let the kernel's neighbour subsystem resolve ``addr`` (what
        ``neigh_output`` does for the kernel's IPVS): an RTM_NEWNEIGH with
        NTF_USE (``ip neigh replace ADDR dev DEV use``) creates the entry and
        starts ARP / neighbour discovery with the kernel's own rules
        (arp_announce, retransmits); then the table is polled for the answer."""
        try:
            self.ipr.neigh(
                "replace", dst=format_ip(af, addr), ifindex=ifindex, family=af, flags=NTF_USE, state=0
            )
        except Exception as exc:
            log.debug("NTF_USE for %s: %s", format_ip(af, addr), exc)
            return None
        deadline = time.monotonic() + timeout
        while True:
            mac = self.neigh(af, addr, ifindex)
            if mac is not None or time.monotonic() >= deadline:
                return mac
            time.sleep(0.005)

    def neigh(self, af: int, addr: int, ifindex: int) -> bytes | None:
        try:
            msgs = self.ipr.neigh("get", dst=format_ip(af, addr), ifindex=ifindex)
        except Exception:
            return None
        for m in msgs:
            if m.get("state", 0) & NUD_USABLE and m.get("NDA_LLADDR"):
                return packet.mac_bytes(m.get("NDA_LLADDR"))
        return None

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


def _ip_int(af: int, text: str) -> int:
    import socket

    return int.from_bytes(socket.inet_pton(af, text), "big")


def solicit(af: int, addr: int, src: int, link: LinkInfo, timeout: float = ARP_TIMEOUT) -> bytes | None:
    """Resolve ``addr`` on ``link`` with one ARP request (IPv4) or neighbour
    solicitation (IPv6), built and matched by scapy.  Blocking: worker thread."""
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import ARP, Ether
    from scapy.sendrecv import srp1
    from scapy.utils6 import in6_getnsma, in6_getnsmac

    mac = ":".join(f"{b:02x}" for b in link.mac)
    dst = format_ip(af, addr)
    if af == packet.AF_INET:
        req = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / ARP(
            op=1, hwsrc=mac, psrc=format_ip(af, src) if src else "0.0.0.0", pdst=dst
        )
        ans = srp1(req, iface=link.name, timeout=timeout, verbose=0)
        if ans is not None and ARP in ans and ans[ARP].op == 2:
            return packet.mac_bytes(ans[ARP].hwsrc)
        return None
    import socket

    nsma = in6_getnsma(socket.inet_pton(socket.AF_INET6, dst))
    req = (
        Ether(dst=in6_getnsmac(nsma), src=mac)
        / IPv6(src=format_ip(af, src) if src else "::", dst=socket.inet_ntop(socket.AF_INET6, nsma), hlim=255)
        / ICMPv6ND_NS(tgt=dst)
        / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    )
    ans = srp1(req, iface=link.name, timeout=timeout, verbose=0)
    if ans is not None and ICMPv6ND_NA in ans:
        return packet.mac_bytes(ans.src)
    return None


class Resolver:
    """Next hops of real servers, cached; misses and refreshes run in one
    worker thread and never block the packet loop.

    ``lookup`` returns a usable :class:`NextHop` (possibly stale: it is then
    refreshed in the background) or ``None`` when the packet must wait:
    ``wait(key, fn)`` queues a callable run once the next hop is known.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, netinfo: NetInfo | None = None) -> None:
        self.loop = loop
        self.net = netinfo or NetInfo()
        self.cache: dict[tuple[int, int], NextHop] = {}
        self.links: dict[int, LinkInfo] = {}
        self.pending: dict[tuple[int, int], collections.deque[Callable[[], None]]] = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lvsd-neigh")
        self._inflight: set[tuple[int, int]] = set()
        self.arp_requests = 0
        self.kernel_requests = 0
        self.dropped = 0
        #: called (no arguments) whenever a cached next hop changes or goes
        self.on_change: list[Callable[[], None]] = []

    def lookup(self, af: int, addr: int, now: float) -> NextHop | None:
        nh = self.cache.get((af, addr))
        if nh is None:
            self._start((af, addr))
            return None
        if nh.expires < now and not nh.refreshing:
            nh.refreshing = True
            self._start((af, addr))
        return nh

    def link(self, ifindex: int) -> LinkInfo | None:
        li = self.links.get(ifindex)
        if li is None:
            try:
                li = self.pool.submit(self.net.link, ifindex).result(timeout=5)
            except Exception:
                return None
            self.links[ifindex] = li
        return li

    def wait(self, key: tuple[int, int], fn: Callable[[], None]) -> None:
        q = self.pending.get(key)
        if q is None:
            q = self.pending[key] = collections.deque()
            self._start(key)
        if len(q) >= UNRES_QLEN:
            q.popleft()
            self.dropped += 1
        q.append(fn)

    def _start(self, key: tuple[int, int]) -> None:
        if key in self._inflight:
            return
        self._inflight.add(key)
        fut = self.pool.submit(self._resolve, key)
        fut.add_done_callback(lambda f, key=key: self._done(key, f))

    def _resolve(self, key: tuple[int, int]) -> NextHop:
        af, addr = key
        nh = NextHop()
        try:
            rtype, oif, gw, src, rmtu = self.net.route(af, addr)
            if rtype == RTN_LOCAL:
                nh.local = True
                nh.error = "real server address is local"
                return nh
            if not oif:
                nh.error = "no route"
                return nh
            link = self.net.link(oif)
            self.links[oif] = link
            if not src:
                src = self.net.source_for(af, oif)
            hop = gw or addr
            mac = self.net.neigh(af, hop, oif)
            if mac is None:
                self.kernel_requests += 1
                mac = self.net.kernel_resolve(af, hop, oif)
            if mac is None:
                # the kernel got no answer either; one more try with scapy
                self.arp_requests += 1
                mac = solicit(af, hop, src, link)
            if mac is None:
                nh.error = f"no neighbour answer for {format_ip(af, hop)}"
                return nh
            etype = packet.ETH_P_IPV6 if af == packet.AF_INET6 else packet.ETH_P_IP
            nh.ifindex = oif
            nh.l2 = packet.ethernet_header(mac, link.mac, etype)
            nh.src = src
            nh.mtu = rmtu or link.mtu
            nh.ok = True
        except Exception as exc:
            nh.error = f"route lookup failed: {exc}"
        return nh

    def _done(self, key: tuple[int, int], fut: concurrent.futures.Future[NextHop]) -> None:
        def apply() -> None:
            self._inflight.discard(key)
            nh = fut.result()
            now = time.monotonic()
            old = self.cache.get(key)
            if not nh.ok and old is not None and old.ok and not nh.local:
                # a failed refresh: keep the old entry a little longer (STALE)
                old.refreshing = False
                old.expires = now + NEG_TTL
                nh = old
            else:
                nh.expires = now + (NEIGH_TTL if nh.ok else NEG_TTL)
                self.cache[key] = nh
            for cb in self.on_change:
                cb()
            q = self.pending.pop(key, None)
            if q:
                if nh.ok:
                    for fn in q:
                        fn()
                else:
                    self.dropped += len(q)

        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(apply)
        else:
            apply()

    def invalidate(self) -> None:
        self.cache.clear()
        self.links.clear()
        for cb in self.on_change:
            cb()

    def prewarm(self) -> None:
        """Import scapy (ARP/ND fallback, ICMP errors) in a background thread,
        so that neither the first ICMP error nor a neighbour that the kernel
        cannot resolve stalls the packet loop or the resolver for the second
        or more that importing scapy takes."""

        def load() -> None:
            with contextlib.suppress(Exception):
                for name in ("scapy.layers.inet", "scapy.layers.inet6", "scapy.layers.l2", "scapy.sendrecv"):
                    importlib.import_module(name)

        threading.Thread(target=load, name="lvsd-scapy-import", daemon=True).start()

    def prefetch_links(self) -> None:
        """Learn every interface once (ingress MTU and MAC for the slow paths)."""
        try:
            for li in self.pool.submit(self.net.all_links).result(timeout=10):
                self.links[li.ifindex] = li
        except Exception as exc:
            log.warning("listing interfaces: %s", exc)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.submit(self.net.close).result(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = [
    "ARP_TIMEOUT",
    "NEG_TTL",
    "NEIGH_TTL",
    "NTF_USE",
    "NUD_FAILED",
    "NUD_INCOMPLETE",
    "NUD_USABLE",
    "RTN_LOCAL",
    "RTN_UNICAST",
    "UNRES_QLEN",
    "LinkInfo",
    "NetInfo",
    "NextHop",
    "Resolver",
    "solicit",
]
