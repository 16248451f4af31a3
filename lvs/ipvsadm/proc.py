"""The kernel's /proc/net files for IPVS, as text.

* ``/proc/net/ip_vs`` (ip_vs_ctl.c ``ip_vs_info_seq_show``): the service table
  in the kernel's *hash* order, addresses and ports in upper-case hex, the
  persistence timeout in jiffies.
* ``/proc/net/ip_vs_stats`` (ip_vs_ctl.c ``ip_vs_stats_show``): the totals and
  their rates, in hex.
* ``/proc/net/ip_vs_conn`` and ``/proc/net/ip_vs_conn_sync`` (ip_vs_conn.c
  ``ip_vs_conn_seq_show``/``ip_vs_conn_sync_seq_show``): one row per entry of
  the connection table, templates included.

``ipvsadm -L -c`` does not ask the kernel over netlink: it reads
``ip_vs_conn`` and re-parses it (see :func:`lvs.ipvsadm.listing.list_conns`),
which is why this module is the source of that listing too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..constants import (
    AF_INET6,
    CONN_F_DROUTE,
    CONN_F_FWD_MASK,
    CONN_F_LOCALNODE,
    CONN_F_SYNC,
    CONN_F_TUNNEL,
    CONN_TAB_SIZE,
    IPVS_VERSION,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
)

if TYPE_CHECKING:
    from ..conn import Conn
    from ..model import Dest, Service

__all__ = [
    "DEFAULT_SVC_HASH_SALT",
    "HZ",
    "kernel_service_order",
    "proc_ip_vs",
    "proc_ip_vs_conn",
    "proc_ip_vs_conn_rows",
    "proc_ip_vs_conn_sync",
    "proc_ip_vs_pieces",
    "proc_ip_vs_stats",
    "proto_name",
    "remaining_seconds",
]

#: The golden kernel's tick rate; ``svc->timeout`` is kept in jiffies.
HZ = 250

#: Service buckets are ``IP_VS_SVC_TAB_BITS`` = 8 bits wide.
SVC_TAB_BITS = 8
SVC_TAB_MASK = (1 << SVC_TAB_BITS) - 1

#: The kernel mixes ``(size_t)netns_ipvs >> 8`` into the service hash, so the
#: bucket order depends on where the netns struct was allocated.  Only the low
#: 8 bits matter, and the struct is page-aligned, so the value is a multiple of
#: 16.  It changes from boot to boot: the lab kernel showed 0x10, 0x20, 0x30,
#: 0x60, 0x70 and 0xa0 in a dozen boots, none of them often enough to be "the"
#: value.  0x20 gives the golden machine's order (UDP 10.0.0.2:53, TCP
#: [2001:db8::1]:443, TCP 10.0.0.1:80).  An IPVS object may carry its own
#: ``svc_hash_salt`` (``Simulation(svc_hash_salt=...)``, ``lvsadm simulate
#: --svc-hash-salt``) to replay a recorded boot.
DEFAULT_SVC_HASH_SALT = 0x20

_U32 = 0xFFFFFFFF


# -- small helpers --------------------------------------------------------------------
def proto_name(protocol: int) -> str:
    """``ip_vs_proto_name``: the kernel's protocol label in /proc rows."""
    names = {0: "IP", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
    return names.get(protocol, f"IP_{protocol}")


def _fwd_name(conn_flags: int) -> str:
    """``ip_vs_fwd_name`` of ip_vs_ctl.c: anything not Local/Tunnel/Route is Masq."""
    method = conn_flags & CONN_F_FWD_MASK
    if method == CONN_F_LOCALNODE:
        return "Local"
    if method == CONN_F_TUNNEL:
        return "Tunnel"
    if method == CONN_F_DROUTE:
        return "Route"
    return "Masq"


def _int32(value: int) -> int:
    """A C ``int`` view of a number (what ``%d`` prints)."""
    value &= _U32
    return value - (1 << 32) if value & 0x80000000 else value


def _pi6(value: int) -> str:
    """The kernel's ``%pI6``: eight 4-digit lower-case hex groups, never compressed."""
    return ":".join(f"{(value >> (112 - 16 * i)) & 0xFFFF:04x}" for i in range(8))


def _fold(af: int, addr: int) -> int:
    if af == AF_INET6:
        return (addr ^ (addr >> 32) ^ (addr >> 64) ^ (addr >> 96)) & _U32
    return addr & _U32


def _svc_bucket(svc: Service, salt: int) -> int:
    """``ip_vs_svc_hashkey`` / ``ip_vs_svc_fwm_hashkey``: the service's bucket."""
    if svc.fwmark:
        return (salt ^ svc.fwmark) & SVC_TAB_MASK
    porth = svc.port & 0xFFFF
    ahash = _fold(svc.af, svc.addr) ^ salt
    return (svc.protocol ^ ahash ^ (porth >> SVC_TAB_BITS) ^ porth) & SVC_TAB_MASK


def kernel_service_order(ipvs: Any, salt: int | None = None) -> list[Service]:
    """The services as the kernel walks them (/proc/net/ip_vs, netlink dumps,
    so also ``ipvsadm --nosort``).

    The kernel keeps two tables of 256 buckets, one keyed by (protocol,
    address, port), one by firewall mark; a walk visits every bucket of the
    first, then every bucket of the second.  A new service is linked at the
    head of its bucket, so within a bucket the newest comes first.
    """
    if salt is None:
        salt = getattr(ipvs, "svc_hash_salt", DEFAULT_SVC_HASH_SALT)
    services = list(ipvs.services.values())
    by_port: list[tuple[int, int, Service]] = []
    by_mark: list[tuple[int, int, Service]] = []
    for age, svc in enumerate(services):
        row = (_svc_bucket(svc, salt), -age, svc)
        (by_mark if svc.fwmark else by_port).append(row)
    by_port.sort(key=lambda r: (r[0], r[1]))
    by_mark.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in by_port] + [r[2] for r in by_mark]


