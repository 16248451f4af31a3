"""The ipvsadm 1.31 command line, parsed the way the real tool (built with popt)
parses it, down to every message and exit status.

:func:`parse` turns the arguments that follow ``ipvsadm`` into a
:class:`Command`, or raises :class:`UsageError` with the exact text ipvsadm
writes on stderr and the status it exits with.  Nothing is executed here;
:mod:`lvs.ipvsadm.commands` runs the result against an :class:`~lvs.ctl.IPVS`.

The rules emulated, in the order ipvsadm applies them (ipvsadm.c
``parse_options`` then ``process_options``):

1. **popt** splits the arguments into options, values and leftover words
   (:mod:`lvs.ipvsadm.popt`; numbers and addresses are read as glibc reads
   them, :mod:`lvs.ipvsadm.libc`).
2. The **first** option must be a command (``-A -E -D -C -L -l -Z -a -e -d
   -R -S --set --start-daemon --stop-daemon``) or ``-h``/``-v``; anything
   else, a popt error there, or no option at all ends with popt's
   "Try `ipvsadm -h' ..." line and status 255.  ``-h`` and ``-v`` print
   and succeed at once, whatever follows.
3. Every later option is checked when it is met: a second command letter is
   "invalid option `<the word just read>'" (so ipvsadm's "multiple commands
   specified" can never be printed), a repeated option is
   "multiple '<name>' options specified", values are validated
   (addresses, ports, names through the resolver, weights, thresholds,
   fwmark, netmask, timeouts, daemon values), all with status 2.  A popt
   error among them prints "<word>: <popt's reason>" and gives 255; unlike
   the others this one does not end an ``ipvsadm -R`` run.
4. ``--set`` takes three leftover words; any other leftover is
   "unexpected argument"; ``-b`` is checked against ``-s`` (default wlc).
5. The command/option matrix (required, illegal, mutually exclusive), then
   per command: zero port only for persistent services, ``-o`` only for UDP,
   the default scheduler wlc, the DR/TUN real-server port forced to the
   virtual port (not for fwmark services), mixed address families only with
   ``-i``, the tunnel options against the forwarding method and tunnel type,
   and the list command's own conflicts.

Deliberate deviations, all in corners where the real tool misbehaves:
``-b`` made only of commas crashes ipvsadm (SIGSEGV); pylvs reports status
139 with no text, as a shell would see it.  A value holding popt's ``!#:+``
with no free word left but option words after it makes the real tool loop
forever; pylvs stops with status 2 and says so.  ``POSIXLY_CORRECT`` in the
environment changes popt's behaviour on a real host; pylvs ignores it.

The weight range is 0..2147483647: the Debian build the golden files come
from accepts that (upstream's source says 65535).  All of this was checked
against that binary run under a stand-in kernel
(tests/test_ipvsadm_grammar.py, ``TestAgainstRealIpvsadm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..addr import format_ip, inet_pton
from ..constants import (
    AF_INET,
    AF_INET6,
    CONN_F_DROUTE,
    CONN_F_FWD_MASK,
    CONN_F_MASQ,
    CONN_F_TUNNEL,
    DEFAULT_PERSISTENT_TIMEOUT,
    INT_MAX,
    IP_VS_PENAME_MAXLEN,
    IP_VS_SCHEDNAME_MAXLEN,
    IPPROTO_IP,
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
    TUN_TYPE_NAMES,
    UINT_MAX,
)
from ..ctl import DestSpec, ServiceSpec, SyncDaemon
from ..model import ServiceKey
from .libc import DIGITS, LONG_MAX, LONG_MIN, atoi, inet_aton, strtol
from .popt import EXPAND, NONE, OPTIONAL, REASON, STRING, NoWordToTake, Opt, OptionTable, Popt, PoptError

__all__ = [
    "CMD_ADD",
    "CMD_ADDDEST",
    "CMD_DEL",
    "CMD_DELDEST",
    "CMD_EDIT",
    "CMD_EDITDEST",
    "CMD_FLUSH",
    "CMD_HELP",
    "CMD_LIST",
    "CMD_RESTORE",
    "CMD_SAVE",
    "CMD_STARTDAEMON",
    "CMD_STOPDAEMON",
    "CMD_TIMEOUT",
    "CMD_VERSION",
    "CMD_ZERO",
    "MAX_TIMEOUT",
    "PROGRAM",
    "TRY_HELP",
    "Command",
    "Resolver",
    "UsageError",
    "parse",
]

#: The program name ipvsadm prints in its messages (its argv[0] on the golden machine).
PROGRAM = "ipvsadm"
#: popt's hint after a bad first option (ipvsadm ``tryhelp_exit``).
TRY_HELP = f"Try `{PROGRAM} -h' or '{PROGRAM} --help' for more information.\n"

#: ipvsadm's MAX_TIMEOUT: 31 days.
MAX_TIMEOUT = 86400 * 31

# Commands, named as ipvsadm names them in its messages.
CMD_ADD = "add-service"
CMD_EDIT = "edit-service"
CMD_DEL = "delete-service"
CMD_FLUSH = "flush"
CMD_LIST = "list"
CMD_ADDDEST = "add-server"
CMD_DELDEST = "delete-server"
CMD_EDITDEST = "edit-server"
CMD_TIMEOUT = "set"
CMD_STARTDAEMON = "start-daemon"
CMD_STOPDAEMON = "stop-daemon"
CMD_RESTORE = "restore"
CMD_SAVE = "save"
CMD_ZERO = "zero"
# Not commands to ipvsadm, but what -h and -v amount to.
CMD_HELP = "help"
CMD_VERSION = "version"


class UsageError(Exception):
    """ipvsadm refused its arguments.

    ``message`` is the exact text for stderr (trailing newline included, may
    be empty), ``rc`` the exit status.  ``fatal`` is False only for a popt
    error met after the command option: ipvsadm returns from that one instead
    of exiting, so an ``ipvsadm -R`` run goes on with its next line.
    """

    def __init__(self, message: str, rc: int, *, fatal: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.rc = rc
        self.fatal = fatal


class Resolver(Protocol):
    """What the grammar asks of name resolution (see :mod:`lvs.ipvsadm.names`)."""

    def host(self, name: str) -> tuple[int, int] | None: ...

    def service(self, name: str, proto: int) -> int | None: ...


@dataclass
class Command:
    """One parsed ipvsadm invocation.

    ``kind`` is one of the ``CMD_*`` names.  ``options`` holds ipvsadm's names
    of the options given (``"service-address"``, ``"weight"``...).

    * ``key``: the virtual service named by ``-t/-u/--sctp-service/-f`` (any
      command), else None.
    * ``service``: the complete service for add-service/edit-service, as
      ipvsadm hands it to the kernel (scheduler defaulted to wlc, flags,
      persistence timeout, netmask, persistence engine).
    * ``dest``: the real server for add-server/edit-server (everything) and
      delete-server (address and port).
    * ``timeouts``: ``--set`` tcp, tcpfin, udp.
    * ``sync_daemon``: ``--start-daemon`` settings; ``daemon_state`` is
      ``"master"``/``"backup"`` for both daemon commands.
    * ``zero_all``: for zero, libipvs sends no service (all counters) when no
      service was given or it is all zeros (no fwmark, address ::/0.0.0.0,
      port 0).
    * listing switches: ``numeric``, ``connection``, ``timeout``, ``daemon``,
      ``stats``, ``rate``, ``exact``, ``thresholds``, ``persistent_conn``,
      ``tun_info``, ``sort`` (False with ``--nosort``; ``--sort`` is a no-op).
    """

    kind: str
    options: frozenset[str] = frozenset()
    key: ServiceKey | None = None
    service: ServiceSpec | None = None
    dest: DestSpec | None = None
    timeouts: tuple[int, int, int] | None = None
    sync_daemon: SyncDaemon | None = None
    daemon_state: str = ""
    zero_all: bool = False
    numeric: bool = False
    connection: bool = False
    timeout: bool = False
    daemon: bool = False
    stats: bool = False
    rate: bool = False
    exact: bool = False
    thresholds: bool = False
    persistent_conn: bool = False
    tun_info: bool = False
    sort: bool = True

    @property
    def nosort(self) -> bool:
        return not self.sort


# ---------------------------------------------------------------------------
# popt, as ipvsadm configures it
# ---------------------------------------------------------------------------

# ipvsadm's option table: long name, letter, argument kind, tag.  Order matters
# only where two entries share a letter or a name (popt takes the first).
_TABLE: tuple[Opt, ...] = tuple(
    Opt(*row)
    for row in (
        ("add-service", "A", NONE, "A"),
        ("edit-service", "E", NONE, "E"),
        ("delete-service", "D", NONE, "D"),
        ("clear", "C", NONE, "C"),
        ("list", "L", NONE, "L"),
        ("list", "l", NONE, "l"),
        ("zero", "Z", NONE, "Z"),
        ("add-server", "a", NONE, "a"),
        ("edit-server", "e", NONE, "e"),
        ("delete-server", "d", NONE, "d"),
        ("set", "", NONE, "set"),
        ("help", "h", NONE, "h"),
        ("version", "v", NONE, "v"),
        ("restore", "R", NONE, "R"),
        ("save", "S", NONE, "S"),
        ("start-daemon", "", STRING, "start-daemon"),
        ("stop-daemon", "", STRING, "stop-daemon"),
        ("tcp-service", "t", STRING, "t"),
        ("udp-service", "u", STRING, "u"),
        ("sctp-service", "", STRING, "sctp-service"),
        ("fwmark-service", "f", STRING, "f"),
        ("scheduler", "s", STRING, "s"),
        ("persistent", "p", OPTIONAL, "p"),
        ("netmask", "M", STRING, "M"),
        ("real-server", "r", STRING, "r"),
        ("masquerading", "m", NONE, "m"),
        ("ipip", "i", NONE, "i"),
        ("gatewaying", "g", NONE, "g"),
        ("weight", "w", STRING, "w"),
        ("u-threshold", "x", STRING, "x"),
        ("l-threshold", "y", STRING, "y"),
        ("numeric", "n", NONE, "n"),
        ("connection", "c", NONE, "c"),
        ("mcast-interface", "", STRING, "mcast-interface"),
        ("syncid", "", STRING, "syncid"),
        ("timeout", "", NONE, "timeout"),
        ("daemon", "", NONE, "daemon"),
        ("stats", "", NONE, "stats"),
        ("rate", "", NONE, "rate"),
        ("thresholds", "", NONE, "thresholds"),
        ("persistent-conn", "", NONE, "persistent-conn"),
        ("nosort", "", NONE, "nosort"),
        ("sort", "", NONE, "sort"),
        ("exact", "X", NONE, "X"),
        ("ipv6", "6", NONE, "6"),
        ("ops", "o", NONE, "o"),
        ("pe", "", STRING, "pe"),
        ("sched-flags", "b", STRING, "b"),
        ("mcast-group", "", STRING, "mcast-group"),
        ("mcast-port", "", STRING, "mcast-port"),
        ("mcast-ttl", "", STRING, "mcast-ttl"),
        ("sync-maxlen", "", STRING, "sync-maxlen"),
        ("tun-info", "", NONE, "tun-info"),
        ("tun-type", "", STRING, "tun-type"),
        ("tun-port", "", STRING, "tun-port"),
        ("tun-nocsum", "", NONE, "tun-nocsum"),
        ("tun-csum", "", NONE, "tun-csum"),
        ("tun-remcsum", "", NONE, "tun-remcsum"),
    )
)

OPTIONS = OptionTable(_TABLE)


def _number(text: str, lo: int, hi: int) -> int | None:
    """ipvsadm ``string_to_number``: a whole decimal string within [lo, hi]."""
    value, rest = strtol(text)
    if value is None or rest or not lo <= value <= hi:
        return None
    return value


def _host_to_addr(resolver: Resolver, name: str) -> int | None:
    """ipvsadm ``host_to_addr`` = gethostbyname, IPv4 answers only.

    glibc answers names made only of digits and dots itself (as an exact
    inet_aton; ipvsadm has already tried the lax one, so these never resolve)
    and names holding ':' as IPv6 literals (never IPv4); the rest go to the
    resolver (the files backend on the golden machine)."""
    if not name or ":" in name:
        return None
    if name[0] in DIGITS and all(c in "0123456789." for c in name) and not name.endswith("."):
        return None
    try:
        found = resolver.host(name)
    except (UnicodeError, ValueError):
        return None
    if found is None or found[0] != AF_INET:
        return None
    return found[1]


def _service_to_port(resolver: Resolver, name: str, proto: int) -> int | None:
    """ipvsadm ``service_to_port``: getservbyname for TCP, UDP or SCTP only."""
    if proto not in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP):
        return None
    try:
        return resolver.service(name, proto)
    except (UnicodeError, ValueError):
        return None


# ---------------------------------------------------------------------------
# ipvsadm's own tables (its names for options and the legal combinations)
# ---------------------------------------------------------------------------

# Option names in ipvsadm's index order; the matrix is checked in this order.
O_NUMERIC = "numeric"
O_CONNECTION = "connection"
O_SERVICE = "service-address"
O_SCHEDULER = "scheduler"
O_PERSISTENT = "persistent"
O_NETMASK = "netmask"
O_SERVER = "real-server"
O_FORWARD = "forwarding-method"
O_WEIGHT = "weight"
O_UTHRESHOLD = "u-threshold"
O_LTHRESHOLD = "l-threshold"
O_MCAST = "mcast-interface"
O_TIMEOUT = "timeout"
O_DAEMON = "daemon"
O_STATS = "stats"
O_RATE = "rate"
O_THRESHOLDS = "thresholds"
O_PERSISTENTCONN = "persistent-conn"
O_NOSORT = "nosort"
O_SYNCID = "syncid"
O_EXACT = "exact"
O_ONEPACKET = "ops"
O_PE = "pe"
O_SCHED_FLAGS = "sched-flags"
O_MCAST_GROUP = "mcast-group"
O_MCAST_PORT = "mcast-port"
O_MCAST_TTL = "mcast-ttl"
O_SYNC_MAXLEN = "sync-maxlen"
O_TUN_INFO = "tun-info"
O_TUN_TYPE = "tun-type"
O_TUN_PORT = "tun-port"
O_TUN_NOCSUM = "tun-nocsum"
O_TUN_CSUM = "tun-csum"
O_TUN_REMCSUM = "tun-remcsum"

OPTION_ORDER: tuple[str, ...] = (
    O_NUMERIC, O_CONNECTION, O_SERVICE, O_SCHEDULER, O_PERSISTENT, O_NETMASK, O_SERVER,
    O_FORWARD, O_WEIGHT, O_UTHRESHOLD, O_LTHRESHOLD, O_MCAST, O_TIMEOUT, O_DAEMON, O_STATS,
    O_RATE, O_THRESHOLDS, O_PERSISTENTCONN, O_NOSORT, O_SYNCID, O_EXACT, O_ONEPACKET, O_PE,
    O_SCHED_FLAGS, O_MCAST_GROUP, O_MCAST_PORT, O_MCAST_TTL, O_SYNC_MAXLEN, O_TUN_INFO,
    O_TUN_TYPE, O_TUN_PORT, O_TUN_NOCSUM, O_TUN_CSUM, O_TUN_REMCSUM,
)  # fmt: skip


@dataclass(frozen=True)
class _Rule:
    """What one command (or tunnel type) accepts: options it needs, options it
    allows, and a group of which at most one may appear; everything else is
    illegal."""

    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    exclusive: frozenset[str] = frozenset()


def _rule(required: str = "", optional: str = "", exclusive: str = "") -> _Rule:
    return _Rule(frozenset(required.split()), frozenset(optional.split()), frozenset(exclusive.split()))


_SERVICE_OPTS = "scheduler persistent netmask ops pe sched-flags"
_SERVER_OPTS = (
    "forwarding-method weight u-threshold l-threshold tun-type tun-port tun-nocsum tun-csum tun-remcsum"
)

# ipvsadm's commands_v_options, one rule per command.
_COMMAND_RULES: dict[str, _Rule] = {
    CMD_ADD: _rule("service-address", _SERVICE_OPTS),
    CMD_EDIT: _rule("service-address", _SERVICE_OPTS),
    CMD_DEL: _rule("service-address"),
    CMD_FLUSH: _rule(),
    CMD_LIST: _rule(
        optional="numeric stats rate thresholds persistent-conn nosort syncid exact tun-info",
        exclusive="connection service-address timeout daemon",
    ),
    CMD_ADDDEST: _rule("service-address real-server", _SERVER_OPTS),
    CMD_DELDEST: _rule("service-address real-server"),
    CMD_EDITDEST: _rule("service-address real-server", _SERVER_OPTS),
    CMD_TIMEOUT: _rule(),
    CMD_STARTDAEMON: _rule(optional="mcast-interface syncid mcast-group mcast-port mcast-ttl sync-maxlen"),
    CMD_STOPDAEMON: _rule(optional="syncid"),
    CMD_RESTORE: _rule(),
    CMD_SAVE: _rule(optional="numeric"),
    CMD_ZERO: _rule(optional="service-address"),
}

_TUN_OPTION_ORDER = (O_TUN_PORT, O_TUN_NOCSUM, O_TUN_CSUM, O_TUN_REMCSUM)
# ipvsadm's tunnel_types_v_options.
_TUNNEL_RULES: dict[int, _Rule] = {
    TUN_TYPE_IPIP: _rule(),
    TUN_TYPE_GUE: _rule("tun-port", exclusive="tun-nocsum tun-csum tun-remcsum"),
    TUN_TYPE_GRE: _rule(exclusive="tun-nocsum tun-csum"),
}

# Scheduler flags for -b: name -> (flag bit, the scheduler it needs or "").
_SCHED_FLAGS: dict[str, tuple[int, str]] = {
    "flag-1": (SVC_F_SCHED1, ""),
    "flag-2": (SVC_F_SCHED2, ""),
    "flag-3": (SVC_F_SCHED3, ""),
    "sh-fallback": (SVC_F_SCHED1, "sh"),
    "sh-port": (SVC_F_SCHED2, "sh"),
    "mh-fallback": (SVC_F_SCHED1, "mh"),
    "mh-port": (SVC_F_SCHED2, "mh"),
}

_COMMAND_TAGS = {
    "A": CMD_ADD,
    "E": CMD_EDIT,
    "D": CMD_DEL,
    "a": CMD_ADDDEST,
    "e": CMD_EDITDEST,
    "d": CMD_DELDEST,
    "C": CMD_FLUSH,
    "L": CMD_LIST,
    "l": CMD_LIST,
    "Z": CMD_ZERO,
    "set": CMD_TIMEOUT,
    "R": CMD_RESTORE,
    "S": CMD_SAVE,
    "start-daemon": CMD_STARTDAEMON,
    "stop-daemon": CMD_STOPDAEMON,
}

_DEF_SCHED = "wlc"
_DEF_MCAST_IFN = "eth0"
_SCHEDNAME_MAX = IP_VS_SCHEDNAME_MAXLEN - 1  # strncpy(..., IP_VS_SCHEDNAME_MAXLEN - 1)
_PENAME_MAX = IP_VS_PENAME_MAXLEN  # strncpy(..., IP_VS_PENAME_MAXLEN)
_IFNAME_MAX = 15  # strncpy(..., IP_VS_IFNAME_MAXLEN - 1)
_SCHED_FLAGS_BUF = 127  # snprintf into char[128]


def _fail(message: str, rc: int = 2) -> UsageError:
    """ipvsadm ``fail``: the message and a newline on stderr, exit status 2."""
    return UsageError(message + "\n", rc)


# ---------------------------------------------------------------------------
# The parse
# ---------------------------------------------------------------------------


@dataclass
class _Endpoint:
    """ipvsadm's working copy of a service or server address."""

    af: int = 0
    protocol: int = IPPROTO_IP
    addr: int = 0
    port: int = 0
    fwmark: int = 0
    netmask: int = 0xFFFFFFFF

    def copy(self) -> _Endpoint:
        return _Endpoint(self.af, self.protocol, self.addr, self.port, self.fwmark, self.netmask)


