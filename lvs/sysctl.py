"""The sysctls of net.ipv4.vs that change decisions, with the kernel's defaults
(Documentation/networking/ipvs-sysctl.rst; ip_vs_ctl.c)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .conn import (
    TCP_S_CLOSE,
    TCP_S_CLOSE_WAIT,
    TCP_S_ESTABLISHED,
    TCP_S_FIN_WAIT,
    TCP_S_LAST_ACK,
    TCP_S_LISTEN,
    TCP_S_NONE,
    TCP_S_SYN_RECV,
    TCP_S_SYN_SENT,
    TCP_S_SYNACK,
    TCP_S_TIME_WAIT,
)


@dataclass
class Sysctls:
    """``/proc/sys/net/ipv4/vs/*`` values that pylvs honours."""

    am_droprate: int = 10
    amemthresh: int = 1024
    backup_only: int = 0
    cache_bypass: int = 0
    conn_reuse_mode: int = 1
    conntrack: int = 0
    drop_entry: int = 0
    drop_packet: int = 0
    expire_nodest_conn: int = 0
    expire_quiescent_template: int = 0
    ignore_tunneled: int = 0
    nat_icmp_send: int = 0
    pmtu_disc: int = 1
    secure_tcp: int = 0
    sloppy_tcp: int = 0
    sloppy_sctp: int = 0
    snat_reroute: int = 1
    sync_persist_mode: int = 0
    sync_ports: int = 1
    sync_qlen_max: int = 0
    sync_refresh_period: int = 0
    sync_retries: int = 0
    sync_sock_size: int = 0
    #: sync_threshold is the vector "threshold period" ("3 50"): the period
    #: is kept beside it, in sync_period (no sysctl of its own)
    sync_threshold: int = 3
    sync_period: int = 50
    sync_version: int = 1
    run_estimation: int = 1
    lblc_expiration: int = 86400
    lblcr_expiration: int = 86400

    def names(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "sync_period"]

    def get(self, name: str) -> int:
        """The value of a known sysctl; KeyError for any other name (so
        ``__class__``, ``__dict__`` and the like are never answered)."""
        if name not in _RULES:
            raise KeyError(name)
        return int(getattr(self, name))

    def set(self, name: str, value: str) -> None:
        """Set one sysctl from its text as ``/proc/sys/net/ipv4/vs/NAME``
        does; raises KeyError (no such file) or SysctlError (EINVAL)."""
        if name not in _RULES:
            raise KeyError(name)
        number = check_value(name, value)
        if name == "sync_threshold":
            # proc_do_sync_threshold: "threshold period", threshold < period
            # unless the period is 0
            words = str(value).split()
            period = check_value("sync_threshold", words[1]) if len(words) > 1 else self.sync_period
            if number < 0 or period < 0 or (period and number >= period):
                raise SysctlError("sync_threshold must be below sync_period")
            self.sync_period = period
        setattr(self, name, number)


class SysctlError(ValueError):
    """A value the kernel's proc handler refuses with EINVAL."""


INT_MAX = 2**31 - 1
INT_MIN = -(2**31)
ULONG_MAX = 2**64 - 1
#: the kernel's tick rate: proc_dointvec_jiffies refuses seconds above
#: INT_MAX / HZ (Debian kernels are built with HZ=250)
HZ = 250

# How each file is parsed, after ip_vs_ctl.c's vs_vars table (and
# ip_vs_lblc.c/ip_vs_lblcr.c for the two expirations):
#   "int"      proc_dointvec: any value that fits an int, negative included
#   "minmax"   proc_dointvec_minmax with the bounds given
#   "defense"  proc_do_defense_mode: 0..3
#   "ports"    proc_do_sync_ports: a power of two, at least 1
#   "ulong"    proc_doulongvec_minmax: 0..ULONG_MAX, no sign
#   "jiffies"  proc_dointvec_jiffies: seconds, at most INT_MAX / HZ
_RULES: dict[str, tuple[str, int, int]] = {
    "am_droprate": ("int", INT_MIN, INT_MAX),
    "amemthresh": ("int", INT_MIN, INT_MAX),
    "backup_only": ("int", INT_MIN, INT_MAX),
    "cache_bypass": ("int", INT_MIN, INT_MAX),
    "conn_reuse_mode": ("int", INT_MIN, INT_MAX),
    "conntrack": ("int", INT_MIN, INT_MAX),
    "drop_entry": ("defense", 0, 3),
    "drop_packet": ("defense", 0, 3),
    "expire_nodest_conn": ("int", INT_MIN, INT_MAX),
    "expire_quiescent_template": ("int", INT_MIN, INT_MAX),
    "ignore_tunneled": ("int", INT_MIN, INT_MAX),
    "nat_icmp_send": ("int", INT_MIN, INT_MAX),
    "pmtu_disc": ("int", INT_MIN, INT_MAX),
    "secure_tcp": ("defense", 0, 3),
    "sloppy_tcp": ("int", INT_MIN, INT_MAX),
    "sloppy_sctp": ("int", INT_MIN, INT_MAX),
    "snat_reroute": ("int", INT_MIN, INT_MAX),
    "sync_persist_mode": ("int", INT_MIN, INT_MAX),
    "sync_ports": ("ports", 1, INT_MAX),
    "sync_qlen_max": ("ulong", 0, ULONG_MAX),
    "sync_refresh_period": ("jiffies", INT_MIN // HZ, INT_MAX // HZ),
    "sync_retries": ("minmax", 0, 3),
    "sync_sock_size": ("int", INT_MIN, INT_MAX),
    "sync_threshold": ("int", INT_MIN, INT_MAX),
    "sync_version": ("minmax", 0, 1),
    "run_estimation": ("int", INT_MIN, INT_MAX),
    "lblc_expiration": ("jiffies", INT_MIN // HZ, INT_MAX // HZ),
    "lblcr_expiration": ("jiffies", INT_MIN // HZ, INT_MAX // HZ),
}


def is_known(name: object) -> bool:
    return isinstance(name, str) and name in _RULES


def check_value(name: str, text: str) -> int:
    """The number ``echo TEXT > /proc/sys/net/ipv4/vs/NAME`` would store, or
    SysctlError ("Invalid argument") where the kernel answers EINVAL.  Only
    the first number counts, as for a one-int table entry."""
    kind, low, high = _RULES[name]
    words = str(text).split()
    if not words:
        raise SysctlError(f"{name}: empty value")
    word = words[0]
    digits = word[1:] if word[:1] == "-" else word
    if not digits.isdigit() or not digits.isascii():
        raise SysctlError(f"{name}: {word!r} is not a number")
    if kind == "ulong" and word.startswith("-"):
        raise SysctlError(f"{name}: must not be negative")
    number = int(word)
    if not low <= number <= high:
        raise SysctlError(f"{name}: {number} is out of range [{low}, {high}]")
    if kind == "ports" and number & (number - 1):
        raise SysctlError(f"{name}: {number} is not a power of two")
    return number


def default_tcp_timeouts() -> list[float]:
    """ip_vs_proto_tcp.c: seconds per TCP state, indexed by state number."""
    t = [0.0] * 11
    t[TCP_S_NONE] = 2
    t[TCP_S_ESTABLISHED] = 15 * 60
    t[TCP_S_SYN_SENT] = 2 * 60
    t[TCP_S_SYN_RECV] = 1 * 60
    t[TCP_S_FIN_WAIT] = 2 * 60
    t[TCP_S_TIME_WAIT] = 2 * 60
    t[TCP_S_CLOSE] = 10
    t[TCP_S_CLOSE_WAIT] = 60
    t[TCP_S_LAST_ACK] = 30
    t[TCP_S_LISTEN] = 2 * 60
    t[TCP_S_SYNACK] = 2 * 60
    return t


DEFAULT_UDP_TIMEOUT = 5 * 60
