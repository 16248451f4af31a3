"""pylvs's own JSON views of the table (``lvsadm --json``, the status page):
plain data for scripts, not an ipvsadm format.  Services and real servers come
in ``ipvsadm -L``'s order (:mod:`lvs.ipvsadm.listing`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .addr import format_ip
from .constants import (
    AF_INET,
    AF_INET6,
    CONN_F_DROUTE,
    CONN_F_FWD_MASK,
    CONN_F_LOCALNODE,
    CONN_F_MASQ,
    CONN_F_SYNC,
    CONN_F_TEMPLATE,
    CONN_F_TUNNEL,
    CONN_TAB_SIZE,
    DEST_F_AVAILABLE,
    DEST_F_OVERLOAD,
    IPVS_VERSION,
    PROTO_NAMES,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    TUN_TYPE_NAMES,
)
from .ipvsadm.listing import ordered_services, sched_flag_names
from .ipvsadm.proc import proto_name, remaining_seconds, table_conns
from .ipvsadm.sort import sort_dests

if TYPE_CHECKING:
    from .model import Dest, Service

__all__ = ["conns_json", "service_json", "services_json"]

_STATS_FIELDS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
_RATE_FIELDS = ("cps", "inpps", "outpps", "inbps", "outbps")
_FWD_JSON = {
    CONN_F_MASQ: "masq",
    CONN_F_LOCALNODE: "local",
    CONN_F_TUNNEL: "tunnel",
    CONN_F_DROUTE: "route",
}


def _af_name(af: int) -> str:
    return "inet6" if af == AF_INET6 else "inet"


def _stats_json(stats: Any) -> dict[str, dict[str, int]]:
    return {
        "counters": dict(zip(_STATS_FIELDS, stats.counters())),
        "rates": dict(zip(_RATE_FIELDS, stats.rates())),
    }


def _dest_json(dest: Dest) -> dict[str, Any]:
    tunnel = None
    if dest.conn_flags & CONN_F_FWD_MASK == CONN_F_TUNNEL:
        tunnel = {
            "type": TUN_TYPE_NAMES.get(dest.tun_type, str(dest.tun_type)),
            "port": dest.tun_port,
            "csum": ("nocsum", "csum", "remcsum")[dest.tun_flags] if 0 <= dest.tun_flags < 3 else None,
        }
    return {
        "af": _af_name(dest.af),
        "address": format_ip(dest.af, dest.addr),
        "port": dest.port,
        "forward": _FWD_JSON.get(dest.conn_flags & CONN_F_FWD_MASK, "bypass"),
        "weight": dest.weight,
        "u_threshold": dest.u_threshold,
        "l_threshold": dest.l_threshold,
        "active_conns": dest.activeconns,
        "inactive_conns": dest.inactconns,
        "persistent_conns": dest.persistconns,
        "available": bool(dest.flags & DEST_F_AVAILABLE),
        "overloaded": bool(dest.flags & DEST_F_OVERLOAD),
        "tunnel": tunnel,
        **_stats_json(dest.stats),
    }


def service_json(svc: Service) -> dict[str, Any]:
    persistent = bool(svc.flags & SVC_F_PERSISTENT)
    if svc.af == AF_INET6:
        netmask: Any = svc.netmask
    else:
        netmask = format_ip(AF_INET, svc.netmask & 0xFFFFFFFF)
    dests = sort_dests(svc.destinations)
    return {
        "af": _af_name(svc.af),
        "protocol": None if svc.fwmark else PROTO_NAMES.get(svc.protocol, "?").lower(),
        "address": None if svc.fwmark else format_ip(svc.af, svc.addr),
        "port": None if svc.fwmark else svc.port,
        "fwmark": svc.fwmark or None,
        "scheduler": svc.sched_name,
        "sched_flags": sched_flag_names(svc.sched_name, svc.flags),
        "persistent": persistent,
        "timeout": svc.timeout if persistent else None,
        "netmask": netmask,
        "pe_name": svc.pe_name or None,
        "one_packet": bool(svc.flags & SVC_F_ONEPACKET),
        **_stats_json(svc.stats),
        "destinations": [_dest_json(d) for d in dests],
        "kernel_order": [f"{format_ip(d.af, d.addr)}:{d.port}" for d in svc.destinations],
    }


def services_json(ipvs: Any, now: float) -> dict[str, Any]:
    """The service table as plain data, in ``ipvsadm -L``'s order.

    Keys: ``version`` ("1.2.1"), ``conn_tab_size``, ``time`` (the virtual
    time asked for), ``totals`` (``counters``/``rates`` of the whole table),
    ``services``: a list of objects with ``af`` ("inet"|"inet6"),
    ``protocol`` ("tcp"|"udp"|"sctp", null for a fwmark service), ``address``,
    ``port``, ``fwmark`` (null unless a mark service), ``scheduler``,
    ``sched_flags`` (e.g. ["sh-fallback","sh-port"]), ``persistent``,
    ``timeout`` (seconds, null unless persistent), ``netmask`` (dotted IPv4
    mask or IPv6 prefix length), ``pe_name``, ``one_packet``, ``counters``
    (conns, inpkts, outpkts, inbytes, outbytes), ``rates`` (cps, inpps,
    outpps, inbps, outbps), ``kernel_order`` (the real servers'
    ``addr:port`` in scheduling order, newest first) and ``destinations``
    (sorted as ipvsadm does): ``af``, ``address``, ``port``, ``forward``
    ("masq"|"local"|"tunnel"|"route"), ``weight``, ``u_threshold``,
    ``l_threshold``, ``active_conns``, ``inactive_conns``,
    ``persistent_conns``, ``available``, ``overloaded``, ``tunnel`` (null or
    ``type``/``port``/``csum``), ``counters``, ``rates``.
    """
    version = getattr(ipvs, "version", IPVS_VERSION)
    return {
        "version": ".".join(str(v) for v in version),
        "conn_tab_size": getattr(ipvs, "conn_tab_size", CONN_TAB_SIZE),
        "time": now,
        "totals": _stats_json(ipvs.stats),
        "services": [service_json(s) for s in ordered_services(ipvs)],
    }


def conns_json(ipvs: Any, now: float) -> list[dict[str, Any]]:
    """The connection table as plain data, one object per entry (templates
    included), in table order.

    Keys: ``protocol`` (kernel label: "TCP", "UDP", "SCTP", "IP" for fwmark
    templates), ``af``, ``client`` / ``virtual`` / ``destination`` (each
    ``{"address", "port"}``; the destination has its own ``af``), ``fwmark``,
    ``state`` (as /proc prints it), ``template`` (bool), ``forward``,
    ``expires_in`` (whole seconds left, as /proc shows), ``timeout``
    (seconds the timer is re-armed with), ``flags`` (raw IP_VS_CONN_F_*),
    ``origin`` ("LOCAL"|"SYNC"), ``pe_name`` and ``pe_data`` (null when absent).
    """
    out = []
    for cp in table_conns(ipvs):
        daf = getattr(cp, "daf", cp.af) or cp.af
        pe_data = getattr(cp, "pe_data", b"") or b""
        if isinstance(pe_data, (bytes, bytearray)):
            pe_text: str | None = pe_data.decode("latin-1") if pe_data else None
        else:
            pe_text = str(pe_data) or None
        out.append(
            {
                "protocol": proto_name(cp.protocol),
                "af": _af_name(cp.af),
                "client": {"address": format_ip(cp.af, cp.caddr), "port": cp.cport},
                "virtual": {"address": format_ip(cp.af, cp.vaddr), "port": cp.vport},
                "destination": {
                    "af": _af_name(daf),
                    "address": format_ip(daf, cp.daddr),
                    "port": cp.dport,
                },
                "fwmark": cp.fwmark,
                "state": cp.state_name(),
                "template": bool(cp.flags & CONN_F_TEMPLATE),
                "forward": _FWD_JSON.get(cp.flags & CONN_F_FWD_MASK, "bypass"),
                "expires_in": remaining_seconds(cp.expires, now),
                "timeout": cp.timeout,
                "flags": cp.flags,
                "origin": "SYNC" if cp.flags & CONN_F_SYNC else "LOCAL",
                "pe_name": getattr(cp, "pe_name", "") or None,
                "pe_data": pe_text,
            }
        )
    return out