_ADDR = 1
_PORT = 2


@dataclass
class _State:
    """Everything ipvsadm's ``struct ipvs_command_entry`` and friends hold."""

    cmd: str = ""
    options: list[str] = field(default_factory=list)
    svc: _Endpoint = field(default_factory=_Endpoint)
    sched_name: str = ""
    svc_flags: int = 0
    persist_timeout: int = 0
    pe_name: str = ""
    sched_flags_arg: str = ""
    dest: _Endpoint = field(default_factory=_Endpoint)
    fwd: int = CONN_F_DROUTE
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: int = TUN_TYPE_IPIP
    tun_port: int = 0
    tun_flags: int = 0
    timeouts: tuple[int, int, int] | None = None
    daemon_state: str = ""
    mcast_ifn: str = ""
    syncid: int = 0
    sync_maxlen: int = 0
    mcast_group: str = ""
    mcast_port: int = 0
    mcast_ttl: int = 0
    numeric: bool = False
    stats: bool = False
    rate: bool = False
    thresholds: bool = False
    persistent_conn: bool = False
    nosort: bool = False
    exact: bool = False
    tun_info: bool = False

    def has(self, name: str) -> bool:
        return name in self.options

    def set_option(self, name: str) -> None:
        """ipvsadm ``set_option``: each option at most once."""
        if name in self.options:
            raise _fail(f"multiple '{name}' options specified")
        self.options.append(name)


