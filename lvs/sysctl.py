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

    def set(self, name: str, value: str) -> None:
        """Set one sysctl from its text; raises KeyError or ValueError."""
        if name not in self.names():
            raise KeyError(name)
        words = value.split()
        if not words:
            raise ValueError(f"empty value for {name}")
        number = int(words[0])
        if number < 0:
            raise ValueError(f"negative value for {name}")
        if name == "sync_threshold":
            # proc_do_sync_threshold: "threshold period", threshold < period
            # unless the period is 0
            period = int(words[1]) if len(words) > 1 else self.sync_period
            if period < 0 or (period and number >= period):
                raise ValueError("sync_threshold must be below sync_period")
            self.sync_period = period
        elif name == "sync_version" and number > 1:
            raise ValueError("sync_version is 0 or 1")
        setattr(self, name, number)


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
