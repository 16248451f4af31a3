"""Health-check policy: checker results -> real-server state -> table changes.

This is keepalived 2.2's LVS half (keepalived/check/ipwrapper.c,
ipvswrapper.c, check_api.c, check_data.c) re-expressed without I/O.  The
daemon runs the probes (``checkers/``) and hands each outcome to
:meth:`HealthMonitor.result` with the current time; the monitor changes the
table through the ordinary admin operations of :class:`lvs.ctl.IPVS`, so
``-L -n`` is what ``ipvsadm`` shows for the kernel table keepalived makes.

The rules emulated:

* A real server is alive while none of its checkers has failed.  A checker
  fails after ``retry + 1`` failed attempts in a row, ``delay_before_retry``
  apart (at start-up, one failure is enough); one success brings it back.
  Attempts run every ``delay_loop``; the first after one second plus a random
  part of ``warmup`` (default: the delay loop).
* On failure the real server is deleted from the service, or, with
  ``inhibit_on_failure``, its weight is set to 0 (its connections go on);
  on recovery it is added again (or given its weight back).
* ``alpha``: checkers start failed, so real servers start out of the pool.
* Quorum: the sum of the weights of live real servers.  It is gained at
  ``quorum + hysteresis`` and lost below ``quorum - hysteresis``; on loss the
  live real servers leave and the ``sorry_server`` comes in (with
  ``sorry_server_inhibit`` it stays in the table at weight 0 while unused);
  on gain the reverse.  ``quorum_up``/``quorum_down`` and
  ``notify_up``/``notify_down`` name scripts the daemon runs.
* MISC_CHECK with ``misc_dynamic``: exit status 2-255 sets the weight to
  status - 2.

Pure: time comes in as ``now``, randomness from the injected ``rng``; what
the daemon must do (log a line, run a script) is queued in :attr:`outbox`.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from .addr import format_ip
from .constants import (
    CONN_F_MASQ,
    INT_MAX,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TUN_TYPE_IPIP,
)
from .ctl import IPVS, DestSpec, ServiceSpec
from .errors import IPVSError
from .model import ServiceKey

#: keepalived's defaults (check_data.c alloc_vs, check_api.c queue_checker)
DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RETRY = 1
DEFAULT_DELAY_BEFORE_RETRY = 1.0
#: BOOTSTRAP_DELAY: the first check runs this long after start (plus warmup)
BOOTSTRAP_DELAY = 1.0
#: per-checker-kind defaults that differ (check_http.c, check_dns.c, check_misc.c)
KIND_DEFAULT_RETRY = {"DNS_CHECK": 3, "MISC_CHECK": 0}
#: None: the delay loop (DNS_CHECK)
KIND_DEFAULT_DELAY_BEFORE_RETRY: dict[str, float | None] = {
    "HTTP_GET": 3.0,
    "SSL_GET": 3.0,
    "DNS_CHECK": None,
}

CHECKER_KINDS = (
    "TCP_CHECK",
    "HTTP_GET",
    "SSL_GET",
    "UDP_CHECK",
    "DNS_CHECK",
    "MISC_CHECK",
    "PING_CHECK",
    "SMTP_CHECK",
)

_PROTO_TEXT = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp", 0: "none"}


# -- configuration (what keepalived.conf or the YAML file says) ----------------------------
@dataclass
class CheckerConf:
    """One checker block.  ``None`` means "inherit" (real server, then virtual
    server, then the kind's default), as keepalived resolves it."""

    kind: str
    where: str = ""
    connect_ip: str | None = None
    connect_port: int | None = None
    bindto: str | None = None
    bind_port: int | None = None
    bind_if: str | None = None
    connect_timeout: float | None = None
    fwmark: int | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    warmup: float | None = None
    delay_loop: float | None = None
    alpha: bool | None = None
    log_all_failures: bool = False
    #: the kind's own settings: url list, payload, misc_path, type/name ...
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RealServerConf:
    af: int
    addr: int
    port: int
    where: str = ""
    weight: int | None = None
    fwd: int | None = None
    tun_type: int = TUN_TYPE_IPIP
    tun_port: int = 0
    tun_flags: int = 0
    u_threshold: int = 0
    l_threshold: int = 0
    inhibit: bool | None = None
    alpha: bool | None = None
    notify_up: str | None = None
    notify_down: str | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    warmup: float | None = None
    connect_timeout: float | None = None
    delay_loop: float | None = None
    virtualhost: str | None = None
    checkers: list[CheckerConf] = field(default_factory=list)

    def ident(self) -> tuple[int, int, int]:
        return (self.af, self.addr, self.port)


@dataclass
class VirtualServerConf:
    """A virtual_server block; with a group, one per group member service."""

    name: str
    keys: list[ServiceKey]
    where: str = ""
    sched: str = "wlc"
    flags: int = 0
    timeout: int = 0
    netmask: int | None = None
    pe: str = ""
    fwd: int | None = None
    tun_type: int = TUN_TYPE_IPIP
    tun_port: int = 0
    tun_flags: int = 0
    delay_loop: float = DEFAULT_DELAY_LOOP
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    retry: int | None = None
    delay_before_retry: float | None = None
    warmup: float | None = None
    alpha: bool = False
    omega: bool = False
    inhibit: bool = False
    weight: int = 1
    quorum: int = 1
    hysteresis: int = 0
    quorum_up: str | None = None
    quorum_down: str | None = None
    sorry: RealServerConf | None = None
    virtualhost: str | None = None
    realservers: list[RealServerConf] = field(default_factory=list)


# -- runtime state ----------------------------------------------------------------------------
def real_weight(weight: int) -> int:
    """keepalived's real_weight(): the effective weight clamped to the kernel's range."""
    return max(0, min(INT_MAX, weight))


@dataclass
class Checker:
    """One checker with its inherited settings resolved, and its state."""

    ident: int
    kind: str
    vs: VsState
    rs: RsState
    conf: CheckerConf
    af: int
    host: int
    port: int
    connect_timeout: float
    retry: int
    delay_before_retry: float
    delay_loop: float
    warmup: float
    alpha: bool
    is_up: bool = True
    has_run: bool = False
    retry_it: int = 0
    due: float = 0.0
    running: bool = False
    #: MISC_CHECK misc_dynamic: this checker's share of the effective weight
    cur_weight: int = 0
    last_exit_code: int = -1
    last_reason: str = ""

    def describe(self) -> str:
        """keepalived's FMT_CHK: the real server as ``[addr]:proto:port``."""
        return self.rs.describe()

    def target(self) -> str:
        return f"{format_ip(self.af, self.host)}:{self.port}"


@dataclass
class RsState:
    conf: RealServerConf
    vs: VsState
    inhibit: bool
    iweight: int
    effective_weight: int
    alive: bool = False
    set: bool = False
    num_failed_checkers: int = 0
    checkers: list[Checker] = field(default_factory=list)
    since: float = 0.0
    last_failure: str = ""
    failed_checker: str = ""
    sorry: bool = False
    #: handed to the operator (``lvsadm --drain``): checks go on, the table is left alone
    released: bool = False
    #: up/down transitions since start (kept across reloads)
    transitions: int = 0

    def describe(self) -> str:
        proto = self.vs.conf.keys[0].protocol if self.vs.conf.keys else 0
        return f"[{format_ip(self.conf.af, self.conf.addr)}]:{_PROTO_TEXT.get(proto, '?')}:{self.conf.port}"


@dataclass
class VsState:
    conf: VirtualServerConf
    rs: list[RsState] = field(default_factory=list)
    sorry: RsState | None = None
    quorum_state_up: bool = True
    quorum: int = 1
    hysteresis: int = 0


@dataclass
class Outgoing:
    """Something the daemon must do: log a line or run a notify script."""

    kind: str  # "log" | "warning" | "script"
    text: str


class HealthMonitor:
    """The checkers and the state they drive, for a whole configuration."""

    def __init__(
        self, ipvs: IPVS, services: list[VirtualServerConf], rng: random.Random | None = None
    ) -> None:
        self.ipvs = ipvs
        self.rng = rng or random.Random(0)
        self.outbox: list[Outgoing] = []
        self.vss: list[VsState] = []
        self.checkers: list[Checker] = []
        self._heap: list[tuple[float, int]] = []
        for conf in services:
            self.vss.append(self._build_vs(conf))

    # -- construction -------------------------------------------------------------------
    def _build_vs(self, conf: VirtualServerConf) -> VsState:
        vs = VsState(conf)
        for rconf in conf.realservers:
            rs = self._build_rs(vs, rconf)
            vs.rs.append(rs)
        if conf.sorry is not None:
            vs.sorry = self._build_rs(vs, conf.sorry, sorry=True)
        # check_data.c: quorum above the total weight is reduced to it, hysteresis below quorum
        total = sum(rs.effective_weight for rs in vs.rs)
        vs.quorum = min(conf.quorum, total)
        vs.hysteresis = min(conf.hysteresis, max(vs.quorum - 1, 0))
        return vs

    def _build_rs(self, vs: VsState, rconf: RealServerConf, sorry: bool = False) -> RsState:
        conf = vs.conf
        if sorry:
            weight, inhibit = 1, bool(rconf.inhibit)
        else:
            weight = rconf.weight if rconf.weight is not None else conf.weight
            inhibit = rconf.inhibit if rconf.inhibit is not None else conf.inhibit
        rs = RsState(rconf, vs, inhibit, weight, weight, sorry=sorry)
        if sorry:
            return rs
        alpha_rs = rconf.alpha if rconf.alpha is not None else conf.alpha
        for cconf in rconf.checkers:
            kind = cconf.kind
            delay_loop = _first(cconf.delay_loop, rconf.delay_loop, conf.delay_loop)
            retry = _first(cconf.retry, rconf.retry, conf.retry, KIND_DEFAULT_RETRY.get(kind, DEFAULT_RETRY))
            dbr_default = KIND_DEFAULT_DELAY_BEFORE_RETRY.get(kind, DEFAULT_DELAY_BEFORE_RETRY)
            dbr = _first(
                cconf.delay_before_retry, rconf.delay_before_retry, conf.delay_before_retry, dbr_default
            )
            if dbr is None:
                dbr = delay_loop
            warmup = _first(cconf.warmup, rconf.warmup, conf.warmup, delay_loop)
            timeout = _first(cconf.connect_timeout, rconf.connect_timeout, conf.connect_timeout)
            af, host = rconf.af, rconf.addr
            if cconf.connect_ip:
                from .addr import parse_ip

                af, host = parse_ip(cconf.connect_ip)
            port = cconf.connect_port if cconf.connect_port is not None else rconf.port
            alpha = cconf.alpha if cconf.alpha is not None else alpha_rs
            chk = Checker(
                len(self.checkers), kind, vs, rs, cconf, af, host, port,
                float(timeout), int(retry), float(dbr), float(delay_loop), float(warmup), bool(alpha),
            )  # fmt: skip
            rs.checkers.append(chk)
            self.checkers.append(chk)
        return rs

    # -- the table ------------------------------------------------------------------------
    def _dest_spec(self, vs: VsState, rs: RsState, key: ServiceKey, weight: int) -> DestSpec:
        rconf = rs.conf
        # a real server without its own lvs_method takes the virtual server's, tunnel settings included
        tun = rconf if rconf.fwd is not None else vs.conf
        fwd = tun.fwd
        if fwd is None:
            fwd = CONN_F_MASQ
        port = rconf.port
        if fwd != CONN_F_MASQ:
            port = 0 if key.fwmark else key.port
        return DestSpec(
            rconf.af, rconf.addr, port, fwd, weight, rconf.u_threshold, rconf.l_threshold,
            tun.tun_type, tun.tun_port, tun.tun_flags,
        )  # fmt: skip

    def service_specs(self, vs: VsState) -> list[ServiceSpec]:
        c = vs.conf
        return [ServiceSpec(key, c.sched, c.flags, c.timeout, c.netmask, c.pe) for key in c.keys]

    def _ipvs_cmd(self, cmd: str, vs: VsState, rs: RsState, now: float) -> bool:
        """ipvswrapper.c ipvs_cmd for a real server: a delete of an inhibited
        server is an edit to weight 0, an add of an inhibited server already
        in the table an edit back to its weight.  False if the table refused."""
        if rs.released:
            return True
        weight = real_weight(rs.effective_weight)
        if cmd == "del" and rs.inhibit:
            cmd, weight = "edit", 0
        elif cmd == "add" and rs.inhibit and rs.set:
            cmd = "edit"
        elif cmd == "add" and not rs.set:
            rs.set = True
            if rs.inhibit and rs.num_failed_checkers:
                weight = 0
        elif cmd == "del" and rs.set:
            rs.set = False
        ok = True
        for key in vs.conf.keys:
            spec = self._dest_spec(vs, rs, key, weight)
            try:
                if cmd == "add":
                    self.ipvs.add_dest(key, spec, now)
                elif cmd == "edit":
                    self.ipvs.edit_dest(key, spec, now)
                else:
                    self.ipvs.del_dest(key, spec.af, spec.addr, spec.port, now)
            except IPVSError as exc:
                ok = False
                self._log(
                    f"IPVS cmd {cmd} for {rs.describe()} of VS {vs.conf.name}: {exc.message}", "warning"
                )
        return ok

    def _log(self, text: str, kind: str = "log") -> None:
        self.outbox.append(Outgoing(kind, text))

    def _script(self, script: str | None) -> None:
        if script:
            self.outbox.append(Outgoing("script", script))

    # -- start ----------------------------------------------------------------------------
    def start(self, now: float, keep_services: bool = False) -> None:
        """check_daemon start-up: services in, live real servers in (all, unless
        alpha), quorum and sorry server settled, first checks scheduled."""
        for chk in self.checkers:
            if chk.alpha:
                self._set_checker_state(chk, False)
                chk.rs.alive = False
            # "for non alpha mode, one failure is enough initially"
            chk.retry_it = chk.retry
        for vs in self.vss:
            vs.quorum_state_up = self._weigh_live(vs) >= vs.quorum + vs.hysteresis
        for vs in self.vss:
            for spec in self.service_specs(vs):
                if keep_services and self.ipvs.get(spec.key) is not None:
                    continue
                try:
                    self.ipvs.add_service(spec, now)
                except IPVSError as exc:
                    self._log(f"IPVS cmd add service {vs.conf.name}: {exc.message}", "warning")
            for rs in vs.rs:
                if (not rs.num_failed_checkers and not rs.alive) or (rs.inhibit and not rs.set):
                    self._ipvs_cmd("add", vs, rs, now)
                    if not rs.num_failed_checkers:
                        rs.alive = True
                rs.since = now
            self._update_quorum_state(vs, True, now)
            s = vs.sorry
            if s is not None and s.inhibit and not s.set:
                s.num_failed_checkers = 1
                self._ipvs_cmd("add", vs, s, now)
                s.num_failed_checkers = 0
        for chk in self.checkers:
            self._log(f"Activating healthchecker for service {chk.describe()} for VS {chk.vs.conf.name}")
            jitter = chk.warmup * self.rng.random() if chk.warmup else 0.0
            self._schedule(chk, now + BOOTSTRAP_DELAY + jitter)

    # -- scheduling -------------------------------------------------------------------
    def _schedule(self, chk: Checker, due: float) -> None:
        chk.due = due
        heapq.heappush(self._heap, (due, chk.ident))

    def next_due(self) -> float | None:
        """When the earliest waiting checker is due (None: none waits)."""
        while self._heap:
            due, ident = self._heap[0]
            chk = self.checkers[ident]
            if chk.running or chk.due != due:
                heapq.heappop(self._heap)
                continue
            return due
        return None

    def due(self, now: float, limit: int | None = None) -> list[Checker]:
        """The checkers to run now (at most ``limit``); they count as running
        until their :meth:`result` comes in."""
        out: list[Checker] = []
        while self._heap and (limit is None or len(out) < limit):
            due, ident = self._heap[0]
            chk = self.checkers[ident]
            if chk.running or chk.due != due:
                heapq.heappop(self._heap)
                continue
            if due > now:
                break
            heapq.heappop(self._heap)
            chk.running = True
            out.append(chk)
        return out

    # -- results --------------------------------------------------------------------
    def result(self, chk: Checker, ok: bool, reason: str, now: float, exit_code: int | None = None) -> None:
        """One attempt of ``chk`` finished.  ``reason`` says why it failed;
        ``exit_code`` is a MISC_CHECK script's exit status."""
        chk.running = False
        dynamic = chk.kind == "MISC_CHECK" and chk.conf.options.get("misc_dynamic")
        if dynamic and exit_code is not None and (exit_code == 0 or 2 <= exit_code <= 255):
            ok = True
            if exit_code != chk.last_exit_code:
                rs = chk.rs
                eff = rs.effective_weight - chk.cur_weight
                chk.cur_weight = exit_code - 2 - rs.iweight if exit_code else 0
                self._update_weight(eff + chk.cur_weight, chk.vs, rs, now)
                chk.last_exit_code = exit_code
        if ok:
            chk.retry_it = 0
            if not chk.is_up or not chk.has_run:
                self._log(f"{_success_words(chk)}")
                self._update_checker(chk, True, now)
            chk.has_run = True
            self._schedule(chk, now + chk.delay_loop)
            return
        chk.last_reason = reason
        if chk.conf.log_all_failures and chk.is_up and chk.retry_it < chk.retry:
            self._log(f"{chk.kind} attempt on service {chk.describe()} failed: {reason}.")
        if chk.retry_it >= chk.retry:
            if chk.is_up or not chk.has_run:
                rs = chk.rs
                rs.last_failure = reason
                rs.failed_checker = chk.kind
                self._log(_failure_words(chk, reason, bool(chk.retry and chk.has_run)))
                if chk.kind == "MISC_CHECK" and chk.cur_weight:
                    chk.rs.effective_weight -= chk.cur_weight
                    chk.cur_weight = 0
                    chk.last_exit_code = exit_code if exit_code is not None else -1
                self._update_checker(chk, False, now)
            chk.retry_it = 0
            chk.has_run = True
            self._schedule(chk, now + chk.delay_loop)
        else:
            chk.retry_it += 1
            chk.has_run = True
            self._schedule(chk, now + chk.delay_before_retry)

    def _update_checker(self, chk: Checker, alive: bool, now: float) -> None:
        """ipwrapper.c update_svr_checker_state."""
        if chk.is_up == alive:
            chk.has_run = True
            return
        chk.has_run = True
        rs = chk.rs
        if alive:
            if rs.num_failed_checkers <= 1 and not self._perform_svr_state(True, chk.vs, rs, now):
                return
        elif rs.num_failed_checkers == 0 and not self._perform_svr_state(False, chk.vs, rs, now):
            return
        self._set_checker_state(chk, alive)

    @staticmethod
    def _set_checker_state(chk: Checker, up: bool) -> None:
        if chk.is_up == up:
            return
        chk.is_up = up
        if not up:
            chk.rs.num_failed_checkers += 1
        elif chk.rs.num_failed_checkers:
            chk.rs.num_failed_checkers -= 1

    def _perform_svr_state(self, alive: bool, vs: VsState, rs: RsState, now: float) -> bool:
        """ipwrapper.c perform_svr_state: a real server goes up or down."""
        if rs.alive == alive:
            return True
        if alive:
            verb, prep = ("Enabling", "of") if rs.inhibit else ("Adding", "to")
        else:
            verb, prep = ("Disabling", "of") if rs.inhibit else ("Removing", "from")
        self._log(f"{verb} service {rs.describe()} {prep} VS {vs.conf.name}")
        sorry_in = vs.sorry is not None and vs.sorry.alive
        if (vs.quorum_state_up or not sorry_in) and not self._ipvs_cmd(
            "add" if alive else "del", vs, rs, now
        ):
            return False
        rs.alive = alive
        rs.since = now
        rs.transitions += 1
        if alive:
            rs.last_failure = ""
        self._script(rs.conf.notify_up if alive else rs.conf.notify_down)
        self._update_quorum_state(vs, False, now)
        return True

    def _update_weight(self, weight: int, vs: VsState, rs: RsState, now: float) -> None:
        """ipwrapper.c update_svr_wgt."""
        old, new = real_weight(rs.effective_weight), real_weight(weight)
        rs.effective_weight = weight
        if new == old:
            return
        state = "" if rs.alive else "in"
        self._log(
            f"Changing weight from {old} to {new} for {state}active service {rs.describe()}"
            f" of VS {vs.conf.name}"
        )
        sorry_in = vs.sorry is not None and vs.sorry.alive
        if rs.set and rs.alive and not rs.released and (vs.quorum_state_up or not sorry_in):
            for key in vs.conf.keys:
                try:
                    self.ipvs.edit_dest(key, self._dest_spec(vs, rs, key, new), now)
                except IPVSError as exc:
                    self._log(f"IPVS cmd edit for {rs.describe()}: {exc.message}", "warning")
        self._update_quorum_state(vs, False, now)

    # -- quorum ---------------------------------------------------------------------------
    @staticmethod
    def _weigh_live(vs: VsState) -> int:
        return sum(real_weight(rs.effective_weight) for rs in vs.rs if rs.alive)

    def _update_quorum_state(self, vs: VsState, init: bool, now: float) -> None:
        """ipwrapper.c update_quorum_state, with its log words."""
        weight_sum = self._weigh_live(vs)
        threshold = vs.quorum + (-1 if vs.quorum_state_up else 1) * vs.hysteresis
        sorry = vs.sorry
        name = vs.conf.name
        if not vs.quorum_state_up and weight_sum >= threshold:
            vs.quorum_state_up = True
            self._log(f"Gained quorum {vs.quorum}+{vs.hysteresis}={threshold} <= {weight_sum} for VS {name}")
            if sorry is not None and sorry.alive:
                verb = "Disabling" if sorry.inhibit else "Removing"
                self._log(f"{verb} sorry server {sorry.describe()} from VS {name}")
                self._ipvs_cmd("del", vs, sorry, now)
                sorry.alive = False
                sorry.since = now
                sorry.transitions += 1
                self._perform_quorum_state(vs, True, now)
            self._script(vs.conf.quorum_up)
            return
        if (vs.quorum_state_up and (not weight_sum or weight_sum < threshold)) or (
            init and not vs.quorum_state_up and sorry is not None and not sorry.alive
        ):
            vs.quorum_state_up = False
            words = "Starting with quorum down" if init else "Lost quorum"
            self._log(f"{words} {vs.quorum}-{vs.hysteresis}={threshold} > {weight_sum} for VS {name}")
            if sorry is not None and not sorry.alive:
                verb = "Enabling" if sorry.inhibit else "Adding"
                self._log(f"{verb} sorry server {sorry.describe()} to VS {name}")
                self._perform_quorum_state(vs, False, now)
                self._ipvs_cmd("add", vs, sorry, now)
                sorry.alive = True
                sorry.since = now
                sorry.transitions += 1
            self._script(vs.conf.quorum_down)

    def _perform_quorum_state(self, vs: VsState, add: bool, now: float) -> None:
        what = "Adding alive servers to" if add else "Removing alive servers from"
        self._log(f"{what} the pool for VS {vs.conf.name}")
        for rs in vs.rs:
            if not rs.alive:
                continue
            if add:
                rs.alive = False
            self._ipvs_cmd("add" if add else "del", vs, rs, now)
            rs.alive = True

    def shutdown_scripts(self) -> list[str]:
        """``omega``: at shutdown keepalived runs the notify_down script of every
        live real server and the quorum_down script of a virtual server that
        had quorum (ipwrapper.c clear_services with omega)."""
        out: list[str] = []
        for vs in self.vss:
            if not vs.conf.omega:
                continue
            out.extend(rs.conf.notify_down for rs in vs.rs if rs.alive and rs.conf.notify_down)
            if vs.quorum_state_up and vs.conf.quorum_down:
                out.append(vs.conf.quorum_down)
        return out

    # -- views ------------------------------------------------------------------------------
    def find(self, key: ServiceKey, af: int, addr: int, port: int) -> RsState | None:
        """The real server of service ``key`` at ``addr:port``, if a checked one."""
        for vs in self.vss:
            if key not in vs.conf.keys:
                continue
            for rs in [*vs.rs, *([vs.sorry] if vs.sorry else [])]:
                spec = self._dest_spec(vs, rs, key, 0)
                if (spec.af, spec.addr, spec.port) == (af, addr, port):
                    return rs
        return None

    def release(self, key: ServiceKey, af: int, addr: int, port: int) -> bool:
        """Stop changing the table for this real server (it is being drained)."""
        rs = self.find(key, af, addr, port)
        if rs is None:
            return False
        rs.released = True
        return True

    def health_of(self, rs: RsState) -> dict[str, Any]:
        """What ``lvsadm --status`` and ``--json services`` show for a real server."""
        if rs.sorry:
            state = "sorry-in" if rs.alive else "sorry-out"
        else:
            state = "up" if rs.alive else "down"
        return {
            "state": state,
            "since": round(rs.since, 3),
            "checkers": [c.kind for c in rs.checkers],
            "failed_checker": rs.failed_checker if not rs.alive else "",
            "last_failure": rs.last_failure,
            "inhibit": rs.inhibit,
            "weight": real_weight(rs.effective_weight),
        }

    def status(self) -> list[dict[str, Any]]:
        out = []
        for vs in self.vss:
            servers = []
            for rs in [*vs.rs, *([vs.sorry] if vs.sorry else [])]:
                servers.append({"server": rs.describe(), **self.health_of(rs)})
            out.append(
                {"virtual_server": vs.conf.name, "quorum_up": vs.quorum_state_up, "real_servers": servers}
            )
        return out

    # -- reload -------------------------------------------------------------------------------
    def adopt(self, old: HealthMonitor, now: float) -> None:
        """Reload: keep the state of real servers (and their checkers) that
        the new configuration still has, so they are neither re-added nor
        re-checked from scratch (check_daemon.c reload, migrate_checkers)."""
        old_vs = {tuple(v.conf.keys): v for v in old.vss}
        adopted: set[int] = set()
        for vs in self.vss:
            prev = old_vs.get(tuple(vs.conf.keys))
            if prev is None:
                continue
            vs.quorum_state_up = prev.quorum_state_up
            by_ident = {r.conf.ident(): r for r in prev.rs}
            for rs in vs.rs:
                p = by_ident.get(rs.conf.ident())
                if p is None:
                    continue
                adopted.add(id(rs))
                rs.alive, rs.set, rs.since, rs.transitions = p.alive, p.set, p.since, p.transitions
                rs.last_failure, rs.failed_checker = p.last_failure, p.failed_checker
                pchk = {(c.kind, c.af, c.host, c.port): c for c in p.checkers}
                for chk in rs.checkers:
                    q = pchk.get((chk.kind, chk.af, chk.host, chk.port))
                    if q is None:
                        # a new checker on a known server: unknown, so failed until it passes
                        continue
                    chk.is_up, chk.has_run, chk.retry_it = q.is_up, q.has_run, q.retry_it
                    chk.cur_weight, chk.last_exit_code = q.cur_weight, q.last_exit_code
                    rs.effective_weight += q.cur_weight
                    self._schedule(chk, max(q.due, now) if not q.running else now)
                rs.num_failed_checkers = sum(1 for c in rs.checkers if not c.is_up)
            if (
                vs.sorry is not None
                and prev.sorry is not None
                and vs.sorry.conf.ident() == prev.sorry.conf.ident()
            ):
                vs.sorry.alive, vs.sorry.set, vs.sorry.since = (
                    prev.sorry.alive,
                    prev.sorry.set,
                    prev.sorry.since,
                )
        # new real servers start as at start-up: in the pool unless alpha (init_service_rs)
        for vs in self.vss:
            fresh_vs = tuple(vs.conf.keys) not in old_vs
            for rs in vs.rs:
                if id(rs) in adopted:
                    continue
                for chk in rs.checkers:
                    if chk.alpha:
                        self._set_checker_state(chk, False)
                    chk.retry_it = chk.retry
                rs.alive = rs.num_failed_checkers == 0
                rs.since = now
            if fresh_vs:
                vs.quorum_state_up = self._weigh_live(vs) >= vs.quorum + vs.hysteresis
                if not vs.quorum_state_up and vs.sorry is not None:
                    vs.sorry.alive, vs.sorry.since = True, now
        scheduled = {c.ident for c in self.checkers if c.due}
        for chk in self.checkers:
            if chk.ident not in scheduled:
                self._schedule(
                    chk, now + BOOTSTRAP_DELAY + (chk.warmup * self.rng.random() if chk.warmup else 0.0)
                )

    def desired_table(self) -> list[tuple[ServiceSpec, list[DestSpec]]]:
        """The table this state implies: every service, and the real servers
        keepalived would have in it (in configuration order)."""
        out = []
        for vs in self.vss:
            sorry_in = vs.sorry is not None and vs.sorry.alive
            for spec in self.service_specs(vs):
                dests = []
                for rs in vs.rs:
                    if rs.released:
                        continue
                    in_pool = rs.alive and (vs.quorum_state_up or not sorry_in)
                    if in_pool:
                        dests.append(self._dest_spec(vs, rs, spec.key, real_weight(rs.effective_weight)))
                    elif rs.inhibit and rs.set:
                        dests.append(self._dest_spec(vs, rs, spec.key, 0))
                s = vs.sorry
                if s is not None and (s.alive or (s.inhibit and s.set)):
                    dests.append(self._dest_spec(vs, s, spec.key, 1 if s.alive else 0))
                out.append((spec, dests))
        return out

    def resync_flags(self) -> None:
        """After a reload applied :meth:`desired_table`: every real server in
        the table is ``set``."""
        for vs in self.vss:
            sorry_in = vs.sorry is not None and vs.sorry.alive
            for rs in vs.rs:
                rs.set = (rs.alive and (vs.quorum_state_up or not sorry_in)) or (rs.inhibit and rs.set)
            if vs.sorry is not None:
                vs.sorry.set = vs.sorry.alive or (vs.sorry.inhibit and vs.sorry.set)


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def _success_words(chk: Checker) -> str:
    """The checker's success line, in keepalived's words per checker kind."""
    if chk.kind in ("HTTP_GET", "SSL_GET"):
        return f"Remote Web server {chk.describe()} succeed on service."
    if chk.kind == "TCP_CHECK":
        return f"TCP connection to {chk.describe()} success."
    if chk.kind == "MISC_CHECK":
        return f"Misc check for [{chk.describe()} VS {chk.vs.conf.name}] by [{_script_name(chk)}] succeeded."
    if chk.kind == "UDP_CHECK":
        return f"UDP connection to {chk.describe()} success."
    return f"{chk.kind} on service {chk.describe()} succeeded."


def _failure_words(chk: Checker, reason: str, after_retries: bool) -> str:
    """The checker's failure line in keepalived's words, with the reason
    (keepalived logs that on a line of its own with log_all_failures)."""
    if chk.kind == "MISC_CHECK":
        how = (
            f"after {chk.retry} retries" if after_retries else "with retry disabled" if not chk.retry else ""
        )
        who = f"[{chk.describe()} VS {chk.vs.conf.name}] by [{_script_name(chk)}]"
        return f"Misc check for {who} failed {how} ({reason})."
    # check_http.c says HTTP_CHECK for both HTTP_GET and SSL_GET
    name = "HTTP_CHECK" if chk.kind in ("HTTP_GET", "SSL_GET") else chk.kind
    if after_retries:
        return f"{name} on service {chk.describe()} failed after {chk.retry} retries: {reason}."
    return f"{name} on service {chk.describe()} failed: {reason}."


def _script_name(chk: Checker) -> str:
    words = split_command(str(chk.conf.options.get("misc_path", ""))) or ["?"]
    return words[0]


_ESCAPES = {"a": "\a", "b": "\b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def split_command(text: str) -> list[str] | None:
    """keepalived's alloc_strvec_quoted_escaped: words split on white space,
    ``'`` and ``"`` quote (and are removed), backslash escapes (``\\xHH``,
    ``\\cX``, octal, ``\\n`` and the like, else the character itself).
    None for an unterminated quote or a trailing backslash."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t\f\n\r\v":
            i += 1
        if i >= n:
            return words
        word: list[str] = []
        quote = ""
        while i < n:
            ch = text[i]
            if ch == "\\":
                i += 1
                if i >= n:
                    return None
                ch = text[i]
                if ch == "x" and i + 1 < n and text[i + 1] in "0123456789abcdefABCDEF":
                    j = i + 1
                    while j < n and text[j] in "0123456789abcdefABCDEF":
                        j += 1
                    word.append(chr(int(text[i + 1 : j], 16) & 0xFF))
                    i = j
                elif ch == "c" and i + 1 < n:
                    word.append(chr(ord(text[i + 1]) & 0x1F))
                    i += 2
                elif ch in "01234567":
                    j = i
                    while j < n and j < i + 3 and text[j] in "01234567":
                        j += 1
                    word.append(chr(int(text[i:j], 8) & 0xFF))
                    i = j
                else:
                    word.append(_ESCAPES[ch].encode().decode("unicode_escape") if ch in _ESCAPES else ch)
                    i += 1
            elif quote:
                if ch == quote:
                    quote = ""
                else:
                    word.append(ch)
                i += 1
            elif ch in "'\"":
                quote = ch
                i += 1
            elif ch in " \t\f\n\r\v":
                break
            else:
                word.append(ch)
                i += 1
        if quote:
            return None
        words.append("".join(word))


def fmt_vs(key: ServiceKey) -> str:
    """keepalived's FMT_VS for a plain or fwmark virtual server."""
    if key.fwmark:
        return f"FWM {key.fwmark}"
    return f"[{format_ip(key.af, key.addr)}]:{_PROTO_TEXT.get(key.protocol, '?')}:{key.port}"


__all__ = [
    "CHECKER_KINDS",
    "Checker",
    "CheckerConf",
    "HealthMonitor",
    "Outgoing",
    "RealServerConf",
    "RsState",
    "VirtualServerConf",
    "VsState",
    "fmt_vs",
    "real_weight",
    "split_command",
]