def _parse_service(text: str, ep: _Endpoint, resolver: Resolver) -> int:
    """ipvsadm ``parse_service``: ``host[:port]`` or ``[v6]:port`` into ``ep``.

    Returns _ADDR|_PORT bits (0 = refused).  Pure digits are not a host; a
    bracketed address must be followed by ``:port``; an unbracketed IPv6
    literal takes the whole text (no port); otherwise the last ':' splits
    host and port; the host is inet_aton or a resolved IPv4 name; the port is
    0..65535 or a service name of ``ep.protocol``."""
    if all(c in DIGITS for c in text):  # also the empty string
        return 0
    port_text: str | None = None
    host = text
    if text.startswith("["):
        inner, bracket, after = text[1:].partition("]")
        if not bracket or not after.startswith(":"):
            return 0
        host, port_text = inner, after[1:]
    v6 = inet_pton(AF_INET6, host)
    if v6 is not None:
        ep.af, ep.addr, ep.netmask = AF_INET6, v6, 128
    else:
        # not IPv6: any ':' left in the host part splits off a port (the
        # bracketed text's own port is forgotten then, as ipvsadm forgets it)
        head, colon, tail = host.rpartition(":")
        if colon:
            host, port_text = head, tail
        elif text.startswith("["):
            port_text = None
        v4 = inet_aton(host)
        if v4 is None:
            v4 = _host_to_addr(resolver, host)
        if v4 is None:
            return 0
        ep.af, ep.addr = AF_INET, v4
    result = _ADDR
    if port_text is not None:
        result |= _PORT
        port = _number(port_text, 0, 65535)
        if port is None:
            port = _service_to_port(resolver, port_text, ep.protocol)
        if port is None:
            return 0
        ep.port = port
    return result


