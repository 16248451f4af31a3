"""keepalived.conf, read as keepalived 2.2 reads it (its LVS half).

``parse_keepalived(text, path, include=...)`` turns an unmodified
keepalived.conf into :class:`~lvs.health.VirtualServerConf` objects.  The
grammar is keepalived's (lib/parser.c, check/check_parser.c, check_*.c):
``keyword args...`` statements, ``{ ... }`` blocks, ``!`` and ``#`` comments,
``"quoted strings"``, ``include PATTERN`` anywhere (the caller resolves the
glob and hands in the files' texts, so this module opens nothing).

Defaults as keepalived's: protocol UDP when none is given (keepalived warns
too), lb_algo wlc, lb_kind NAT, delay_loop 60 s, connect_timeout 5 s, weight
1, quorum 1.  ``global_defs``, ``vrrp_*`` and the other VRRP/BFD blocks are
skipped: ``keepalived --vrrp`` runs them beside lvsd.

Problems keepalived would refuse or silently mangle (an unbalanced brace, an
address that is not one, a number out of range, an unknown scheduler) raise
:class:`KeepalivedConfError` worded ``FILE:LINE: message``; unknown keywords
are warnings (``FILE:LINE: unknown keyword 'x'``), as keepalived logs them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .addr import parse_ip, v4_mask_from_text
from .constants import (
    AF_INET,
    AF_INET6,
    CONN_F_DROUTE,
    CONN_F_MASQ,
    CONN_F_TUNNEL,
    DEFAULT_PERSISTENT_TIMEOUT,
    INT_MAX,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    SVC_F_SCHED3,
    TUN_F_CSUM,
    TUN_F_NOCSUM,
    TUN_F_REMCSUM,
    TUN_TYPE_GRE,
    TUN_TYPE_GUE,
    TUN_TYPE_IPIP,
)
from .health import CHECKER_KINDS, CheckerConf, RealServerConf, VirtualServerConf, fmt_vs, split_command
from .model import ServiceKey
from .sched import get_scheduler

#: (pattern, the including file) -> [(path, text), ...] in glob order
Includer = Callable[[str, str], list[tuple[str, str]]]

#: top-level blocks of keepalived's other halves, skipped here
VRRP_BLOCKS = (
    "global_defs", "vrrp_script", "vrrp_instance", "vrrp_sync_group", "vrrp_group", "static_ipaddress",
    "static_routes", "static_rules", "linkbeat_interfaces", "bfd_instance", "track_file", "vrrp_track_file",
    "track_process", "vrrp_track_process", "garp_group", "net_namespace", "net_namespace_ipvs",
    "instance", "use_pid_dir", "SSL",
)  # fmt: skip
MAX_INCLUDE_DEPTH = 20
PROTOCOLS = {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP, "SCTP": IPPROTO_SCTP}
METHODS = {"NAT": CONN_F_MASQ, "DR": CONN_F_DROUTE, "TUN": CONN_F_TUNNEL}
TUN_TYPES = {"ipip": TUN_TYPE_IPIP, "gue": TUN_TYPE_GUE, "gre": TUN_TYPE_GRE}
TUN_CSUM = {"nocsum": TUN_F_NOCSUM, "csum": TUN_F_CSUM, "remcsum": TUN_F_REMCSUM}
DNS_TYPES = ("A", "NS", "CNAME", "SOA", "MX", "TXT", "AAAA", "RRSIG", "DNSKEY")
CHECKER_COMMON = {
    "connect_ip", "connect_port", "bindto", "bind_port", "bind_if", "connect_timeout", "fwmark", "retry",
    "delay_before_retry", "warmup", "delay_loop", "alpha", "log_all_failures",
}  # fmt: skip
CHECKER_OWN = {
    "TCP_CHECK": set(),
    "HTTP_GET": {"url", "virtualhost", "fast_recovery", "http_protocol", "nb_get_retry"},
    "SSL_GET": {"url", "virtualhost", "fast_recovery", "http_protocol", "nb_get_retry", "enable_sni"},
    "UDP_CHECK": {"payload", "require_reply", "min_reply_length", "max_reply_length"},
    "DNS_CHECK": {"type", "name"},
    "MISC_CHECK": {"misc_path", "misc_timeout", "misc_dynamic", "user"},
    "PING_CHECK": set(),
    "SMTP_CHECK": {"helo_name", "host"},
}  # fmt: skip
UNSUPPORTED_CHECKERS = ("FILE_CHECK", "BFD_CHECK")


class KeepalivedConfError(ValueError):
    """A configuration error, worded ``FILE:LINE: message``."""


@dataclass
class Node:
    """One statement: ``keyword args`` and, for a block, its children."""

    keyword: str
    args: list[str]
    file: str
    line: int
    children: list[Node] | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class KeepalivedConfig:
    services: list[VirtualServerConf] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: one line per skipped VRRP-side block kind
    skipped: list[str] = field(default_factory=list)


# -- lexing -----------------------------------------------------------------------------------
_TOKEN = re.compile(r'"([^"]*)"?|([{}])|([^\s{}"]+)')
EOL = "\n"


def _tokens(text: str, path: str, include: Includer | None, depth: int) -> list[tuple[str, str, int]]:
    """(token, file, line) with EOL markers; ``include`` lines expanded in place."""
    out: list[tuple[str, str, int]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line: list[str] = []
        for m in _TOKEN.finditer(raw):
            quoted, brace, word = m.groups()
            if word is not None and word[0] in "!#":
                break
            line.append(quoted if quoted is not None else brace or word)
        if line and line[0] == "include":
            if len(line) < 2:
                raise KeepalivedConfError(f"{path}:{lineno}: include needs a file name")
            if depth >= MAX_INCLUDE_DEPTH:
                raise KeepalivedConfError(f"{path}:{lineno}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
            if include is None:
                raise KeepalivedConfError(f"{path}:{lineno}: include not available here")
            for inc_path, inc_text in include(line[1], path):
                out.extend(_tokens(inc_text, inc_path, include, depth + 1))
            continue
        out.extend((tok, path, lineno) for tok in line)
        out.append((EOL, path, lineno))
    return out


def _tree(tokens: list[tuple[str, str, int]]) -> list[Node]:
    pos = 0

    def block(opener: Node | None) -> list[Node]:
        nonlocal pos
        items: list[Node] = []
        current: list[tuple[str, str, int]] = []

        def flush() -> None:
            if current:
                items.append(
                    Node(current[0][0], [t for t, _, _ in current[1:]], current[0][1], current[0][2])
                )
                current.clear()

        while pos < len(tokens):
            tok, fname, line = tokens[pos]
            pos += 1
            if tok == EOL:
                flush()
            elif tok == "{":
                flush()
                if not items:
                    raise KeepalivedConfError(f"{fname}:{line}: '{{' without a keyword before it")
                node = items[-1]
                if node.children is not None:
                    raise KeepalivedConfError(f"{fname}:{line}: '{{' without a keyword before it")
                node.children = block(node)
            elif tok == "}":
                flush()
                if opener is None:
                    raise KeepalivedConfError(f"{fname}:{line}: unexpected '}}'")
                return items
            else:
                current.append((tok, fname, line))
        flush()
        if opener is not None:
            raise KeepalivedConfError(f"{opener.where}: block '{opener.keyword}' is missing its closing '}}'")
        return items

    return block(None)


# -- values -----------------------------------------------------------------------------------
class _Ctx:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.groups: dict[str, list[ServiceKey | tuple[int, int, int, int]]] = {}

    def warn(self, node: Node, text: str) -> None:
        self.warnings.append(f"{node.where}: {text}")


def _fail(node: Node, text: str) -> KeepalivedConfError:
    return KeepalivedConfError(f"{node.where}: {text}")


def _arg(node: Node, i: int = 0) -> str:
    if len(node.args) <= i:
        raise _fail(node, f"{node.keyword} needs a value")
    return node.args[i]


def _uint(node: Node, lo: int, hi: int, i: int = 0) -> int:
    text = _arg(node, i)
    try:
        value = int(text, 10)
    except ValueError:
        raise _fail(node, f"{node.keyword} '{text}' is not a number") from None
    if not lo <= value <= hi:
        raise _fail(node, f"{node.keyword} {value} is outside range {lo}-{hi}")
    return value


def _timer(node: Node, lo: float = 0.0) -> float:
    """keepalived's read_timer: seconds, fractions allowed."""
    text = _arg(node)
    try:
        value = float(text)
    except ValueError:
        raise _fail(node, f"{node.keyword} '{text}' is invalid") from None
    if value < lo or value != value or value > 1e9:
        raise _fail(node, f"{node.keyword} '{text}' is invalid")
    return value


