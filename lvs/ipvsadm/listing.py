"""ipvsadm's listings, byte for byte: ``-L``/``-l`` (with ``--stats``,
``--rate``, ``--exact``, ``--thresholds``, ``--persistent-conn``,
``--tun-info``, ``--nosort``), ``-L -c``, ``-L --timeout``, ``-L --daemon`` and
``-S`` (save).  pylvs's own JSON views of the table are :mod:`lvs.json_views`.

The layout rules are those of ipvsadm 1.31 (``print_title``,
``print_service_entry``, ``print_largenum``, ``print_conn``, ``list_conn``,
``list_all``, ``list_service``, ``list_timeout``, ``list_daemon`` in
ipvsadm.c) and of libipvs (``ipvs_cmp_services``/``ipvs_cmp_dests`` and the
glibc ``qsort`` they are handed to).  Notable quirks kept on purpose:

* Sorting subtracts unsigned 32-bit host-order addresses and firewall marks
  and reads the difference as a signed ``int``, so values more than 2^31
  apart compare the "wrong" way (10.0.0.1 sorts after 200.0.0.1).  The
  comparison is not transitive; the sort is glibc's top-down merge sort so
  the result matches in those cases too.
* IPv4 names are cut: a service's ``"%-4s %s"`` label at 33 characters, a
  real server's ``addr:port`` at 28.  IPv6 names are never cut.
* ``addr:port`` texts are built in a 60-byte buffer (59 characters at most).
* ``-L -c`` does not read the table directly: like ipvsadm it re-parses the
  text of ``/proc/net/ip_vs_conn`` (see :mod:`lvs.ipvsadm.proc`), so hex
  addresses, the PE columns and ``MM:SS`` expiry follow the same path.
* A firewall-mark service is a TCP service as far as the kernel reports it,
  so its real servers' ports are named as TCP ports without ``-n``.

Without ``-n`` addresses and ports go through the resolver
(:mod:`lvs.ipvsadm.names`: ``/etc/hosts`` and ``/etc/services`` only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..addr import format_ip, inet_pton
from ..constants import (
    AF_INET,
    AF_INET6,
    CONN_F_DROUTE,
    CONN_F_FWD_MASK,
    CONN_F_LOCALNODE,
    CONN_F_MASQ,
    CONN_F_TUNNEL,
    CONN_TAB_SIZE,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPVS_VERSION,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    SVC_F_SCHED3,
    SVC_F_SCHED_MASK,
    TUN_TYPE_GRE,
    TUN_TYPE_GUE,
    TUN_TYPE_IPIP,
)
from .libc import scan_d, scan_hx, strtoul
from .names import FilesResolver
from .proc import kernel_service_order, proc_ip_vs_conn_rows, table_conns
from .sort import cmp_dests, cmp_services, sort_dests, sort_services
from .sort import msort as merge_sort

if TYPE_CHECKING:
    from ..model import Dest, Service, ServiceKey

__all__ = [
    "cmp_dests",
    "cmp_services",
    "list_conns",
    "list_daemons",
    "list_services",
    "list_timeouts",
    "merge_sort",
    "ordered_services",
    "print_largenum",
    "save_rules",
    "sched_flag_names",
]

# ipvsadm's format bits (the values are pylvs's own; only their meaning matters).
FMT_NUMERIC = 0x0001
FMT_RULE = 0x0002
FMT_STATS = 0x0004
FMT_RATE = 0x0008
FMT_THRESHOLDS = 0x0010
FMT_PERSISTENTCONN = 0x0020
FMT_NOSORT = 0x0040
FMT_EXACT = 0x0080
FMT_TUN_INFO = 0x0100

_U32 = 0xFFFFFFFF
_ADDRPORT_MAX = 59  # snprintf into a 60-byte buffer
_SVC_NAME_CUT = 33
_DEST_NAME_CUT = 28

_TUN_FLAG_SHORT = ("-c", "+c", "r+c")
_TUN_FLAG_OPTS = ("--tun-nocsum", "--tun-csum", "--tun-remcsum")



# -- numbers ------------------------------------------------------------------------------
def _int32(value: int) -> int:
    """The C ``int`` an unsigned 32-bit difference turns into."""
    value &= _U32
    return value - (1 << 32) if value & 0x80000000 else value


def _u32(value: int) -> int:
    return value & _U32


def print_largenum(value: int, exact: bool = False) -> str:
    """ipvsadm ``print_largenum``: a 9-character column.

    Exact: the whole number right-aligned in 9, or in its length + 1 when it
    has more than 8 digits.  Otherwise below 10^8 as is, then thousands
    (``K``) below 10^9, millions (``M``) below 10^11, billions (``G``) below
    10^14, else trillions (``T``), each as ``%8llu`` plus the letter.
    """
    value &= (1 << 64) - 1
    if exact:
        text = str(value)
        return text.rjust(9 if len(text) <= 8 else len(text) + 1)
    if value < 100_000_000:
        return f"{value:9d}"
    if value < 1_000_000_000:
        return f"{value // 1000:8d}K"
    if value < 100_000_000_000:
        return f"{value // 1_000_000:8d}M"
    if value < 100_000_000_000_000:
        return f"{value // 1_000_000_000:8d}G"
    return f"{value // 1_000_000_000_000:8d}T"


def _kernel_protocol(svc: Service) -> int:
    """The protocol the kernel reports: a firewall-mark service is kept as TCP."""
    return IPPROTO_TCP if svc.fwmark else svc.protocol


# -- names --------------------------------------------------------------------------------
def _addrport(af: int, addr: int, port: int, proto: int, fmt: int, resolver: FilesResolver | None) -> str:
    """``addrport_to_anyname``: ``a.b.c.d:port`` or ``[v6]:port``, names
    looked up unless numeric, at most 59 characters."""
    if fmt & FMT_NUMERIC or resolver is None:
        host, serv = format_ip(af, addr), str(port)
    else:
        host = resolver.addr_name(af, addr) or format_ip(af, addr)
        serv = resolver.port_name(port, proto) or str(port)
    text = f"[{host}]:{serv}" if af == AF_INET6 else f"{host}:{serv}"
    return text[:_ADDRPORT_MAX]


def _protocol_label(proto: int) -> str:
    return {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP"}.get(proto, "?")


def _protocol_option(proto: int) -> str:
    return {IPPROTO_TCP: "-t", IPPROTO_UDP: "-u", IPPROTO_SCTP: "--sctp-service"}.get(proto, "--xxx-service")


def _fwd_name(conn_flags: int) -> str:
    """ipvsadm ``fwd_name`` (glibc prints a NULL ``%s`` as ``(null)``)."""
    return {
        CONN_F_MASQ: "Masq",
        CONN_F_LOCALNODE: "Local",
        CONN_F_TUNNEL: "Tunnel",
        CONN_F_DROUTE: "Route",
    }.get(conn_flags & CONN_F_FWD_MASK, "(null)")


def _fwd_switch(conn_flags: int) -> str:
    """ipvsadm ``fwd_switch``: the option that re-creates the method (Local saves as ``-g``)."""
    return {
        CONN_F_MASQ: "-m",
        CONN_F_TUNNEL: "-i",
        CONN_F_LOCALNODE: "-g",
        CONN_F_DROUTE: "-g",
    }.get(conn_flags & CONN_F_FWD_MASK, "(null)")


def sched_flag_names(sched_name: str, flags: int) -> list[str]:
    """ipvsadm ``print_sched_flags``: sh and mh name their two flags, any
    other scheduler shows ``flag-1``..``flag-3``."""
    if sched_name in ("sh", "mh"):
        table = ((SVC_F_SCHED1, f"{sched_name}-fallback"), (SVC_F_SCHED2, f"{sched_name}-port"))
    else:
        table = ((SVC_F_SCHED1, "flag-1"), (SVC_F_SCHED2, "flag-2"), (SVC_F_SCHED3, "flag-3"))
    return [name for bit, name in table if flags & bit]


def _tun_info(dest: Dest) -> str | None:
    """ipvsadm ``fwd_tun_info`` (a 16-byte buffer: 15 characters at most)."""
    if dest.conn_flags & CONN_F_FWD_MASK != CONN_F_TUNNEL:
        return None
    flag = _TUN_FLAG_SHORT[dest.tun_flags] if 0 <= dest.tun_flags < 3 else ""
    if dest.tun_type == TUN_TYPE_IPIP:
        text = "ipip"
    elif dest.tun_type == TUN_TYPE_GUE:
        text = f"gue:{dest.tun_port}:{flag}"
    elif dest.tun_type == TUN_TYPE_GRE:
        text = f"gre:{flag}"
    else:
        return None
    return text[:15]


# -- the service listing -------------------------------------------------------------------
def _title(fmt: int) -> str:
    """ipvsadm ``print_title``: the first matching of stats, rate, thresholds,
    persistent-conn, tun-info, else the plain title; none for -S."""
    prot = "Prot LocalAddress:Port"
    if fmt & FMT_STATS:
        cols = ("Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
        return f"{prot:<33} " + " ".join(f"{c:>8}" for c in cols) + "\n  -> RemoteAddress:Port\n"
    if fmt & FMT_RATE:
        cols = ("CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")
        return f"{prot:<33} " + " ".join(f"{c:>8}" for c in cols) + "\n  -> RemoteAddress:Port\n"
    if fmt & FMT_THRESHOLDS:
        cols = ("Uthreshold", "Lthreshold", "ActiveConn", "InActConn")
        return f"{prot:<33} " + " ".join(f"{c:<10}" for c in cols) + "\n  -> RemoteAddress:Port\n"
    if fmt & FMT_PERSISTENTCONN:
        return (
            f"{prot:<33} {'Weight':<9} {'PersistConn':<11} {'ActiveConn':<10} {'InActConn':<10}\n"
            "  -> RemoteAddress:Port\n"
        )
    if fmt & FMT_TUN_INFO:
        return (
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n"
        )
    if not fmt & FMT_RULE:
        return (
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        )
    return ""


def _svc_name(svc: Service, fmt: int, resolver: FilesResolver | None) -> str:
    if svc.fwmark:
        # print_service_entry and the -S rule print the u32 mark with "%d":
        # marks from 2^31 up come out negative (checked on the lab kernel)
        mark = _int32(svc.fwmark)
        if fmt & FMT_RULE:
            return f"-f {mark} -6" if svc.af == AF_INET6 else f"-f {mark}"
        return f"FWM  {mark} IPv6" if svc.af == AF_INET6 else f"FWM  {mark}"
    vname = _addrport(svc.af, svc.addr, svc.port, svc.protocol, fmt, resolver)
    if fmt & FMT_RULE:
        return f"{_protocol_option(svc.protocol)} {vname}"
    name = f"{_protocol_label(svc.protocol):<4} {vname}"
    return name if svc.af == AF_INET6 else name[:_SVC_NAME_CUT]


def _mask_text(svc: Service) -> str | None:
    """The persistence mask when it is not the default (/32 or /128)."""
    if svc.af == AF_INET6:
        return None if svc.netmask == 128 else str(_int32(svc.netmask))
    if _u32(svc.netmask) == _U32:
        return None
    return format_ip(AF_INET, _u32(svc.netmask))


def _service_line(svc: Service, svc_name: str, fmt: int) -> str:
    exact = bool(fmt & FMT_EXACT)
    if fmt & FMT_RULE:
        text = f"-A {svc_name} -s {svc.sched_name}"
        if svc.flags & SVC_F_PERSISTENT:
            text += f" -p {_u32(svc.timeout)}"
            mask = _mask_text(svc)
            if mask is not None:
                text += f" -M {mask}"
        if svc.pe_name:
            text += f" --pe {svc.pe_name}"
        if svc.flags & SVC_F_ONEPACKET:
            text += " -o"
        if svc.flags & SVC_F_SCHED_MASK:
            text += " -b " + ",".join(sched_flag_names(svc.sched_name, svc.flags))
        return text + "\n"
    if fmt & FMT_STATS:
        return f"{svc_name:<33}" + "".join(print_largenum(v, exact) for v in svc.stats.counters()) + "\n"
    if fmt & FMT_RATE:
        return f"{svc_name:<33}" + "".join(print_largenum(v, exact) for v in svc.stats.rates()) + "\n"
    text = f"{svc_name} {svc.sched_name}"
    if svc.flags & SVC_F_SCHED_MASK:
        text += " (" + ",".join(sched_flag_names(svc.sched_name, svc.flags)) + ")"
    if svc.flags & SVC_F_PERSISTENT:
        text += f" persistent {_u32(svc.timeout)}"
        mask = _mask_text(svc)
        if mask is not None:
            text += f" mask {mask}"
        if svc.pe_name:
            text += f" pe {svc.pe_name}"
    if svc.flags & SVC_F_ONEPACKET:
        text += " ops"
    return text + "\n"


def _tunnel_rule(svc_name: str, dname: str, dest: Dest) -> str:
    """ipvsadm ``print_tunnel_rule``: ``--tun-type`` and its options."""
    head = f"-a {svc_name} -r {dname} {_fwd_switch(dest.conn_flags)} -w {_int32(dest.weight)}"
    opt = _TUN_FLAG_OPTS[dest.tun_flags] if 0 <= dest.tun_flags < 3 else ""
    if dest.tun_type == TUN_TYPE_GRE:
        return f"{head} --tun-type gre {opt}\n"
    if dest.tun_type == TUN_TYPE_GUE:
        return f"{head} --tun-type gue --tun-port {dest.tun_port & 0xFFFF} {opt}\n"
    if dest.tun_type == TUN_TYPE_IPIP:
        return f"{head} --tun-type ipip\n"
    return head + "\n"


def _dest_line(svc_name: str, dest: Dest, proto: int, fmt: int, resolver: FilesResolver | None) -> str:
    dname = _addrport(dest.af, dest.addr, dest.port, proto, fmt, resolver)
    if not fmt & FMT_RULE and dest.af != AF_INET6:
        dname = dname[:_DEST_NAME_CUT]
    exact = bool(fmt & FMT_EXACT)
    weight = _int32(dest.weight)
    active, inactive = _u32(dest.activeconns), _u32(dest.inactconns)
    if fmt & FMT_RULE:
        if dest.conn_flags & CONN_F_FWD_MASK == CONN_F_TUNNEL:
            return _tunnel_rule(svc_name, dname, dest)
        return f"-a {svc_name} -r {dname} {_fwd_switch(dest.conn_flags)} -w {weight}\n"
    if fmt & FMT_STATS:
        return f"  -> {dname:<28}" + "".join(print_largenum(v, exact) for v in dest.stats.counters()) + "\n"
    if fmt & FMT_RATE:
        cps, inpps, outpps, inbps, outbps = dest.stats.rates()
        return (
            f"  -> {dname:<28} {cps:8d} {inpps:8d} {outpps:8d}"
            + print_largenum(inbps, exact)
            + print_largenum(outbps, exact)
            + "\n"
        )
    if fmt & FMT_THRESHOLDS:
        return (
            f"  -> {dname:<28} {_u32(dest.u_threshold):<10} {_u32(dest.l_threshold):<10} "
            f"{active:<10} {inactive:<10}\n"
        )
    if fmt & FMT_PERSISTENTCONN:
        return (
            f"  -> {dname:<28} {_u32(dest.weight):<9} {_u32(dest.persistconns):<11} "
            f"{active:<10} {inactive:<10}\n"
        )
    if fmt & FMT_TUN_INFO:
        info = _tun_info(dest) or "n/a"
        return (
            f"  -> {dname:<28} {_fwd_name(dest.conn_flags):<7} {info:<13} {weight:<6} "
            f"{active:<10} {inactive:<10}\n"
        )
    return f"  -> {dname:<28} {_fwd_name(dest.conn_flags):<7} {weight:<6} {active:<10} {inactive:<10}\n"


def _service_entry(svc: Service, fmt: int, resolver: FilesResolver | None) -> str:
    """ipvsadm ``print_service_entry``: the service line and its real servers
    (sorted unless --nosort, else in the kernel's list order)."""
    svc_name = _svc_name(svc, fmt, resolver)
    out = [_service_line(svc, svc_name, fmt)]
    dests = list(svc.destinations)
    if not fmt & FMT_NOSORT:
        dests = sort_dests(dests)
    proto = _kernel_protocol(svc)
    out.extend(_dest_line(svc_name, d, proto, fmt, resolver) for d in dests)
    return "".join(out)


def ordered_services(ipvs: Any, fmt: int = 0) -> list[Service]:
    """The services in ``ipvsadm -L``'s order (``fmt`` with FMT_NOSORT: the kernel's)."""
    services = kernel_service_order(ipvs)
    if not fmt & FMT_NOSORT:
        services = sort_services(services)
    return services


def _banner(ipvs: Any) -> str:
    version = getattr(ipvs, "version", IPVS_VERSION)
    size = getattr(ipvs, "conn_tab_size", CONN_TAB_SIZE)
    return f"IP Virtual Server version {version[0]}.{version[1]}.{version[2]} (size={size})\n"


def _pick_resolver(numeric: bool, resolver: FilesResolver | None) -> FilesResolver | None:
    """No names with ``-n``; without a resolver, none are known."""
    return None if numeric else resolver


def list_services(
    ipvs: Any,
    now: float,
    *,
    numeric: bool,
    stats: bool,
    rate: bool,
    exact: bool,
    thresholds: bool,
    persistent_conn: bool,
    tun_info: bool,
    sort: bool,
    key: ServiceKey | None = None,
    resolver: FilesResolver | None = None,
) -> str:
    """``ipvsadm -L`` (ipvsadm ``list_all``) or, with ``key``, ``ipvsadm -L
    -t|-u|-f ...`` (``list_service``: titles and that service, no banner).

    ``sort=False`` is ``--nosort``: services and real servers in the kernel's
    own order.  A missing ``key`` raises the kernel's ESRCH
    (:class:`lvs.errors.IPVSError`, "No such service").
    """
    fmt = _make_fmt(
        numeric=numeric,
        stats=stats,
        rate=rate,
        exact=exact,
        thresholds=thresholds,
        persistent_conn=persistent_conn,
        tun_info=tun_info,
        sort=sort,
    )
    res = _pick_resolver(numeric, resolver)
    if key is not None:
        svc = ipvs.get_service(key)
        return _title(fmt) + _service_entry(svc, fmt, res)
    out = [_banner(ipvs), _title(fmt)]
    out.extend(_service_entry(svc, fmt, res) for svc in ordered_services(ipvs, fmt))
    return "".join(out)


def _make_fmt(
    *,
    numeric: bool = False,
    stats: bool = False,
    rate: bool = False,
    exact: bool = False,
    thresholds: bool = False,
    persistent_conn: bool = False,
    tun_info: bool = False,
    sort: bool = True,
    rule: bool = False,
) -> int:
    fmt = 0
    for flag, bit in (
        (numeric, FMT_NUMERIC),
        (stats, FMT_STATS),
        (rate, FMT_RATE),
        (exact, FMT_EXACT),
        (thresholds, FMT_THRESHOLDS),
        (persistent_conn, FMT_PERSISTENTCONN),
        (tun_info, FMT_TUN_INFO),
        (not sort, FMT_NOSORT),
        (rule, FMT_RULE),
    ):
        if flag:
            fmt |= bit
    return fmt


def save_rules(ipvs: Any, *, numeric: bool, sort: bool = True, resolver: FilesResolver | None = None) -> str:
    """``ipvsadm -S`` (``list_all`` with the rule format): one ``-A`` line per
    service and one ``-a`` line per real server, no banner, no title.
    Thresholds are not saved; the Local method is saved as ``-g``."""
    fmt = _make_fmt(numeric=numeric, sort=sort, rule=True)
    res = _pick_resolver(numeric, resolver)
    return "".join(_service_entry(svc, fmt, res) for svc in ordered_services(ipvs, fmt))


# -- connections (-L -c) -----------------------------------------------------------------
def _hex_u32(token: str) -> int:
    """``(u32) strtoul(token, NULL, 16)``: an IPv4 address of /proc's conn lines."""
    return strtoul(token, 16) & _U32


def _parse_conn_line(line: str) -> dict[str, Any] | None:
    """ipvsadm ``print_conn``'s ``sscanf("%s %s %hX %s %hX %s %hX %s %d %s %s")``.

    Returns the converted fields and their count ``n`` (None when nothing
    converts, where ipvsadm would exit)."""
    toks = line.split()
    kinds = ("s", "s", "x", "s", "x", "s", "x", "s", "d", "s", "s")
    values: list[Any] = []
    for kind, tok in zip(kinds, toks):
        if kind == "s":
            values.append(tok)
        elif kind == "x":
            v = scan_hx(tok)
            if v is None:
                break
            values.append(v)
        else:
            v = scan_d(tok)
            if v is None:
                break
            values.append(v)
    if not values:
        return None
    n = len(values)
    defaults: list[Any] = ["", "", 0, "", 0, "", 0, "", 0, "", ""]
    values += defaults[n:]
    names = ("protocol", "c", "cport", "v", "vport", "d", "dport", "state", "expires", "pe_name", "pe_data")
    fields = dict(zip(names, values))
    fields["n"] = n
    return fields


def _conn_row(line: str, fmt: int, resolver: FilesResolver | None) -> str:
    f = _parse_conn_line(line)
    if f is None:
        return ""
    proto = {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP, "SCTP": IPPROTO_SCTP}.get(f["protocol"], 0)
    af = AF_INET
    caddr = inet_pton(AF_INET6, f["c"])
    if caddr is not None:
        af = AF_INET6
        vaddr = inet_pton(AF_INET6, f["v"]) or 0
    else:
        caddr = inet_pton(AF_INET, f["c"])
        if caddr is not None:
            vaddr = inet_pton(AF_INET, f["v"]) or 0
        else:
            caddr, vaddr = _hex_u32(f["c"]), _hex_u32(f["v"])
    daf = AF_INET
    daddr = inet_pton(AF_INET6, f["d"])
    if daddr is not None:
        daf = AF_INET6
    else:
        daddr = inet_pton(AF_INET, f["d"])
        if daddr is None:
            daddr = _hex_u32(f["d"])
    cname = _addrport(af, caddr, f["cport"], proto, fmt, resolver)
    vname = _addrport(af, vaddr, f["vport"], proto, fmt, resolver)
    dname = _addrport(daf, daddr, f["dport"], proto, fmt, resolver)
    expires = _u32(f["expires"])
    expire = f"{expires // 60:02d}:{expires % 60:02d}"
    head = f"{f['protocol']:<3} {expire:<6} {f['state']:<11} {cname:<18} {vname:<18} "
    if fmt & FMT_PERSISTENTCONN and f["n"] == 11:
        return head + f"{dname:<16} {f['pe_name']:<18} {f['pe_data']}\n"
    return head + f"{dname}\n"


def list_conns(
    ipvs: Any,
    now: float,
    *,
    numeric: bool,
    persistent_conn: bool,
    resolver: FilesResolver | None = None,
) -> str:
    """``ipvsadm -L -c`` (``list_conn``/``print_conn``): the ``/proc/net/ip_vs_conn``
    rows re-read and printed as ``pro expire state source virtual destination``
    (``--persistent-conn`` adds the PE name and data columns, filled only for
    rows that carry them)."""
    fmt = _make_fmt(numeric=numeric, persistent_conn=persistent_conn)
    res = _pick_resolver(numeric, resolver)
    out = ["IPVS connection entries\n"]
    if persistent_conn:
        out.append(
            f"pro expire {'state':<11} {'source':<18} {'virtual':<18} {'destination':<18} "
            f"{'pe name':<16} pe_data\n"
        )
    else:
        out.append(f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination\n")
    for line in proc_ip_vs_conn_rows(table_conns(ipvs), now):
        out.append(_conn_row(line, fmt, res))
    return "".join(out)


# -- timeouts, daemons ---------------------------------------------------------------------
def list_timeouts(ipvs: Any) -> str:
    """``ipvsadm -L --timeout`` (``list_timeout``)."""
    tcp, tcpfin, udp = ipvs.get_timeouts()
    return f"Timeout (tcp tcpfin udp): {_int32(tcp)} {_int32(tcpfin)} {_int32(udp)}\n"


#: what the kernel fills in when a daemon is started without them (ip_vs_sync.c)
_SYNC_DEFAULT_GROUP = "224.0.0.81"
_SYNC_DEFAULT_PORT = 8848
_SYNC_DEFAULT_TTL = 1
_SYNC_DEFAULT_MTU = 1500


def list_daemons(ipvs: Any) -> str:
    """``ipvsadm -L --daemon`` (``list_daemon``): master first, then backup.

    The kernel reports a started daemon with its defaults filled in
    (group 224.0.0.81, port 8848, ttl 1, maxlen = 1500 minus the IP and UDP
    headers), so values left at 0 or empty are shown that way.
    """
    out = []
    daemons = getattr(ipvs, "daemons", {}) or {}
    for state in ("master", "backup"):
        d = daemons.get(state)
        if d is None:
            continue
        group = d.mcast_group or _SYNC_DEFAULT_GROUP
        hlen = 48 if ":" in group else 28
        maxlen = d.sync_maxlen or (_SYNC_DEFAULT_MTU - hlen)
        text = f"{state} sync daemon (mcast={d.mcast_ifn}, syncid={_int32(d.syncid)}"
        if maxlen:
            text += f", maxlen={maxlen}"
        if group:
            text += f", group={group}"
        port = d.mcast_port or _SYNC_DEFAULT_PORT
        if port:
            text += f", port={port}"
        ttl = d.mcast_ttl or _SYNC_DEFAULT_TTL
        if ttl:
            text += f", ttl={ttl}"
        out.append(text + ")\n")
    return "".join(out)