def _parse_netmask(text: str, resolver: Resolver) -> int | None:
    """ipvsadm ``parse_netmask``: inet_aton, else an IPv4 host name."""
    mask = inet_aton(text)
    if mask is None:
        mask = _host_to_addr(resolver, text)
    return mask


def _parse_timeout(text: str | None, lo: int, hi: int) -> int:
    """ipvsadm ``parse_timeout``; no value means the default persistence 360 s."""
    if text is None:
        return DEFAULT_PERSISTENT_TIMEOUT
    value = _number(text, lo, hi)
    if value is None:
        raise _fail(f"invalid timeout value `{text}' specified")
    return value


def _parse_fwmark(text: str) -> int:
    """ipvsadm ``parse_fwmark``: 1..4294967295."""
    value, rest = strtol(text)
    if value is None or rest or value > LONG_MAX - 1 or value < LONG_MIN + 1:
        value = None
    elif value < 0:
        value += 1 << 64  # strtol's long stored in an unsigned long
    if value is None or not 1 <= value <= UINT_MAX:
        raise _fail(f"invalid fwmark value `{text}' specified")
    return value


def _parse_sched_flags(sched: str, arg: str) -> int:
    """ipvsadm ``parse_sched_flags``: comma-separated names, the sh-/mh- ones
    only with their scheduler (``-s`` or the default wlc)."""
    sched = sched or _DEF_SCHED
    words = [w for w in arg.split(",") if w]
    if not words:
        # strtok found nothing and ipvsadm dereferences NULL: SIGSEGV
        raise UsageError("", 128 + 11)
    flags = 0
    for word in words:
        known = _SCHED_FLAGS.get(word)
        if known is None:
            raise _fail(f"invalid scheduler flag `{word}'")
        bit, needs = known
        flags |= bit
        if needs and sched != needs:
            raise _fail(f"incompatible scheduler flag `{word}'")
    return flags