def _bool(node: Node) -> bool:
    if not node.args:
        return True
    text = node.args[0].lower()
    if text in ("true", "on", "yes"):
        return True
    if text in ("false", "off", "no"):
        return False
    raise _fail(node, f"invalid {node.keyword} value '{node.args[0]}'")


def _script(node: Node) -> str:
    """A script keyword's command: its first word (quoted when it has
    spaces); :func:`split_command` makes the argument list, as keepalived's
    set_script_params_array does."""
    if not node.args:
        raise _fail(node, f"{node.keyword} needs a script")
    if split_command(node.args[0]) is None:
        raise _fail(node, f"String '{node.args[0]}': missing terminating quote")
    return node.args[0]


def _ip(node: Node, text: str) -> tuple[int, int]:
    try:
        return parse_ip(text)
    except (ValueError, OSError):
        raise _fail(node, f"invalid address '{text}'") from None


def _port(node: Node, text: str | None) -> int:
    if text is None:
        return 0
    try:
        port = int(text)
    except ValueError:
        raise _fail(node, f"invalid port '{text}'") from None
    if not 0 <= port <= 65535:
        raise _fail(node, f"invalid port '{text}'")
    return port


# -- parsing ----------------------------------------------------------------------------------
def parse_keepalived(
    text: str, path: str = "keepalived.conf", include: Includer | None = None
) -> KeepalivedConfig:
    """Parse keepalived.conf text.  Raises KeepalivedConfError; warnings are
    returned in the result."""
    tree = _tree(_tokens(text, path, include, 0))
    ctx = _Ctx()
    cfg = KeepalivedConfig()
    skipped: set[str] = set()
    for node in tree:
        if node.keyword == "virtual_server_group":
            _vsg(ctx, node)
    for node in tree:
        kw = node.keyword
        if kw == "virtual_server":
            cfg.services.append(_vs(ctx, node))
        elif kw == "virtual_server_group":
            continue
        elif kw in VRRP_BLOCKS or kw.startswith("vrrp_") or kw.startswith("@"):
            skipped.add(kw)
        elif kw.startswith("$"):
            ctx.warn(node, f"parameter definitions ({kw}) are not supported: ignored")
        else:
            ctx.warn(node, f"unknown keyword '{kw}'")
    if skipped:
        cfg.skipped.append(
            f"skipped {', '.join(sorted(skipped))}: not lvsd's part; `keepalived --vrrp` runs them"
        )
    seen: dict[ServiceKey, str] = {}
    for vs in cfg.services:
        for key in vs.keys:
            if key in seen:
                raise KeepalivedConfError(
                    f"{vs.where}: virtual server {vs.name} already defined at {seen[key]}"
                )
            seen[key] = vs.where
    cfg.warnings = ctx.warnings
    return cfg