def remaining_seconds(expires: float, now: float) -> int:
    """``jiffies_delta_to_msecs(timer.expires - jiffies) / 1000``: whole seconds
    left on the timer, counted in jiffies of 1/HZ s, never below zero."""
    delta = expires - now
    if delta <= 0:
        return 0
    jiffies = math.floor(delta * HZ + 1e-6)
    return (jiffies * 1000 // HZ) // 1000


def table_conns(ipvs: Any) -> Iterable[Conn]:
    """The entries to list: the table's own, then copies of the entries other
    tables hold for the same director (``ipvs.remote_conns``: lvsd's
    ``--workers`` processes, gathered by the daemon before a listing)."""
    conns = ipvs.conns
    remote = ipvs.remote_conns
    if not remote:
        return () if conns is None else conns
    return itertools.chain(() if conns is None else conns, remote)


# -- /proc/net/ip_vs --------------------------------------------------------------------
def _dest_row(dest: Dest) -> str:
    if dest.af == AF_INET6:
        where = f"[{_pi6(dest.addr)}]:{dest.port:04X}"
    else:
        where = f"{dest.addr:08X}:{dest.port:04X}"
    return (
        f"  -> {where}      {_fwd_name(dest.conn_flags):<7} {_int32(dest.weight):<6d} "
        f"{_int32(dest.activeconns):<10d} {_int32(dest.inactconns):<10d}\n"
    )


def proc_ip_vs(ipvs: Any, salt: int | None = None) -> str:
    """``/proc/net/ip_vs``.

    Service rows: ``TCP  0A000001:0050 wlc  `` for IPv4 (``wlc ops `` with
    one-packet scheduling), ``TCP  [2001:0db8:...]:01BB mh `` for IPv6 (the
    kernel forgets ``ops`` there), ``FWM  00000007 sh `` for marks; then
    ``persistent <timeout in jiffies> <mask as %08X>`` or just the newline.
    The IPv6 "mask" is the prefix length passed through ``ntohl`` on a
    little-endian host (128 prints as ``80000000``).  Real servers follow in
    list order (newest first), addresses in hex, weight and counters as ``%d``.
    """
    return "".join(proc_ip_vs_pieces(ipvs, salt))


def proc_ip_vs_pieces(ipvs: Any, salt: int | None = None) -> Iterator[str]:
    """``/proc/net/ip_vs`` piece by piece: the header, then one piece per
    service (its row and its real servers'), so a caller can render a big
    table in steps, as the kernel's seq_file hands it out page by page."""
    version = getattr(ipvs, "version", IPVS_VERSION)
    size = getattr(ipvs, "conn_tab_size", CONN_TAB_SIZE)
    yield (
        f"IP Virtual Server version {version[0]}.{version[1]}.{version[2]} (size={size})\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
    )
    for svc in kernel_service_order(ipvs, salt):
        sched = svc.sched_name or "none"
        ops = "ops " if svc.flags & SVC_F_ONEPACKET else ""
        if svc.fwmark:
            line = f"FWM  {svc.fwmark & _U32:08X} {sched} {ops}"
        elif svc.af == AF_INET6:
            line = f"{proto_name(svc.protocol)}  [{_pi6(svc.addr)}]:{svc.port:04X} {sched} "
        else:
            line = f"{proto_name(svc.protocol)}  {svc.addr:08X}:{svc.port:04X} {sched} {ops} "
        if svc.flags & SVC_F_PERSISTENT:
            if svc.af == AF_INET6:
                mask = int.from_bytes((svc.netmask & _U32).to_bytes(4, "little"), "big")
            else:
                mask = svc.netmask & _U32
            line += f"persistent {_int32(svc.timeout * HZ)} {mask:08X}\n"
        else:
            line += "\n"
        yield line + "".join(_dest_row(d) for d in svc.destinations)


# -- /proc/net/ip_vs_stats ---------------------------------------------------------------
def proc_ip_vs_stats(ipvs: Any) -> str:
    """``/proc/net/ip_vs_stats``: the table's totals (``%8LX`` for counts,
    ``%16LX`` for bytes), a blank line, then the estimated rates."""
    conns, inpkts, outpkts, inbytes, outbytes = ipvs.stats.counters()
    cps, inpps, outpps, inbps, outbps = ipvs.stats.rates()
    return (
        "   Total Incoming Outgoing         Incoming         Outgoing\n"
        "   Conns  Packets  Packets            Bytes            Bytes\n"
        f"{conns:8X} {inpkts:8X} {outpkts:8X} {inbytes:16X} {outbytes:16X}\n\n"
        " Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
        f"{cps & _U32:8X} {inpps & _U32:8X} {outpps & _U32:8X} {inbps & _U32:16X} {outbps & _U32:16X}\n"
    )


# -- /proc/net/ip_vs_conn ----------------------------------------------------------------
CONN_HEADER = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
CONN_SYNC_HEADER = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires\n"


def _conn_fields(cp: Conn) -> tuple[str, str, str, str]:
    """(client address, virtual address, destination address, protocol) as
    printed: ``%08X`` for IPv4, ``%pI6`` for IPv6; the destination follows its
    own family (``daf``)."""
    if cp.af == AF_INET6:
        caddr, vaddr = _pi6(cp.caddr), _pi6(cp.vaddr)
    else:
        caddr, vaddr = f"{cp.caddr & _U32:08X}", f"{cp.vaddr & _U32:08X}"
    daf = getattr(cp, "daf", cp.af) or cp.af
    daddr = _pi6(cp.daddr) if daf == AF_INET6 else f"{cp.daddr & _U32:08X}"
    return caddr, vaddr, daddr, proto_name(cp.protocol)


def _pe_suffix(cp: Conn) -> str:
    """`` <pe name> <pe data>`` when the entry carries persistence-engine data."""
    data = getattr(cp, "pe_data", b"") or b""
    name = getattr(cp, "pe_name", "") or ""
    if not data:
        return ""
    text = data.decode("latin-1") if isinstance(data, (bytes, bytearray)) else str(data)
    return f" {name} {text}"


def proc_ip_vs_conn_rows(conns: Iterable[Conn], now: float) -> Iterator[str]:
    """The rows of ``/proc/net/ip_vs_conn`` (without the header), one per entry."""
    for cp in conns:
        caddr, vaddr, daddr, proto = _conn_fields(cp)
        yield (
            f"{proto:<3} {caddr} {cp.cport & 0xFFFF:04X} {vaddr} {cp.vport & 0xFFFF:04X} "
            f"{daddr} {cp.dport & 0xFFFF:04X} {cp.state_name():<11} "
            f"{remaining_seconds(cp.expires, now):7d}{_pe_suffix(cp)}\n"
        )


def proc_ip_vs_conn(ipvs: Any, now: float) -> str:
    """``/proc/net/ip_vs_conn``: every entry of the connection table (the
    kernel prints in hash-bucket order; pylvs prints in its table's order)."""
    return CONN_HEADER + "".join(proc_ip_vs_conn_rows(table_conns(ipvs), now))


def proc_ip_vs_conn_sync(ipvs: Any, now: float) -> str:
    """``/proc/net/ip_vs_conn_sync``: like ip_vs_conn without PE data, with an
    Origin column, ``SYNC`` for entries learnt from a master, else ``LOCAL``."""
    out = [CONN_SYNC_HEADER]
    for cp in table_conns(ipvs):
        caddr, vaddr, daddr, proto = _conn_fields(cp)
        origin = "SYNC" if cp.flags & CONN_F_SYNC else "LOCAL"
        out.append(
            f"{proto:<3} {caddr} {cp.cport & 0xFFFF:04X} {vaddr} {cp.vport & 0xFFFF:04X} "
            f"{daddr} {cp.dport & 0xFFFF:04X} {cp.state_name():<11} {origin:<6} "
            f"{remaining_seconds(cp.expires, now):7d}\n"
        )
    return "".join(out)