def _check_rules(rule: _Rule, given: set[str], order: tuple[str, ...], what: str) -> None:
    """ipvsadm ``generic_opt_check`` / ``tunnel_opt_check``: walk the options
    in index order; the first missing, illegal or conflicting one fails."""
    first_exclusive = ""
    for name in order:
        if name not in given:
            if name in rule.required:
                raise _fail(f"You need to supply the '{name}' option for the {what}")
            continue
        if name in rule.exclusive:
            if first_exclusive:
                raise _fail(
                    f"The option '{name}' conflicts with the '{first_exclusive}' option in the {what}"
                )
            first_exclusive = name
        elif name not in rule.required and name not in rule.optional:
            raise _fail(f"Illegal '{name}' option with the {what}")


def parse(argv: list[str], resolver: Resolver) -> Command:
    """Parse the arguments after ``ipvsadm`` (argv[0] excluded) like ipvsadm
    1.31 does; raises :class:`UsageError`.  ``resolver`` resolves host and
    service names (lvsd's reads /etc/hosts and /etc/services only)."""
    # C strings end at the first NUL
    args = [a.split("\0", 1)[0] for a in argv]
    if not args:
        return Command(CMD_LIST)  # bare ipvsadm lists the table (main)
    st = _State()
    popt = Popt(OPTIONS, args)
    try:
        first = _next_opt(popt)
    except PoptError:
        first = None
    if first is None:
        raise UsageError(TRY_HELP, 255)
    opt, value = first
    if opt.tag == "h":
        return Command(CMD_HELP)
    if opt.tag == "v":
        return Command(CMD_VERSION)
    cmd = _COMMAND_TAGS.get(opt.tag)
    if cmd is None:
        raise UsageError(TRY_HELP, 255)
    st.cmd = cmd
    if cmd in (CMD_STARTDAEMON, CMD_STOPDAEMON):
        if value not in ("master", "backup"):
            raise _fail(
                "illegal start-daemon parameter specified"
                if cmd == CMD_STARTDAEMON
                else "illegal start_daemon specified"
            )
        st.daemon_state = value

    while True:
        try:
            got = _next_opt(popt)
        except PoptError as e:
            raise UsageError(f"{popt.bad_option()}: {REASON[e.code]}\n", 255, fatal=False) from None
        if got is None:
            break
        _apply_option(st, got[0], got[1], popt, resolver)

    leftovers = iter(popt.leftovers)
    if st.cmd == CMD_TIMEOUT:
        words = [w for _, w in zip(range(3), leftovers, strict=False)]
        if len(words) < 3:
            raise _fail("--set option requires 3 timeout values")
        tcp, fin, udp = (_parse_timeout(w, 0, MAX_TIMEOUT) for w in words)
        st.timeouts = (tcp, fin, udp)
    extra = next(leftovers, None)
    if extra is not None:
        raise _fail(f"unexpected argument {extra}")

    if st.sched_flags_arg:
        st.svc_flags &= ~SVC_F_SCHED_MASK
        st.svc_flags |= _parse_sched_flags(st.sched_name, st.sched_flags_arg)

    return _finish(st)