def health_from_nodes(node: Node, warnings: list[str]) -> VirtualServerConf:
    """One ``virtual_server`` statement tree (as lvsd's YAML config builds it)
    read with keepalived's rules; warnings are appended to ``warnings``."""
    ctx = _Ctx()
    vs = _vs(ctx, node)
    warnings.extend(ctx.warnings)
    return vs


def _vsg(ctx: _Ctx, node: Node) -> None:
    """virtual_server_group NAME { ADDR[-END] PORT | fwmark N }."""
    name = _arg(node)
    entries: list[ServiceKey | tuple[int, int, int, int]] = []
    for child in node.children or []:
        if child.keyword == "fwmark":
            entries.append(ServiceKey(AF_INET, 0, 0, 0, _uint(child, 1, 2**32 - 1)))
            continue
        addr_text = child.keyword
        end = None
        if "-" in addr_text and ":" not in addr_text:
            addr_text, end_text = addr_text.rsplit("-", 1)
            try:
                end = int(end_text)
            except ValueError:
                raise _fail(child, f"invalid address range '{child.keyword}'") from None
        af, addr = _ip(child, addr_text)
        port = _port(child, child.args[0] if child.args else None)
        last = addr if end is None else (addr & ~0xFF) | end
        if last < addr or last - addr > 255:
            raise _fail(child, f"invalid address range '{child.keyword}'")
        entries.append((af, addr, last, port))
    ctx.groups[name] = entries


