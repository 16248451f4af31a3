"""Declarative YAML configuration for lvsd (``lvsd --config FILE``).

The file says what the table should hold; loading it (at start, on SIGHUP or
``lvsadm --reload``) applies only the difference, so unchanged services and
their connections are untouched.  Services present in the table but absent
from the file are deleted (the file is the whole truth, as with keepalived).
Errors name the file, the line and the field.  Pure: parsing and diffing,
no sockets.  Format (every key optional unless marked)::

    sysctl:                       # net.ipv4.vs.* names
      expire_nodest_conn: 1
    timeouts: {tcp: 900, tcpfin: 120, udp: 300}
    services:
      - tcp: 10.0.0.1:80          # one of tcp / udp / sctp / fwmark (required)
        scheduler: wlc
        persistent: 300           # seconds, or true for ipvsadm's 360
        netmask: 255.255.255.0    # IPv4 mask, or prefix length for IPv6
        flags: [sh-port]          # -b scheduler flags
        ops: false                # one-packet scheduling (UDP)
        pe: sip
        realservers:
          - address: 10.1.0.1:8080  # required
            method: masq          # masq|route|tunnel (or m|g|i), default route
            weight: 1
            upper: 0              # -x
            lower: 0              # -y
            tunnel: {type: gue, port: 6080, csum: csum}   # ipip|gue|gre, csum|nocsum|remcsum
            health: {inhibit_on_failure: true, notify_down: /usr/local/bin/down}
            checks:               # keepalived's checkers, with keepalived's option names
              - HTTP_GET:
                  url: [{path: /healthz, status_code: 200-299}]
                  connect_timeout: 1
              - TCP_CHECK: {connect_port: 8081}
        health:                   # keepalived's virtual_server options
          delay_loop: 1
          quorum: 2
          sorry_server: 10.1.0.9:8080

A service with ``health`` or a real server with ``checks`` is run by the
health checker exactly as the same keepalived.conf would be (the mapping
becomes keepalived's blocks: :mod:`lvs.keepalived_conf` reads them, with
keepalived's defaults and words); the others go into the table as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from .addr import format_ip, parse_ip, v4_mask_from_text
from .constants import (
    AF_INET,
    AF_INET6,
    CONN_F_DROUTE,
    CONN_F_FWD_MASK,
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
    SVC_F_SCHED_MASK,
    TUN_F_CSUM,
    TUN_F_NOCSUM,
    TUN_F_REMCSUM,
    TUN_TYPE_GRE,
    TUN_TYPE_GUE,
    TUN_TYPE_IPIP,
)
from .ctl import IPVS, KNOWN_PE, DestSpec, ServiceSpec
from .errors import IPVSError
from .health import VirtualServerConf
from .keepalived_conf import KeepalivedConfError, Node, health_from_nodes
from .model import ServiceKey
from .sched import get_scheduler
from .sysctl import Sysctls

METHODS = {
    "masq": CONN_F_MASQ, "m": CONN_F_MASQ, "nat": CONN_F_MASQ,
    "route": CONN_F_DROUTE, "g": CONN_F_DROUTE, "dr": CONN_F_DROUTE, "gatewaying": CONN_F_DROUTE,
    "tunnel": CONN_F_TUNNEL, "i": CONN_F_TUNNEL, "ipip": CONN_F_TUNNEL, "tun": CONN_F_TUNNEL,
}  # fmt: skip
TUN_TYPES = {"ipip": TUN_TYPE_IPIP, "gue": TUN_TYPE_GUE, "gre": TUN_TYPE_GRE}
TUN_CSUM = {"nocsum": TUN_F_NOCSUM, "csum": TUN_F_CSUM, "remcsum": TUN_F_REMCSUM}
SCHED_FLAGS = {
    "flag-1": SVC_F_SCHED1, "flag-2": SVC_F_SCHED2, "flag-3": SVC_F_SCHED3,
    "sh-fallback": SVC_F_SCHED1, "sh-port": SVC_F_SCHED2,
    "mh-fallback": SVC_F_SCHED1, "mh-port": SVC_F_SCHED2,
}  # fmt: skip
PROTOS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "sctp": IPPROTO_SCTP}


class ConfigError(ValueError):
    """A configuration problem, worded ``FILE:LINE: field: reason``."""


@dataclass
class Config:
    services: list[tuple[ServiceSpec, list[DestSpec]]] = field(default_factory=list)
    sysctl: dict[str, int] = field(default_factory=dict)
    timeouts: tuple[int, int, int] | None = None
    #: services whose real servers the health checker adds and removes
    health: list[VirtualServerConf] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Node:
    """A mapping value together with the line each key stands on."""

    def __init__(self, data: dict[str, Any], lines: dict[str, int], line: int) -> None:
        self.data = data
        self.lines = lines
        self.line = line


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Node:
    loader.flatten_mapping(node)  # YAML merge keys (<<)
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        data[str(key)] = loader.construct_object(value_node, deep=True)
        lines[str(key)] = key_node.start_mark.line + 1
    return _Node(data, lines, node.start_mark.line + 1)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Ctx:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, line: int, where: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.path}:{line}: {where}: {reason}")


def _endpoint(ctx: _Ctx, text: Any, line: int, where: str) -> tuple[int, int, int]:
    s = str(text)
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
    else:
        host, _, port = s.rpartition(":")
    try:
        af, value = parse_ip(host)
        p = int(port)
        if not 0 <= p <= 65535:
            raise ValueError
    except (OSError, ValueError):
        raise ctx.fail(line, where, f"{s!r} is not ADDRESS:PORT ([v6]:port for IPv6)") from None
    return af, value, p


def _int(ctx: _Ctx, node: _Node, key: str, where: str, lo: int, hi: int, default: int) -> int:
    if key not in node.data:
        return default
    value = node.data[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ctx.fail(node.lines[key], f"{where}.{key}", f"must be an integer from {lo} to {hi}")
    return value


def _check_keys(ctx: _Ctx, node: _Node, allowed: set[str], where: str) -> None:
    for key in node.data:
        if key not in allowed:
            raise ctx.fail(node.lines[key], where, f"unknown field {key!r}")


def parse_config(text: str, path: str = "<config>") -> Config:
    ctx = _Ctx(path)
    try:
        root = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(f"{path}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    cfg = Config()
    if root is None:
        return cfg
    if not isinstance(root, _Node):
        raise ctx.fail(1, "top level", "must be a mapping with services, sysctl, timeouts")
    _check_keys(ctx, root, {"services", "sysctl", "timeouts"}, "top level")
    known = set(Sysctls().names())
    sysctl = root.data.get("sysctl")
    if sysctl is not None:
        if not isinstance(sysctl, _Node):
            raise ctx.fail(root.lines["sysctl"], "sysctl", "must be a mapping")
        for name, value in sysctl.data.items():
            if name not in known:
                raise ctx.fail(sysctl.lines[name], f"sysctl.{name}", "unknown sysctl")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ctx.fail(sysctl.lines[name], f"sysctl.{name}", "must be a non-negative integer")
            cfg.sysctl[name] = value
    timeouts = root.data.get("timeouts")
    if timeouts is not None:
        if not isinstance(timeouts, _Node):
            raise ctx.fail(root.lines["timeouts"], "timeouts", "must be a mapping")
        _check_keys(ctx, timeouts, {"tcp", "tcpfin", "udp"}, "timeouts")
        cfg.timeouts = tuple(  # type: ignore[assignment]
            _int(ctx, timeouts, k, "timeouts", 0, INT_MAX // 250, 0) for k in ("tcp", "tcpfin", "udp")
        )
    services = root.data.get("services") or []
    if not isinstance(services, list):
        raise ctx.fail(root.lines.get("services", 1), "services", "must be a list")
    seen: set[ServiceKey] = set()
    for i, node in enumerate(services):
        where = f"services[{i}]"
        if not isinstance(node, _Node):
            raise ctx.fail(root.lines["services"], where, "must be a mapping")
        spec, dests = _service(ctx, node, where)
        if spec.key in seen:
            raise ctx.fail(node.line, where, "service listed twice")
        seen.add(spec.key)
        rs_list = node.data.get("realservers") or []
        if "health" in node.data or any(isinstance(r, _Node) and "checks" in r.data for r in rs_list):
            cfg.health.append(_health(ctx, node, spec, dests, cfg.warnings))
        else:
            cfg.services.append((spec, dests))
    return cfg


_FWD_WORDS = {CONN_F_MASQ: "NAT", CONN_F_DROUTE: "DR", CONN_F_TUNNEL: "TUN"}
_TUN_WORDS = {TUN_TYPE_IPIP: "ipip", TUN_TYPE_GUE: "gue", TUN_TYPE_GRE: "gre"}
_CSUM_WORDS = {TUN_F_NOCSUM: "nocsum", TUN_F_CSUM: "csum", TUN_F_REMCSUM: "remcsum"}
_FLAG_WORDS = {SVC_F_SCHED1: "flag-1", SVC_F_SCHED2: "flag-2", SVC_F_SCHED3: "flag-3"}


def _yaml_nodes(ctx: _Ctx, node: _Node) -> list[Node]:
    """A YAML mapping as keepalived statements: ``key: value`` is ``key
    value``, ``key: true`` a bare keyword, a mapping a block, a list of
    mappings one block per item, ``sorry_server: ADDR:PORT`` two words."""
    out: list[Node] = []
    for key, value in node.data.items():
        line = node.lines[key]
        if isinstance(value, _Node):
            out.append(Node(key, [], ctx.path, line, _yaml_nodes(ctx, value)))
        elif isinstance(value, list) and value and all(isinstance(v, _Node) for v in value):
            out.extend(Node(key, [], ctx.path, v.line, _yaml_nodes(ctx, v)) for v in value)
        elif isinstance(value, list):
            out.append(Node(key, [str(v) for v in value], ctx.path, line))
        elif value is True:
            out.append(Node(key, [], ctx.path, line))
        elif value is False or value is None:
            continue
        elif key == "sorry_server":
            af, addr, port = _endpoint(ctx, value, line, key)
            out.append(Node(key, [format_ip(af, addr), str(port)], ctx.path, line))
        else:
            out.append(Node(key, [str(value)], ctx.path, line))
    return out


def _health(
    ctx: _Ctx, node: _Node, spec: ServiceSpec, dests: list[DestSpec], warnings: list[str]
) -> VirtualServerConf:
    """A YAML service with checks, as keepalived's virtual_server block."""
    key = spec.key
    line = node.line
    head = ["fwmark", str(key.fwmark)] if key.fwmark else [format_ip(key.af, key.addr), str(key.port)]
    body = [Node("lb_algo", [spec.sched_name], ctx.path, line)]
    if key.fwmark:
        body.append(Node("ip_family", ["inet6" if key.af == AF_INET6 else "inet"], ctx.path, line))
    else:
        body.append(Node("protocol", [{IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP"}.get(key.protocol, "SCTP")],
                         ctx.path, line))  # fmt: skip
    if spec.flags & SVC_F_PERSISTENT:
        body.append(Node("persistence_timeout", [str(spec.timeout)], ctx.path, line))
    if spec.netmask is not None:
        mask = str(spec.netmask) if key.af == AF_INET6 else format_ip(AF_INET, spec.netmask)
        body.append(Node("persistence_granularity", [mask], ctx.path, line))
    if spec.flags & SVC_F_ONEPACKET:
        body.append(Node("ops", [], ctx.path, line))
    body.extend(Node(word, [], ctx.path, line) for bit, word in _FLAG_WORDS.items() if spec.flags & bit)
    if spec.pe_name:
        body.append(Node("persistence_engine", [spec.pe_name], ctx.path, line))
    health = node.data.get("health")
    if health is not None:
        if not isinstance(health, _Node):
            raise ctx.fail(
                node.lines["health"], "health", "must be a mapping of keepalived virtual_server options"
            )
        body.extend(_yaml_nodes(ctx, health))
    for rs, dest in zip(node.data.get("realservers") or [], dests, strict=True):
        rs_body = [Node("weight", [str(dest.weight)], ctx.path, rs.line)]
        method = [_FWD_WORDS[dest.fwd & CONN_F_FWD_MASK]]
        if dest.fwd & CONN_F_FWD_MASK == CONN_F_TUNNEL:
            method += ["type", _TUN_WORDS[dest.tun_type]]
            if dest.tun_type == TUN_TYPE_GUE:
                method += ["port", str(dest.tun_port)]
            if dest.tun_type != TUN_TYPE_IPIP:
                method.append(_CSUM_WORDS[dest.tun_flags])
        rs_body.append(Node("lvs_method", method, ctx.path, rs.line))
        if dest.u_threshold:
            rs_body.append(Node("uthreshold", [str(dest.u_threshold)], ctx.path, rs.line))
        if dest.l_threshold:
            rs_body.append(Node("lthreshold", [str(dest.l_threshold)], ctx.path, rs.line))
        for extra in ("health", "checks"):
            value = rs.data.get(extra)
            if value is None:
                continue
            if extra == "health" and isinstance(value, _Node):
                rs_body.extend(_yaml_nodes(ctx, value))
            elif extra == "checks" and isinstance(value, list) and all(isinstance(c, _Node) for c in value):
                for check in value:
                    rs_body.extend(_yaml_nodes(ctx, check))
            else:
                what = "a mapping" if extra == "health" else "a list of {CHECKER: {options}}"
                raise ctx.fail(rs.lines[extra], extra, f"must be {what}")
        rs_head = [format_ip(dest.af, dest.addr), str(dest.port)]
        body.append(Node("real_server", rs_head, ctx.path, rs.line, rs_body))
    try:
        return health_from_nodes(Node("virtual_server", head, ctx.path, line, body), warnings)
    except KeepalivedConfError as exc:
        raise ConfigError(str(exc)) from None


def _service(ctx: _Ctx, node: _Node, where: str) -> tuple[ServiceSpec, list[DestSpec]]:
    _check_keys(
        ctx,
        node,
        {"tcp", "udp", "sctp", "fwmark", "af", "scheduler", "persistent", "netmask", "flags", "ops", "pe",
         "realservers", "health"},
        where,
    )  # fmt: skip
    kinds = [k for k in ("tcp", "udp", "sctp", "fwmark") if k in node.data]
    if len(kinds) != 1:
        raise ctx.fail(node.line, where, "needs exactly one of tcp, udp, sctp, fwmark")
    kind = kinds[0]
    if kind == "fwmark":
        mark = _int(ctx, node, "fwmark", where, 1, 2**32 - 1, 0)
        af = AF_INET6 if str(node.data.get("af", "inet")) in ("inet6", "ipv6", "6") else AF_INET
        key = ServiceKey(af, 0, 0, 0, mark)
    else:
        af, addr, port = _endpoint(ctx, node.data[kind], node.lines[kind], f"{where}.{kind}")
        key = ServiceKey(af, PROTOS[kind], addr, port)
    sched = str(node.data.get("scheduler", "wlc"))
    if get_scheduler(sched) is None:
        raise ctx.fail(
            node.lines["scheduler"], f"{where}.scheduler", "Scheduler or persistence engine not found"
        )
    pe = str(node.data.get("pe", "") or "")
    if pe and pe not in KNOWN_PE:
        raise ctx.fail(node.lines["pe"], f"{where}.pe", "Scheduler or persistence engine not found")
    flags = 0
    timeout = 0
    persistent = node.data.get("persistent", False)
    if persistent is True:
        flags |= SVC_F_PERSISTENT
        timeout = DEFAULT_PERSISTENT_TIMEOUT
    elif persistent not in (False, None):
        timeout = _int(ctx, node, "persistent", where, 1, 31 * 24 * 3600, 0)
        flags |= SVC_F_PERSISTENT
    if not flags & SVC_F_PERSISTENT and key.port == 0 and not key.fwmark:
        raise ctx.fail(node.line, where, "Zero port specified for non-persistent service")
    if node.data.get("ops"):
        if key.protocol != IPPROTO_UDP and not key.fwmark:
            reason = "One-Packet Scheduling is only for UDP virtual services"
            raise ctx.fail(node.lines["ops"], f"{where}.ops", reason)
        flags |= SVC_F_ONEPACKET
    for name in node.data.get("flags") or []:
        name = str(name)
        if name not in SCHED_FLAGS:
            raise ctx.fail(node.lines["flags"], f"{where}.flags", f"invalid scheduler flag `{name}'")
        owner = name.split("-", 1)[0]
        if owner in ("sh", "mh") and sched != owner:
            raise ctx.fail(node.lines["flags"], f"{where}.flags", f"incompatible scheduler flag `{name}'")
        flags |= SCHED_FLAGS[name]
    netmask = None
    if "netmask" in node.data:
        raw = node.data["netmask"]
        try:
            netmask = int(raw) if af == AF_INET6 else v4_mask_from_text(str(raw))
        except ValueError:
            raise ctx.fail(node.lines["netmask"], f"{where}.netmask", f"bad netmask {raw!r}") from None
        if af == AF_INET6 and not 1 <= netmask <= 128:
            raise ctx.fail(node.lines["netmask"], f"{where}.netmask", "illegal ipv6 netmask specified")
    spec = ServiceSpec(key, sched, flags, timeout, netmask, pe)
    dests = []
    rs_list = node.data.get("realservers") or []
    if not isinstance(rs_list, list):
        raise ctx.fail(node.lines["realservers"], f"{where}.realservers", "must be a list")
    for j, rs in enumerate(rs_list):
        dests.append(_dest(ctx, rs, f"{where}.realservers[{j}]", key, node))
    return spec, dests


def _dest(ctx: _Ctx, rs: Any, where: str, key: ServiceKey, parent: _Node) -> DestSpec:
    if not isinstance(rs, _Node):
        raise ctx.fail(parent.lines["realservers"], where, "must be a mapping")
    _check_keys(
        ctx, rs, {"address", "method", "weight", "upper", "lower", "tunnel", "health", "checks"}, where
    )
    if "address" not in rs.data:
        raise ctx.fail(rs.line, where, "address is required")
    af, addr, port = _endpoint(ctx, rs.data["address"], rs.lines["address"], f"{where}.address")
    method = str(rs.data.get("method", "route")).lower()
    if method not in METHODS:
        raise ctx.fail(rs.lines["method"], f"{where}.method", "must be masq, route or tunnel")
    fwd = METHODS[method]
    if fwd != CONN_F_MASQ and not key.fwmark:
        port = key.port  # DR/TUN keep the virtual port, as ipvsadm forces it
    spec = DestSpec(af, addr, port, fwd, _int(ctx, rs, "weight", where, 0, INT_MAX, 1))
    spec.u_threshold = _int(ctx, rs, "upper", where, 0, INT_MAX, 0)
    spec.l_threshold = _int(ctx, rs, "lower", where, 0, INT_MAX, 0)
    if spec.l_threshold > spec.u_threshold:
        raise ctx.fail(rs.lines["lower"], f"{where}.lower", "Numerical result out of range")
    tun = rs.data.get("tunnel")
    if tun is not None:
        if fwd & CONN_F_FWD_MASK != CONN_F_TUNNEL:
            reason = "Tunnel options conflict with forward method"
            raise ctx.fail(rs.lines["tunnel"], f"{where}.tunnel", reason)
        if not isinstance(tun, _Node):
            raise ctx.fail(rs.lines["tunnel"], f"{where}.tunnel", "must be a mapping")
        _check_keys(ctx, tun, {"type", "port", "csum"}, f"{where}.tunnel")
        ttype = str(tun.data.get("type", "ipip"))
        if ttype not in TUN_TYPES:
            raise ctx.fail(tun.line, f"{where}.tunnel.type", "must be ipip, gue or gre")
        spec.tun_type = TUN_TYPES[ttype]
        spec.tun_port = _int(ctx, tun, "port", f"{where}.tunnel", 0, 65535, 0)
        csum = str(tun.data.get("csum", "nocsum"))
        if csum not in TUN_CSUM:
            raise ctx.fail(tun.line, f"{where}.tunnel.csum", "must be nocsum, csum or remcsum")
        spec.tun_flags = TUN_CSUM[csum]
        if spec.tun_type == TUN_TYPE_GUE and not spec.tun_port:
            raise ctx.fail(tun.line, f"{where}.tunnel.port", "gue needs a port")
        # ipvsadm's tunnel matrix: ipip takes no options, gre no port and no remcsum
        illegal = []
        if spec.tun_type != TUN_TYPE_GUE and "port" in tun.data:
            illegal.append(("port", "tun-port"))
        if spec.tun_type == TUN_TYPE_IPIP and "csum" in tun.data:
            illegal.append(("csum", f"tun-{csum}"))
        if spec.tun_type == TUN_TYPE_GRE and csum == "remcsum":
            illegal.append(("csum", "tun-remcsum"))
        for field_name, option in illegal:
            reason = f"Illegal '{option}' option with the '{ttype}' tunnel type"
            raise ctx.fail(tun.lines[field_name], f"{where}.tunnel.{field_name}", reason)
    if af != key.af and fwd != CONN_F_TUNNEL:
        raise ctx.fail(rs.line, where, "mixed address families need the tunnel method")
    return spec


def apply_config(ipvs: IPVS, cfg: Config, now: float) -> list[str]:
    """Make the table match ``cfg``, touching only what differs.

    Returns what changed, one line per operation.  All checks ran at parse
    time; a refusal by the table here (say, an unknown scheduler) stops with
    a ConfigError after the operations before it.
    """
    changes: list[str] = []
    for name, value in cfg.sysctl.items():
        if getattr(ipvs.sysctl, name) != value:
            setattr(ipvs.sysctl, name, value)
            changes.append(f"sysctl {name}={value}")
    if cfg.timeouts is not None and cfg.timeouts != ipvs.get_timeouts():
        ipvs.set_timeouts(*cfg.timeouts)
        changes.append("timeouts {} {} {}".format(*cfg.timeouts))
    wanted = {spec.key: (spec, dests) for spec, dests in cfg.services}
    #: the health checker's services: it makes them and their real servers
    checked = {key for vs in cfg.health for key in vs.keys}
    try:
        for key in [k for k in ipvs.services if k not in wanted and k not in checked]:
            ipvs.del_service(key, now)
            changes.append(f"delete service {key.describe()}")
        for key, (spec, dests) in wanted.items():
            svc = ipvs.get(key)
            if svc is None:
                ipvs.add_service(spec, now)
                changes.append(f"add service {key.describe()}")
            elif _service_differs(svc, spec):
                ipvs.edit_service(spec, now)
                changes.append(f"edit service {key.describe()}")
            _apply_dests(ipvs, key, dests, now, changes)
    except IPVSError as exc:
        raise ConfigError(f"applying the configuration: {exc.message}") from None
    return changes


def _service_differs(svc: Any, spec: ServiceSpec) -> bool:
    netmask = spec.netmask if spec.netmask is not None else (0xFFFFFFFF if svc.af == AF_INET else 128)
    flags = svc.flags & (SVC_F_PERSISTENT | SVC_F_ONEPACKET | SVC_F_SCHED_MASK)
    return (svc.sched_name, flags, svc.timeout, svc.netmask, svc.pe_name) != (
        spec.sched_name,
        spec.flags,
        spec.timeout,
        netmask,
        spec.pe_name,
    )


def _apply_dests(ipvs: IPVS, key: ServiceKey, dests: list[DestSpec], now: float, changes: list[str]) -> None:
    svc = ipvs.get_service(key)
    wanted = {(d.af, d.addr, d.port): d for d in dests}
    for dest in list(svc.destinations):
        if (dest.af, dest.addr, dest.port) not in wanted:
            ipvs.del_dest(key, dest.af, dest.addr, dest.port, now)
            changes.append(f"delete real server {dest.endpoint()} from {key.describe()}")
    # add in file order: the last listed ends up first in the kernel's list, as with ipvsadm -a
    for ident, spec in wanted.items():
        dest = svc.find_dest(*ident)
        if dest is None:
            ipvs.add_dest(key, spec, now)
            changes.append(f"add real server to {key.describe()}")
        elif (dest.fwd_method, dest.weight, dest.u_threshold, dest.l_threshold, dest.tun_type,
              dest.tun_port, dest.tun_flags) != (spec.fwd, spec.weight, spec.u_threshold, spec.l_threshold,
                                                 spec.tun_type, spec.tun_port, spec.tun_flags):  # fmt: skip
            ipvs.edit_dest(key, spec, now)
            changes.append(f"edit real server {dest.endpoint()} in {key.describe()}")