def _next_opt(popt: Popt) -> tuple[Opt, str | None] | None:
    try:
        return popt.next_opt()
    except NoWordToTake:
        raise UsageError(
            f"{PROGRAM}: popt's `{EXPAND}' finds no word to take here (the real ipvsadm loops forever)\n", 2
        ) from None


def _apply_option(st: _State, opt: Opt, value: str | None, popt: Popt, resolver: Resolver) -> None:
    """One option after the command (the loop of ipvsadm ``parse_options``)."""
    tag = opt.tag
    if tag in ("t", "u", "sctp-service"):
        assert value is not None
        st.set_option(O_SERVICE)
        st.svc.protocol = {"t": IPPROTO_TCP, "u": IPPROTO_UDP}.get(tag, IPPROTO_SCTP)
        if not _parse_service(value, st.svc, resolver) & _ADDR:
            raise _fail("illegal virtual server address[:port] specified")
    elif tag == "f":
        assert value is not None
        st.set_option(O_SERVICE)
        st.svc.af = AF_INET
        st.svc.protocol = IPPROTO_TCP
        st.svc.fwmark = _parse_fwmark(value)
    elif tag == "s":
        assert value is not None
        st.set_option(O_SCHEDULER)
        st.sched_name = value[:_SCHEDNAME_MAX]
    elif tag == "p":
        st.set_option(O_PERSISTENT)
        st.svc_flags |= SVC_F_PERSISTENT
        st.persist_timeout = _parse_timeout(value, 1, MAX_TIMEOUT)
    elif tag == "M":
        assert value is not None
        st.set_option(O_NETMASK)
        if st.svc.af != AF_INET6:
            mask = _parse_netmask(value, resolver)
            if mask is None:
                raise _fail("illegal virtual server persistent mask specified")
            st.svc.netmask = mask
        else:
            plen = atoi(value) & 0xFFFFFFFF
            if not 1 <= plen <= 128:
                raise _fail("illegal ipv6 netmask specified")
            st.svc.netmask = plen
    elif tag == "r":
        assert value is not None
        st.set_option(O_SERVER)
        scratch = st.svc.copy()
        got = _parse_service(value, scratch, resolver)
        st.dest = _Endpoint(af=scratch.af, addr=scratch.addr, port=scratch.port)
        if not got & _ADDR:
            raise _fail("illegal real server address[:port] specified")
        if got == _ADDR:
            st.dest.port = st.svc.port  # no port given: the virtual port
    elif tag in ("i", "g", "m"):
        st.set_option(O_FORWARD)
        st.fwd = {"i": CONN_F_TUNNEL, "g": CONN_F_DROUTE, "m": CONN_F_MASQ}[tag]
    elif tag == "w":
        assert value is not None
        st.set_option(O_WEIGHT)
        weight = _number(value, 0, INT_MAX)
        if weight is None:
            raise _fail("illegal weight specified")
        st.weight = weight
    elif tag in ("x", "y"):
        assert value is not None
        upper = tag == "x"
        st.set_option(O_UTHRESHOLD if upper else O_LTHRESHOLD)
        limit = _number(value, 0, INT_MAX)
        if limit is None:
            raise _fail("illegal u_threshold specified" if upper else "illegal l_threshold specified")
        if upper:
            st.u_threshold = limit
        else:
            st.l_threshold = limit
    elif tag == "c":
        st.set_option(O_CONNECTION)
    elif tag == "n":
        st.set_option(O_NUMERIC)
        st.numeric = True
    elif tag == "mcast-interface":
        assert value is not None
        st.set_option(O_MCAST)
        st.mcast_ifn = value[:_IFNAME_MAX]
    elif tag == "syncid":
        assert value is not None
        st.set_option(O_SYNCID)
        syncid = _number(value, 0, 255)
        if syncid is None:
            raise _fail("illegal syncid specified")
        st.syncid = syncid
    elif tag in _SIMPLE_SWITCHES:
        name, attr = _SIMPLE_SWITCHES[tag]
        st.set_option(name)
        if attr:
            setattr(st, attr, True)
    elif tag == "sort":
        pass  # the default; accepted for compatibility, with any command
    elif tag == "6":
        if not st.svc.fwmark:
            raise _fail("-6 used before -f\n")
        st.svc.af = AF_INET6
        st.svc.netmask = 128
    elif tag == "o":
        st.set_option(O_ONEPACKET)
        st.svc_flags |= SVC_F_ONEPACKET
    elif tag == "pe":
        assert value is not None
        st.set_option(O_PE)
        st.pe_name = value[:_PENAME_MAX]
    elif tag == "b":
        assert value is not None
        st.set_option(O_SCHED_FLAGS)
        st.sched_flags_arg = value[:_SCHED_FLAGS_BUF]
    elif tag == "mcast-group":
        assert value is not None
        st.set_option(O_MCAST_GROUP)
        st.mcast_group = _parse_mcast_group(value)
    elif tag in ("mcast-port", "mcast-ttl", "sync-maxlen", "tun-port"):
        assert value is not None
        name, hi, attr = _NUMERIC_OPTIONS[tag]
        st.set_option(name)
        number = _number(value, 1, hi)
        if number is None:
            raise _fail(f"illegal {_NUMERIC_WORDS[tag]} specified")
        setattr(st, attr, number)
    elif tag == "tun-type":
        assert value is not None
        st.set_option(O_TUN_TYPE)
        tun = {"ipip": TUN_TYPE_IPIP, "gue": TUN_TYPE_GUE, "gre": TUN_TYPE_GRE}.get(value)
        if tun is None:
            raise _fail("illegal tunnel type specified")
        st.tun_type = tun
    elif tag in ("tun-nocsum", "tun-csum", "tun-remcsum"):
        st.set_option(tag)
        st.tun_flags |= _TUN_FLAGS[tag]
    else:
        # a command, -h or -v after the command
        raise _fail(f"invalid option `{popt.bad_option()}'")