def _forwarding(node: Node, target: VirtualServerConf | RealServerConf) -> None:
    """lb_kind / lvs_method NAT|DR|TUN [type ipip|gue|gre] [port N] [csum options]."""
    method = _arg(node)
    if method not in METHODS:
        raise _fail(node, f"unknown [{method}] routing method")
    tun_type, tun_port, csum = TUN_TYPE_IPIP, 0, TUN_F_NOCSUM
    args = node.args[1:]
    i = 0
    while i < len(args):
        word = args[i]
        if word == "type" and i + 1 < len(args) and args[i + 1] in TUN_TYPES:
            tun_type = TUN_TYPES[args[i + 1]]
            i += 2
        elif word == "port" and i + 1 < len(args):
            tun_port = _port(node, args[i + 1])
            i += 2
        elif word in TUN_CSUM:
            csum = TUN_CSUM[word]
            i += 1
        else:
            raise _fail(node, f"invalid tunnel option {word}")
    if (tun_type == TUN_TYPE_GUE) != (tun_port != 0):
        raise _fail(node, "gue tunnels require port, otherwise cannot have port")
    if tun_type == TUN_TYPE_IPIP and csum != TUN_F_NOCSUM:
        raise _fail(node, "ipip tunnels do not support checksum option")
    if tun_type == TUN_TYPE_GRE and csum == TUN_F_REMCSUM:
        raise _fail(node, "gre tunnels do not support remote checksum option")
    target.fwd = METHODS[method]
    target.tun_type, target.tun_port, target.tun_flags = tun_type, tun_port, csum


SCHED_FLAG_WORDS = {
    "flag-1": SVC_F_SCHED1, "flag-2": SVC_F_SCHED2, "flag-3": SVC_F_SCHED3,
    "sh-fallback": SVC_F_SCHED1, "sh-port": SVC_F_SCHED2,
    "mh-fallback": SVC_F_SCHED1, "mh-port": SVC_F_SCHED2,
}  # fmt: skip


def _vs(ctx: _Ctx, node: Node) -> VirtualServerConf:
    args = node.args
    if not args:
        raise _fail(node, "virtual_server needs an address and port, fwmark N or group NAME")
    group: str | None = None
    fwmark = 0
    af = AF_INET
    addr = port = 0
    if args[0] == "group":
        group = _arg(node, 1)
        if group not in ctx.groups:
            raise _fail(node, f"virtual server group {group} not defined")
    elif args[0] == "fwmark":
        fwmark = _uint(node, 0, 2**32 - 1, 1)
    else:
        af, addr = _ip(node, args[0])
        port = _port(node, args[1] if len(args) > 1 else None)
    vs = VirtualServerConf(name="", keys=[], where=node.where)
    protocol = 0
    persistent = False
    granularity: int | None = None
    ip_family: int | None = None
    rs_nodes: list[Node] = []
    sorry_node: Node | None = None
    for child in node.children or []:
        kw = child.keyword
        if kw in ("lb_algo", "lvs_sched"):
            name = _arg(child)
            if get_scheduler(name) is None:
                raise _fail(child, f"Invalid lvs_scheduler '{name}'")
            vs.sched = name
        elif kw in ("lb_kind", "lvs_method"):
            _forwarding(child, vs)
        elif kw == "protocol":
            text = _arg(child).upper()
            if text not in PROTOCOLS:
                raise _fail(child, f"Unknown protocol {child.args[0]}")
            protocol = PROTOCOLS[text]
        elif kw == "persistence_timeout":
            vs.timeout = _uint(child, 1, INT_MAX // 250) if child.args else DEFAULT_PERSISTENT_TIMEOUT
            persistent = True
        elif kw == "persistence_granularity":
            text = _arg(child)
            try:
                granularity = int(text) if ":" not in text and "." not in text else v4_mask_from_text(text)
            except ValueError:
                raise _fail(child, f"Invalid persistence_granularity specified - {text}") from None
        elif kw == "persistence_engine":
            vs.pe = _arg(child)
        elif kw == "ops":
            vs.flags |= SVC_F_ONEPACKET
        elif kw in SCHED_FLAG_WORDS:
            if kw[:2] in ("sh", "mh") and vs.sched != kw[:2]:
                ctx.warn(child, f"{kw} only applies to {kw[:2]} scheduler - ignoring")
            else:
                vs.flags |= SCHED_FLAG_WORDS[kw]
        elif kw == "hashed":
            pass  # accepted by keepalived, changes nothing in the table
        elif kw == "ip_family":
            fam = _arg(child)
            if fam not in ("inet", "inet6"):
                raise _fail(child, f"unknown address family {fam}")
            ip_family = AF_INET6 if fam == "inet6" else AF_INET
        elif kw == "delay_loop":
            vs.delay_loop = _timer(child, 0.000001)
        elif kw == "connect_timeout":
            vs.connect_timeout = _timer(child, 0.000001)
        elif kw == "retry":
            vs.retry = _uint(child, 1, 2**32 - 1)
        elif kw == "delay_before_retry":
            vs.delay_before_retry = _timer(child)
        elif kw == "warmup":
            vs.warmup = _timer(child)
        elif kw == "inhibit_on_failure":
            vs.inhibit = True  # at this level keepalived takes no argument
        elif kw == "alpha":
            vs.alpha = True
        elif kw == "omega":
            vs.omega = True
        elif kw == "quorum":
            vs.quorum = _uint(child, 1, 2**31 - 1)
        elif kw == "hysteresis":
            vs.hysteresis = _uint(child, 0, 2**31 - 1)
        elif kw == "quorum_up":
            vs.quorum_up = _script(child)
        elif kw == "quorum_down":
            vs.quorum_down = _script(child)
        elif kw == "weight":
            vs.weight = _uint(child, 0, INT_MAX)
        elif kw == "virtualhost":
            vs.virtualhost = _arg(child)
        elif kw == "sorry_server":
            sorry_node = child
        elif kw == "sorry_server_inhibit":
            if sorry_node is None:
                ctx.warn(child, "Ignoring sorry_server inhibit used before or without sorry_server")
        elif kw == "sorry_server_lvs_method":
            if sorry_node is None:
                ctx.warn(child, "sorry_server forwarding used without sorry_server")
        elif kw == "real_server":
            rs_nodes.append(child)
        elif kw in ("ha_suspend", "smtp_alert", "snmp_name"):
            ctx.warn(child, f"{kw} has no effect in lvsd")
        else:
            ctx.warn(child, f"unknown keyword '{kw}'")
    if fwmark or (group and all(isinstance(e, ServiceKey) for e in ctx.groups[group])):
        if protocol:
            ctx.warn(node, "protocol specified for fwmark - protocol will be ignored")
        protocol = 0
    elif not protocol:
        ctx.warn(node, "no protocol set - defaulting to UDP")
        protocol = IPPROTO_UDP
    if vs.flags & SVC_F_ONEPACKET and protocol not in (IPPROTO_UDP, 0):
        ctx.warn(node, "one packet scheduling requires UDP - resetting")
        vs.flags &= ~SVC_F_ONEPACKET
    if granularity is not None:
        vs.netmask = granularity
        if not persistent:
            persistent, vs.timeout = True, DEFAULT_PERSISTENT_TIMEOUT
    if not persistent and not fwmark and not group and port == 0:
        ctx.warn(node, "zero port only valid for persistent services - setting")
        persistent, vs.timeout = True, DEFAULT_PERSISTENT_TIMEOUT
    if persistent:
        vs.flags |= SVC_F_PERSISTENT
    # the services
    if group:
        vs.name = f"[{group}]:{port}"
        for entry in ctx.groups[group]:
            if isinstance(entry, ServiceKey):
                fam = ip_family or AF_INET
                vs.keys.append(ServiceKey(fam, 0, 0, 0, entry.fwmark))
            else:
                e_af, first, last, e_port = entry
                for a in range(first, last + 1):
                    vs.keys.append(ServiceKey(e_af, protocol, a, e_port))
    elif fwmark:
        vs.keys.append(ServiceKey(ip_family or AF_INET, 0, 0, 0, fwmark))
    else:
        vs.keys.append(ServiceKey(af, protocol, addr, port))
    if not vs.name:
        vs.name = fmt_vs(vs.keys[0])
    for rnode in rs_nodes:
        rs = _rs(ctx, rnode, vs)
        if any(r.ident() == rs.ident() for r in vs.realservers):
            ctx.warn(rnode, f"VS {vs.name}: real server {rnode.args[0]} is duplicated - removing second rs")
            continue
        vs.realservers.append(rs)
    if (
        fwmark
        and ip_family is None
        and vs.realservers
        and all(r.af == AF_INET6 for r in vs.realservers if r.fwd != CONN_F_TUNNEL)
    ):
        vs.keys = [ServiceKey(AF_INET6, 0, 0, 0, k.fwmark) for k in vs.keys]
    if sorry_node is not None:
        vs.sorry = _sorry(ctx, sorry_node, node, vs)
    if not vs.realservers:
        raise _fail(node, f"Virtual server {vs.name} has no real servers")
    return vs


def _sorry(ctx: _Ctx, snode: Node, vsnode: Node, vs: VirtualServerConf) -> RealServerConf:
    af, addr = _ip(snode, _arg(snode))
    port = _port(snode, snode.args[1] if len(snode.args) > 1 else None)
    key = vs.keys[0]
    if not key.fwmark and port == 0:
        port = key.port
    sorry = RealServerConf(af, addr, port, where=snode.where, weight=1, inhibit=False)
    for child in vsnode.children or []:
        if child.keyword == "sorry_server_inhibit":
            sorry.inhibit = True
        elif child.keyword == "sorry_server_lvs_method":
            _forwarding(child, sorry)
    return sorry


def _rs(ctx: _Ctx, node: Node, vs: VirtualServerConf) -> RealServerConf:
    af, addr = _ip(node, _arg(node))
    port = _port(node, node.args[1] if len(node.args) > 1 else None)
    key = vs.keys[0]
    if key.fwmark:
        pass
    elif port == 0:
        port = key.port
    rs = RealServerConf(af, addr, port, where=node.where)
    for child in node.children or []:
        kw = child.keyword
        if kw == "weight":
            rs.weight = _uint(child, 0, INT_MAX)
        elif kw == "lvs_method":
            _forwarding(child, rs)
        elif kw == "uthreshold":
            rs.u_threshold = _uint(child, 0, 2**32 - 1)
        elif kw == "lthreshold":
            rs.l_threshold = _uint(child, 0, 2**32 - 1)
        elif kw == "inhibit_on_failure":
            rs.inhibit = _bool(child)
        elif kw == "notify_up":
            rs.notify_up = _script(child)
        elif kw == "notify_down":
            rs.notify_down = _script(child)
        elif kw == "alpha":
            rs.alpha = _bool(child)
        elif kw == "retry":
            rs.retry = _uint(child, 1, 2**32 - 1)
        elif kw == "delay_before_retry":
            rs.delay_before_retry = _timer(child)
        elif kw == "warmup":
            rs.warmup = _timer(child)
        elif kw == "connect_timeout":
            rs.connect_timeout = _timer(child, 0.000001)
        elif kw == "delay_loop":
            rs.delay_loop = _timer(child, 0.000001)
        elif kw == "virtualhost":
            rs.virtualhost = _arg(child)
        elif kw in CHECKER_KINDS:
            rs.checkers.append(_checker(ctx, child, rs, vs))
        elif kw in UNSUPPORTED_CHECKERS:
            ctx.warn(child, f"{kw} is not implemented by lvsd: this checker is ignored (never fails)")
        elif kw in ("smtp_alert", "snmp_name"):
            ctx.warn(child, f"{kw} has no effect in lvsd")
        else:
            ctx.warn(child, f"unknown keyword '{kw}'")
    fwd = rs.fwd if rs.fwd is not None else vs.fwd
    if fwd is not None and fwd != CONN_F_MASQ and not key.fwmark and rs.port not in (0, key.port):
        ctx.warn(
            node, f"virtual server {vs.name} and real server {node.args[0]} ports don't match - resetting"
        )
    if fwd is not None and fwd != CONN_F_MASQ:
        rs.port = 0 if key.fwmark else key.port
    if af != key.af and fwd != CONN_F_TUNNEL and not key.fwmark:
        raise _fail(node, f"Address family of virtual server and real server {node.args[0]} don't match")
    return rs


def _status_codes(node: Node) -> list[tuple[int, int]]:
    out = []
    for word in node.args:
        lo_text, _, hi_text = word.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if hi_text else lo
        except ValueError:
            raise _fail(node, f"Invalid HTTP_GET status code '{word}'") from None
        if not 100 <= lo <= hi <= 599:
            raise _fail(node, f"Invalid HTTP_GET status code '{word}'")
        out.append((lo, hi))
    if not out:
        raise _fail(node, "status_code needs a value")
    return out


def _hex(node: Node) -> bytes:
    text = "".join(node.args).replace(" ", "")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise _fail(node, f"Invalid hex string for UDP_CHECK {node.keyword}") from None


def _checker(ctx: _Ctx, node: Node, rs: RealServerConf, vs: VirtualServerConf) -> CheckerConf:
    kind = node.keyword
    chk = CheckerConf(kind, where=node.where)
    own = CHECKER_OWN[kind]
    opts = chk.options
    if kind in ("HTTP_GET", "SSL_GET"):
        opts["urls"] = []
        opts["virtualhost"] = rs.virtualhost or vs.virtualhost
    for child in node.children or []:
        kw = child.keyword
        if kw == "connect_ip":
            _ip(child, _arg(child))
            chk.connect_ip = child.args[0]
        elif kw == "connect_port":
            chk.connect_port = _uint(child, 1, 65535)
        elif kw == "bindto":
            _ip(child, _arg(child))
            chk.bindto = child.args[0]
        elif kw == "bind_port":
            chk.bind_port = _uint(child, 1, 65535)
        elif kw == "bind_if":
            chk.bind_if = _arg(child)
        elif kw == "connect_timeout":
            chk.connect_timeout = _timer(child, 0.000001)
        elif kw == "fwmark":
            chk.fwmark = _uint(child, 0, 2**32 - 1)
        elif kw in ("retry", "nb_get_retry"):
            chk.retry = _uint(child, 0, 2**32 - 1)
        elif kw == "delay_before_retry":
            chk.delay_before_retry = _timer(child)
        elif kw == "warmup":
            chk.warmup = _timer(child)
        elif kw == "delay_loop":
            chk.delay_loop = _timer(child, 0.000001)
        elif kw == "alpha":
            chk.alpha = _bool(child)
        elif kw == "log_all_failures":
            chk.log_all_failures = _bool(child)
        elif kw not in own:
            ctx.warn(child, f"unknown keyword '{kw}'")
        elif kw == "url":
            opts["urls"].append(_url(ctx, child))
        elif kw == "virtualhost":
            opts["virtualhost"] = _arg(child)
        elif kw == "fast_recovery":
            ctx.warn(child, "fast_recovery is not implemented by lvsd: checks keep their delays")
        elif kw in ("enable_sni", "misc_dynamic"):
            opts[kw] = _bool(child)
        elif kw == "http_protocol":
            opts[kw] = _arg(child)
        elif kw == "payload":
            opts["payload"] = _hex(child)
        elif kw == "require_reply":
            opts["require_reply"] = _hex(child) if child.args else b""
        elif kw in ("min_reply_length", "max_reply_length"):
            opts[kw] = _uint(child, 0, 65535)
        elif kw == "type":
            text = _arg(child).upper()
            if text not in DNS_TYPES:
                raise _fail(child, f"unknown DNS check type '{child.args[0]}'")
            opts["type"] = text
        elif kw == "name":
            opts["name"] = _arg(child)
        elif kw == "misc_path":
            opts["misc_path"] = _script(child)
        elif kw == "misc_timeout":
            opts["misc_timeout"] = float(_uint(child, 1, 2**31 - 1))
        elif kw == "user":
            opts["user"] = _arg(child)
            if len(child.args) > 1:
                opts["group"] = child.args[1]
        elif kw == "helo_name":
            opts["helo_name"] = _arg(child)
        elif kw == "host":
            ctx.warn(
                child, "SMTP_CHECK host blocks are deprecated in keepalived; use connect_ip/connect_port"
            )
            for sub in child.children or []:
                if sub.keyword == "connect_ip":
                    chk.connect_ip = _arg(sub)
                elif sub.keyword == "connect_port":
                    chk.connect_port = _uint(sub, 1, 65535)
    if kind in ("HTTP_GET", "SSL_GET") and not opts["urls"]:
        raise _fail(node, f"{kind} has no url")
    if kind == "MISC_CHECK" and "misc_path" not in opts:
        raise _fail(node, "MISC_CHECK has no misc_path")
    if kind == "DNS_CHECK":
        opts.setdefault("type", "SOA")
        opts.setdefault("name", ".")
    if kind == "SMTP_CHECK":
        opts.setdefault("helo_name", "smtpchecker.keepalived.org")
        if chk.connect_port is None and rs.port == 0:
            chk.connect_port = 25
    return chk


def _url(ctx: _Ctx, node: Node) -> dict[str, object]:
    url: dict[str, object] = {"path": "/", "status_code": [(200, 299)], "digest": None, "regex": None,
                              "regex_no_match": False, "virtualhost": None}  # fmt: skip
    codes: list[tuple[int, int]] = []
    for child in node.children or []:
        kw = child.keyword
        if kw == "path":
            url["path"] = _arg(child)
        elif kw == "digest":
            digest = _arg(child).lower()
            if not re.fullmatch(r"[0-9a-f]{32}", digest):
                raise _fail(child, f"digest '{child.args[0]}' is not an MD5 hex digest")
            url["digest"] = digest
        elif kw == "status_code":
            codes.extend(_status_codes(child))
        elif kw == "virtualhost":
            url["virtualhost"] = _arg(child)
        elif kw in ("regex", "regex_no_match"):
            pattern = " ".join(child.args)
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _fail(child, f"Invalid regex: '{pattern}': {exc}") from None
            url["regex"] = pattern
            url["regex_no_match"] = kw == "regex_no_match"
        else:
            ctx.warn(child, f"unknown keyword '{kw}'")
    if codes:
        url["status_code"] = codes
    return url