# Options that only switch something on: popt tag -> (ipvsadm name, _State attribute).
_SIMPLE_SWITCHES: dict[str, tuple[str, str]] = {
    "timeout": (O_TIMEOUT, ""),
    "daemon": (O_DAEMON, ""),
    "stats": (O_STATS, "stats"),
    "rate": (O_RATE, "rate"),
    "thresholds": (O_THRESHOLDS, "thresholds"),
    "persistent-conn": (O_PERSISTENTCONN, "persistent_conn"),
    "nosort": (O_NOSORT, "nosort"),
    "X": (O_EXACT, "exact"),
    "tun-info": (O_TUN_INFO, "tun_info"),
}

# Numeric daemon/tunnel options: tag -> (ipvsadm name, upper bound, _State attribute).
_NUMERIC_OPTIONS: dict[str, tuple[str, int, str]] = {
    "mcast-port": (O_MCAST_PORT, 65535, "mcast_port"),
    "mcast-ttl": (O_MCAST_TTL, 255, "mcast_ttl"),
    "sync-maxlen": (O_SYNC_MAXLEN, 65535 - 20 - 8, "sync_maxlen"),
    "tun-port": (O_TUN_PORT, 65535, "tun_port"),
}
_TUN_FLAGS = {"tun-nocsum": TUN_F_NOCSUM, "tun-csum": TUN_F_CSUM, "tun-remcsum": TUN_F_REMCSUM}
_NUMERIC_WORDS = {
    "mcast-port": "mcast-port",
    "mcast-ttl": "mcast-ttl",
    "sync-maxlen": "sync-maxlen",
    "tun-port": "tunnel port",
}


def _parse_mcast_group(text: str) -> str:
    """``--mcast-group``: an IPv6 multicast address if the text has a ':',
    else an IPv4 one (224.0.0.0/4); kept as inet_ntop prints it."""
    if ":" in text:
        value = inet_pton(AF_INET6, text)
        if value is None or value >> 120 != 0xFF:
            raise _fail(f"invalid IPv6 mcast-group `{text}'")
        return format_ip(AF_INET6, value)
    value = inet_pton(AF_INET, text)
    if value is None or value >> 28 != 0xE:
        raise _fail(f"invalid IPv4 mcast-group `{text}'")
    return format_ip(AF_INET, value)


def _finish(st: _State) -> Command:
    """ipvsadm ``process_options`` up to the kernel call: the matrix, the
    per-command rules and defaults; then the Command."""
    given = set(st.options)
    _check_rules(_COMMAND_RULES[st.cmd], given, OPTION_ORDER, f"'{st.cmd}' command")
    svc = st.svc
    cmd = st.cmd

    if cmd in (CMD_ADD, CMD_EDIT):
        if not svc.fwmark and not svc.port and not st.svc_flags & SVC_F_PERSISTENT:
            raise _fail("Zero port specified for non-persistent service")
        if st.svc_flags & SVC_F_ONEPACKET and not svc.fwmark and svc.protocol != IPPROTO_UDP:
            raise _fail("One-Packet Scheduling is only for UDP virtual services")
        if not st.sched_name:
            st.sched_name = _DEF_SCHED
    if cmd == CMD_STARTDAEMON and not st.mcast_ifn:
        st.mcast_ifn = _DEF_MCAST_IFN

    fwd = st.fwd & CONN_F_FWD_MASK
    if cmd in (CMD_ADDDEST, CMD_EDITDEST):
        if not svc.fwmark and fwd in (CONN_F_TUNNEL, CONN_F_DROUTE):
            st.dest.port = svc.port
        if st.dest.af != svc.af and fwd != CONN_F_TUNNEL:
            raise _fail("Different address family is allowed only for tunneling servers")
        if given & {O_TUN_TYPE, O_TUN_PORT, O_TUN_NOCSUM, O_TUN_CSUM, O_TUN_REMCSUM} and fwd != CONN_F_TUNNEL:
            raise _fail("Tunnel options conflict with forward method")
        what = f"'{TUN_TYPE_NAMES[st.tun_type]}' tunnel type"
        _check_rules(_TUNNEL_RULES[st.tun_type], given, _TUN_OPTION_ORDER, what)

    if cmd == CMD_LIST and (
        (given & {O_CONNECTION, O_TIMEOUT, O_DAEMON} and given & {O_STATS, O_RATE, O_THRESHOLDS})
        or (given & {O_TIMEOUT, O_DAEMON} and O_PERSISTENTCONN in given)
    ):
        raise _fail("options conflicts in the list command")

    key: ServiceKey | None = None
    if O_SERVICE in given:
        if svc.fwmark:
            key = ServiceKey(svc.af, IPPROTO_IP, 0, 0, svc.fwmark)
        else:
            key = ServiceKey(svc.af, svc.protocol, svc.addr, svc.port)

    command = Command(
        cmd,
        options=frozenset(given),
        key=key,
        numeric=st.numeric,
        connection=O_CONNECTION in given,
        timeout=O_TIMEOUT in given,
        daemon=O_DAEMON in given,
        stats=st.stats,
        rate=st.rate,
        exact=st.exact,
        thresholds=st.thresholds,
        persistent_conn=st.persistent_conn,
        tun_info=st.tun_info,
        sort=not st.nosort,
        timeouts=st.timeouts,
        daemon_state=st.daemon_state,
    )
    if cmd in (CMD_ADD, CMD_EDIT) and key is not None:
        command.service = ServiceSpec(
            key=key,
            sched_name=st.sched_name,
            flags=st.svc_flags,
            timeout=st.persist_timeout,
            netmask=svc.netmask,
            pe_name=st.pe_name,
        )
    if cmd in (CMD_ADDDEST, CMD_EDITDEST, CMD_DELDEST):
        command.dest = DestSpec(
            af=st.dest.af,
            addr=st.dest.addr,
            port=st.dest.port,
            fwd=fwd,
            weight=st.weight,
            u_threshold=st.u_threshold,
            l_threshold=st.l_threshold,
            tun_type=st.tun_type,
            tun_port=st.tun_port,
            tun_flags=st.tun_flags,
        )
    if cmd == CMD_ZERO:
        command.zero_all = key is None or (not svc.fwmark and not svc.addr and not svc.port)
    if cmd == CMD_STARTDAEMON:
        command.sync_daemon = SyncDaemon(
            state=st.daemon_state,
            mcast_ifn=st.mcast_ifn,
            syncid=st.syncid,
            sync_maxlen=st.sync_maxlen,
            mcast_group=st.mcast_group,
            mcast_port=st.mcast_port or 8848,
            mcast_ttl=st.mcast_ttl or 1,
        )
    return command
