"""``lvsd``: one daemon per network namespace holding the IPVS tables.

It owns the emulated kernel (a :class:`~lvs.core.Director`), serves the
control socket, drives time (connection expiry, the rate estimator), and
runs the data planes that move traffic.  The core (``lvs/``) never reads
the clock: this loop passes it the time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from lvs.core import Director
from lvs.ctl import IPVS
from lvs.protocol import Request

from . import names
from .durable import StateWriter, write_atomically
from .observe import Observer
from .resolver import default_resolver
from .server import AccessPolicy, AlreadyRunning, ControlServer
from .syncd import SyncDaemons

if TYPE_CHECKING:
    from forwarding.nat_pool import NatWorkerPlane

log = logging.getLogger("lvsd")

TICK = 0.25  # seconds between two runs of the timers
EXPIRY_BUDGET = 2000  # timers examined per slice: about 3 ms, so no slice holds the loop long


class BadRequest(ValueError):
    """A well-formed request asking for something that does not exist."""


class Daemon:
    """The state of one lvsd: the tables, the data planes, the control server."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.ipvs = IPVS(classic=opts.classic)
        self.director = Director(self.ipvs, table_seed=int.from_bytes(os.urandom(8), "little"))
        self.t0 = time.monotonic()
        self.director.reset_clock(self.now())
        self.planes: list[Any] = []
        #: the NAT plane when it runs in worker processes (``--workers N``)
        self.worker_plane: NatWorkerPlane | None = None
        self.warnings: list[str] = []
        self.config = None
        #: keepalived.conf health checking (--keepalived-conf), if any
        self.health: Any = None
        #: real servers being drained (lvsadm --drain), by (service, af, addr, port)
        self.drains: dict[tuple[Any, int, int, int], Any] = {}
        #: how many ipvsadm commands ran: replies carry it, so clients can
        #: tell the order in which the table changed
        self.seq = 0
        self._stop = asyncio.Event()
        #: history, events, counts; the HTTP listener and procfs writer (lvsd/observe.py)
        self.observer = Observer(self)
        self.server = ControlServer(self.handle, AccessPolicy(opts.allow_group), opts.socket)
        #: the state file: ``--state`` or the namespace's default
        self.state_path = opts.state or names.state_path(opts.socket)
        #: what the start found: restored table, previous lvsd's fate
        self.restored: dict[str, Any] = {}
        self.state_problem: str | None = None
        self._dirty = False
        self._save_soon = False
        #: where the log goes (for ``lvsadm --status``)
        self.log_target = getattr(opts, "log_target_text", "stderr")
        self.stop_reason = "unknown"
        #: hitless restart: the successor's pid once it serves
        self.handing_over = False
        self.handed_over = False
        self.successor = 0
        self.argv: list[str] = list(getattr(opts, "argv", []))
        self.inherit: Any = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._rng: Any = None
        self._peak_entries = 0
        self.writer: StateWriter | None = StateWriter(self.state_path, self.render_state)
        self.durable: asyncio.Future[Any] | None = None
        self.server.pending_write = self.pending_write
        #: the sync daemon's sockets (``--start-daemon``), see lvsd/syncd.py
        self.syncd = SyncDaemons(self.director, self.now)

    def now(self) -> float:
        """Seconds since the daemon started (monotonic): the core's clock."""
        return time.monotonic() - self.t0

    # -- requests ----------------------------------------------------------------
    def handle(self, req: Request) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Answer one request; changes the data planes queued (VIPs on lo)
        are applied before the answer leaves, so a service is reachable when
        lvsadm returns.  A listing with ``--workers`` first gathers what the
        workers hold (:meth:`gathered`)."""
        pool = self.worker_pool()
        if pool is not None:
            conns = _needs_workers(req)
            if conns is not None:
                return self._observed(req, self.gathered(pool, req, conns))
        if req.op == "restart":
            return self._observed(req, self.restart(_who(req.peer)))
        try:
            reply = self._handle(req)
        finally:
            self.flush_planes()
            self.save_if_dirty()
        self.observer.on_reply(req, reply)
        return reply

    async def _observed(self, req: Request, pending: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        reply = await pending
        self.observer.on_reply(req, reply)
        return reply

    async def gathered(self, pool: Any, req: Request, conns: bool) -> dict[str, Any]:
        """One director's view with ``--workers``: ask every worker for its
        counters now (and its connection entries when the request lists
        them), then answer from the main table with those folded in.  So
        ``-L -c``, ``--json conns`` and ``/proc/net/ip_vs_conn`` list the
        workers' entries after the main process's own, and ActiveConn,
        InActConn and the traffic counters are as of this request."""
        self.ipvs.remote_conns = await pool.query(conns)
        try:
            return self._handle(req)
        finally:
            self.ipvs.remote_conns = []
            self.flush_planes()

    def worker_pool(self) -> NatWorkerPlane | None:
        """The NAT plane of worker processes (``--workers N``), if any: its
        ``query`` and ``connections`` give what the workers hold."""
        return self.worker_plane

    def flush_planes(self) -> None:
        for plane in self.planes:
            flush = getattr(getattr(plane, "vips", None), "flush", None)
            if flush is not None:
                for warning in flush():
                    self.warnings.append(warning)
                del self.warnings[:-100]

    def _handle(self, req: Request) -> dict[str, Any]:
        op = req.op
        if op == "ping":
            return {"pong": True}
        if op == "ipvsadm":
            return self.run_ipvsadm(req.args["argv"], req.args.get("stdin", ""), req.peer)
        if op == "status":
            return {"data": self.status()}
        try:
            if op == "json":
                return {"data": self.json_view(str(req.args.get("what", "services")))}
            if op == "proc":
                return {"text": self.proc_view(str(req.args.get("name", "")))}
        except BadRequest as exc:
            return {"ok": False, "error": str(exc)}
        if op == "reload":
            return self.reload(_who(req.peer))
        if op == "sysctl":
            return self.sysctl(req.args, req.peer)
        if op == "drain":
            return self.drain(req.args)
        if op == "shutdown":
            self.stop_reason = f"lvsadm --shutdown by {_who(req.peer)}"
            log.info("shutdown asked for by lvsadm --shutdown (%s)", _who(req.peer))
            # a moment for lvsadm to read this and hang up before the server closes
            asyncio.get_running_loop().call_later(0.2, self._stop.set)
            return {"pid": os.getpid()}
        return {"ok": False, "error": f"unsupported operation {op}"}

    def run_ipvsadm(
        self, argv: list[str], stdin: str = "", peer: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        from lvs.ipvsadm.commands import run

        out, err = io.StringIO(), io.StringIO()
        rc = run(argv, self.ipvs, self.now(), out, err, default_resolver(), stdin=io.StringIO(stdin))
        self.seq += 1
        if _changes_table(argv):
            words = " ".join(argv)
            if len(words) > 300:
                words = words[:300] + "..."
            if rc == 0:
                lines = stdin.count("\n") if stdin else 0
                log.info("table change by %s: ipvsadm %s%s", _who(peer), words,
                         f" ({lines} lines)" if lines else "")  # fmt: skip
            else:
                log.info("refused change by %s: ipvsadm %s -> rc %d: %s", _who(peer), words, rc,
                         err.getvalue().strip()[:300])  # fmt: skip
            self.table_changed()
        return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "seq": self.seq}

    # -- durability ---------------------------------------------------------------
    def table_changed(self, reason: str | None = None) -> None:
        """Record that the table changed (admin, reload, health checks):
        the state file is rewritten before the current request is answered,
        or at once from the event loop for changes outside a request.
        ``reason`` (e.g. a health transition) is logged."""
        if reason:
            log.info("table change: %s", reason)
        self._dirty = True
        if not self._save_soon:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._save_soon = True
            loop.call_soon(self._deferred_save)

    def _deferred_save(self) -> None:
        self._save_soon = False
        self.flush_planes()
        self.save_if_dirty()

    def _on_table_event(self, what: str, svc: Any) -> None:
        self.table_changed()

    def save_if_dirty(self) -> None:
        if self._dirty and not self.handed_over:
            self._dirty = False
            self.save_state(clean=False)

    def vips_added(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for plane in self.planes:
            vips = getattr(plane, "vips", None)
            if vips is not None:
                out.extend(vips.added)
        return out
    def drain(self, args: dict[str, Any]) -> dict[str, Any]:
        """``lvsadm --drain``: weight 0 now, deleted at 0 active connections or
        at the timeout (:mod:`lvs.drain`); ``status`` asks how it goes."""
        from lvs.drain import DEFAULT_TIMEOUT, start_drain
        from lvs.errors import IPVSError
        from lvs.ipvsadm.grammar import UsageError, parse

        service, server = args.get("service"), args.get("server")
        if (
            not isinstance(service, list)
            or not all(isinstance(a, str) for a in service)
            or not isinstance(server, str)
        ):
            return {"ok": False, "error": "drain needs -t|-u|-f SERVICE -r SERVER"}
        try:
            cmd = parse(["-d", *service, "-r", server], default_resolver())
        except (UsageError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        if cmd.key is None or cmd.dest is None:
            return {"ok": False, "error": "drain needs -t|-u|-f SERVICE -r SERVER"}
        ident = (cmd.key, cmd.dest.af, cmd.dest.addr, cmd.dest.port)
        now = self.now()
        if args.get("status"):
            found = self.drains.get(ident)
            if found is None:
                return {"ok": False, "error": "no drain of that real server"}
            return {"progress": found.progress(now)}
        timeout = args.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 10**7:
            return {"ok": False, "error": "timeout must be seconds, 0 to 10000000"}
        try:
            drain = start_drain(self.ipvs, cmd.key, *ident[1:], now, float(timeout))
        except IPVSError as exc:
            return {"ok": False, "error": exc.message}
        if self.health is not None and self.health.monitor is not None:
            self.health.monitor.release(*ident)
        self.drains[ident] = drain
        log.info("draining real server %s of %s: weight 0, %d active connections", server, cmd.key.describe(),
                 drain.active)  # fmt: skip
        drain.step(self.ipvs, now)
        return {"progress": drain.progress(now)}

    def step_drains(self) -> None:
        now = self.now()
        for ident, drain in list(self.drains.items()):
            if drain.state == "draining" and drain.step(self.ipvs, now):
                log.info("drain of %s: %s", drain.key.describe(), drain.state)
            if drain.finished is not None and now - drain.finished > 600:
                del self.drains[ident]

    def status(self) -> dict[str, Any]:
        pool = self.worker_pool()
        return {
            "pid": os.getpid(),
            "netns": _netns_id(),
            "uptime": round(self.now(), 3),
            "services": len(self.ipvs.services),
            "connections": len(self.director.conns) + (pool.connections() if pool is not None else 0),
            "planes": [p.describe() for p in self.planes],
            "log": self.log_target,
            "state": self.state_path,
            "state_problem": self.state_problem,
            "restored": self.restored,
            "denied": self.server.denied,
            "defense": {
                "available_pages": _available_pages(),
                "amemthresh": self.ipvs.sysctl.amemthresh,
                "drop_rate": self.director.defense.drop_rate,
                "dropped_new_connections": self.director.defense_drops,
                "dropped_entries": self.director.defense_dropped_entries,
            },
            "warnings": list(self.warnings) + [w for p in self.planes for w in p.warnings()],
            "sync": self.syncd.describe(),
            "health": self.health.status() if self.health is not None else None,
        }

    def json_view(self, what: str) -> Any:
        from lvs import json_views

        if what == "services":
            data = json_views.services_json(self.ipvs, self.now())
            if self.health is not None:
                self.health.annotate(data)
            return data
        if what == "conns":
            return json_views.conns_json(self.ipvs, self.now())
        if what == "timeouts":
            tcp, tcpfin, udp = self.ipvs.get_timeouts()
            return {"tcp": tcp, "tcpfin": tcpfin, "udp": udp}
        if what == "daemons":
            return [vars(d) for d in self.ipvs.daemons.values()]
        if what == "sysctl":
            return {name: self.ipvs.sysctl.get(name) for name in self.ipvs.sysctl.names()}
        raise BadRequest(f"unknown view {what!r}")

    def proc_view(self, name: str) -> str:
        from lvs.ipvsadm import proc

        now = self.now()
        views = {
            "ip_vs": lambda: proc.proc_ip_vs(self.ipvs),
            "ip_vs_conn": lambda: proc.proc_ip_vs_conn(self.ipvs, now),
            "ip_vs_conn_sync": lambda: proc.proc_ip_vs_conn_sync(self.ipvs, now),
            "ip_vs_stats": lambda: proc.proc_ip_vs_stats(self.ipvs),
        }
        if name not in views:
            raise BadRequest(f"unknown /proc view {name!r}")
        return views[name]()

    def reload(self, who: str = "SIGHUP") -> dict[str, Any]:
        """SIGHUP / ``lvsadm --reload``: re-read --config or --keepalived-conf;
        unchanged services, real servers, their health and connections stay;
        a file with errors changes nothing.  The result is logged with who
        asked."""
        if self.health is None:
            log.warning("reload asked by %s: lvsd runs without --config, nothing to reload", who)
            return {"ok": False, "error": "lvsd runs without --config: nothing to reload"}
        from lvs.config import ConfigError
        from lvs.keepalived_conf import KeepalivedConfError

        source = self.opts.keepalived_conf or self.opts.config
        try:
            changes = self.health.reload()
        except (KeepalivedConfError, ConfigError) as exc:
            log.error("reload of %s asked by %s failed, table unchanged: %s", source, who, exc)
            return {"ok": False, "error": str(exc)}
        log.info("reload of %s asked by %s: %d changes%s", source, who, len(changes),
                 (": " + "; ".join(map(str, changes[:50]))) if changes else "")  # fmt: skip
        if changes:
            self.table_changed()
        return {"changes": changes}

    def sysctl(self, args: dict[str, Any], peer: tuple[int, int] | None = None) -> dict[str, Any]:
        """The ``sysctl`` op: only the names in lvs/sysctl.py answer; values
        are checked as the kernel's proc handlers check them."""
        from lvs.sysctl import SysctlError, is_known

        name = args.get("name", "")
        if not is_known(name):
            return {"ok": False, "error": f"unknown sysctl {name}"}
        if "value" in args:
            old = self.ipvs.sysctl.get(name)
            try:
                self.ipvs.sysctl.set(name, str(args["value"]))
            except SysctlError as exc:
                log.info("refused sysctl by %s: %s=%s: %s", _who(peer), name, args["value"], exc)
                return {"ok": False, "error": f"bad sysctl {name}: Invalid argument ({exc})"}
            new = self.ipvs.sysctl.get(name)
            self.syncd.refresh_params()
            if new != old:
                log.info("sysctl change by %s: net.ipv4.vs.%s %d -> %d", _who(peer), name, old, new)
                self.table_changed()
        sysctls = self.ipvs.sysctl
        value = sysctls.get(name)
        text = f"{value}\t{sysctls.sync_period}" if name == "sync_threshold" else str(value)
        return {"value": value, "text": text}

    # -- life cycle -------------------------------------------------------------
    async def ticker(self) -> None:
        """Drive the core's timers; expiry runs in slices so no request or
        packet waits long behind it."""
        next_defense = 0.0
        while not self._stop.is_set():
            now = self.now()
            more = self.director.tick(now, EXPIRY_BUDGET)
            if self.drains:
                self.step_drains()
            if now >= next_defense:
                next_defense = now + 1.0
                self.defend(now)
                self.give_back_memory()
            await asyncio.sleep(0 if more else TICK)

    def give_back_memory(self) -> None:
        """After a flood (the table fell below a quarter of its peak of more
        than 20,000 entries): collect and hand freed heap back to the
        system (glibc malloc_trim), so RSS does not stay at the peak."""
        n = len(self.director.conns)
        self._peak_entries = max(self._peak_entries, n)
        if self._peak_entries < 20_000 or n * 4 > self._peak_entries:
            return
        import contextlib
        import ctypes
        import gc

        before = _rss_kb()
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        log.info("the table fell from %d to %d entries: memory given back, RSS %d -> %d kB",
                 self._peak_entries, n, before, _rss_kb())  # fmt: skip
        self._peak_entries = n

    def defend(self, now: float) -> None:
        """defense_work_handler, once a second: the defence level from the
        memory available (lvs/defense.py), then drop_entry's random drops."""
        import random

        sysctl = self.ipvs.sysctl
        if not (sysctl.drop_entry or sysctl.drop_packet or sysctl.secure_tcp):
            self.director.defense.drop_rate = 0
            self.director.defense.dropentry = False
            return
        for change in self.director.defense.update(sysctl, _available_pages()):
            log.warning("defence: %s; drop_entry %d, drop_packet %d (1 new connection in %d dropped), "
                        "secure_tcp %d", change, sysctl.drop_entry, sysctl.drop_packet,
                        self.director.defense.drop_rate, sysctl.secure_tcp)  # fmt: skip
        if self.director.defense.dropentry:
            dropped = self.director.random_dropentry(now, self._rng or random.Random())
            if dropped:
                log.info("defence: drop_entry dropped %d entries (%d in all)", dropped,
                         self.director.defense_dropped_entries)  # fmt: skip

    async def run(self) -> None:
        source = self.opts.keepalived_conf or self.opts.config
        if source:
            from lvs.config import ConfigError
            from lvs.keepalived_conf import KeepalivedConfError

            from .healthd import HealthRunner

            yaml = not self.opts.keepalived_conf
            self.health = HealthRunner(self.ipvs, self.now, source, self.flush_planes, yaml=yaml)
            self.health.on_log = self.observer.health_log
            try:
                self.health.load()
            except (KeepalivedConfError, ConfigError) as exc:
                raise SystemExit(f"lvsd: {exc}") from None
        # the lock first: a second lvsd must not touch the first one's VIPs
        from .restart import inherited

        inh = self.inherit = inherited()
        try:
            if inh is not None:
                self.server.bind(inh.ctl, inh.lock)
                self.server.note_pid()
                from forwarding.nat import INHERITED

                INHERITED.update(inh.listeners)
                inh.listeners = INHERITED
            else:
                self.server.bind()
        except (AlreadyRunning, names.UnsafePath) as exc:
            log.error("not starting: %s", exc)
            raise SystemExit(f"lvsd: {exc}") from None
        previous = self.read_state()
        if previous is not None:
            if inh is None:
                self.remove_stale_vips(previous)
            if source:
                how = "stopped cleanly" if previous.clean else "did not stop cleanly (crash or kill)"
                level = logging.INFO if previous.clean else logging.WARNING
                log.log(level, "previous lvsd (pid %s) %s; the table comes from %s (the state file "
                        "is restored only without a configuration)", previous.pid or "?", how,
                        source)  # fmt: skip
            else:
                self.restore(previous)
        self.ipvs.listeners.append(self._on_table_event)
        self.start_planes()
        self.flush_planes()
        self.save_state(clean=False)
        await self.server.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGUSR2, self._on_sigusr2)
        log.info("lvsd %d started (%s) on %s; state %s; %d services",
                 os.getpid(), self.opts.started_by, self.server.address, self.state_path,
                 len(self.ipvs.services))  # fmt: skip
        ticker = asyncio.create_task(self.ticker())
        if self.health is not None:
            self.health.start(child=not self.opts.health_in_process)
        try:
            await self.observer.start()
        except OSError as exc:  # --http's port taken: stop as on SIGTERM, then say why
            log.error("%s", exc)
            self.stop_reason = f"cannot serve --http: {exc}"
            self._stop.set()
            start_error: OSError | None = exc
        else:
            start_error = None
            _tell_parent("ok")
        if inh is not None:
            from .restart import signal_ready

            signal_ready(inh)
            log.info("took over from lvsd %d: %d services, listening sockets and VIPs inherited",
                     inh.old_pid, len(self.ipvs.services))  # fmt: skip
        await self._stop.wait()
        log.info("lvsd %d stopping: %s", os.getpid(), self.stop_reason)
        ticker.cancel()
        self.syncd.close()
        await self.observer.close()
        if self.health is not None:
            await self.health.close()
        await self.server.close(unlink=not self.handed_over)
        for plane in self.planes:
            if self.handed_over and hasattr(plane, "guard"):
                continue  # DR/TUN: already shut, its nftables table is the successor's
            await plane.close()
        if self.writer is not None:
            self.writer.close()
        if self.handed_over:
            log.info("lvsd %d stopped (%s)", os.getpid(), self.stop_reason)
            return
        self.save_state(clean=True)
        log.info("lvsd %d stopped (%s): table of %d services saved in %s", os.getpid(), self.stop_reason,
                 len(self.ipvs.services), self.state_path)  # fmt: skip
        if start_error is not None:
            raise start_error

    # -- hitless restart (lvsd/restart.py) ---------------------------------------------
    async def restart(self, who: str) -> dict[str, Any]:
        """``lvsadm --restart`` / SIGUSR2: start a successor that inherits
        the sockets, then stop accepting and drain."""
        from .restart import start_successor

        if self.handing_over or self.handed_over:
            return {"ok": False, "error": "a restart is already under way"}
        if self.worker_plane is not None:
            return {"ok": False, "error": "--restart is not supported with --workers yet"}
        if self.server.sock is None:
            return {"ok": False, "error": "lvsd is not serving yet"}
        self.handing_over = True
        try:
            self.flush_planes()
            write_atomically(self.state_path, self.render_state(clean=False))
            nat = self.nat_plane()
            fds = {
                "ctl": self.server.sock.fileno(),
                "lock": self.server.lock_fd,
                "listeners": nat.listening_sockets() if nat is not None else [],
                "vips": [list(v) for v in self.vips_added()],
            }
            log.info("restart asked by %s: starting a new lvsd with %d listening sockets", who,
                     len(fds["listeners"]))  # fmt: skip
            await self.observer.close()  # its HTTP port is the successor's
            new_pid = await start_successor(self.argv, fds)
        except (OSError, RuntimeError) as exc:
            log.error("restart asked by %s failed, this lvsd (pid %d) goes on serving: %s", who,
                      os.getpid(), exc)  # fmt: skip
            await self.observer.start()
            return {"ok": False, "error": f"restart failed: {exc}"}
        finally:
            self.handing_over = False
        self.handed_over = True
        self.successor = new_pid
        relays = len(nat.ctx.sessions) if nat is not None else 0
        log.info("restart: lvsd %d serves now; this lvsd (pid %d) stops accepting and drains %d relays",
                 new_pid, os.getpid(), relays)  # fmt: skip
        self._background(self._drain_and_exit())
        return {"old_pid": os.getpid(), "new_pid": new_pid}

    def nat_plane(self) -> Any:
        from forwarding.nat import NatPlane

        for plane in self.planes:
            if isinstance(plane, NatPlane):
                return plane
        return None

    async def _drain_and_exit(self) -> None:
        from .restart import DRAIN_TIMEOUT

        await asyncio.sleep(0.2)  # the restart reply reaches lvsadm first
        await self.server.close(unlink=False)
        nat = self.nat_plane()
        if nat is not None:
            nat.stop_accepting()
        for plane in self.planes:
            if hasattr(plane, "guard"):  # DR/TUN: the successor owns the nftables table
                plane.guard = None
                plane.shutdown()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while nat is not None and nat.ctx.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = len(nat.ctx.sessions) if nat is not None else 0
        drained = ", relays drained"
        if left:
            drained = f", {left} relays still open after {DRAIN_TIMEOUT:.0f} s are reset"
        self.stop_reason = f"handed over to lvsd {self.successor}{drained}"
        self._stop.set()

    def _on_sigusr2(self) -> None:
        self._background(self.restart("SIGUSR2"))

    def _background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_stop_signal(self, sig: int) -> None:
        self.stop_reason = f"{signal.Signals(sig).name} received"
        self._stop.set()

    def _on_sighup(self) -> None:
        self.reload("SIGHUP")
        self.flush_planes()
        self.save_if_dirty()

    # -- the state file -------------------------------------------------------------
    def read_state(self) -> Any:
        """The previous lvsd's state, or None (no file, or a damaged one: logged)."""
        from lvs.state import StateError, parse

        try:
            with open(self.state_path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.state_problem = f"cannot read {self.state_path}: {exc}"
            log.error("%s", self.state_problem)
            return None
        try:
            return parse(text)
        except StateError as exc:
            # an old -S file given with --state: restore it as such
            if text.lstrip().startswith(("-A", "-a", "--")) or not text.strip():
                from lvs.state import State

                return State(rules=text, clean=True)
            self.state_problem = f"{self.state_path}: {exc}"
            log.error("%s; starting with an empty table", self.state_problem)
            return None

    def restore(self, state: Any) -> None:
        """Bring back the table, timeouts and sysctls of ``state``."""
        from lvs.state import apply_sysctls, restore_sync

        problems = apply_sysctls(self.ipvs.sysctl, state.sysctl)
        if any(state.timeouts):
            self.ipvs.set_timeouts(*state.timeouts)
        if state.rules.strip():
            reply = self.run_ipvsadm(["-R"], state.rules)
            if reply["rc"] != 0:
                problems.append(reply["stderr"].strip())
        problems += restore_sync(self.ipvs, state)
        self.syncd.refresh_params()
        dests = sum(len(svc.destinations) for svc in self.ipvs.services.values())
        how = "stopped cleanly" if state.clean else "did not stop cleanly (crash or kill)"
        if self.inherit is not None:
            how = "handed its sockets over (hitless restart)"
        self.restored = {
            "path": self.state_path,
            "services": len(self.ipvs.services),
            "dests": dests,
            "previous_pid": state.pid,
            "unclean": not state.clean and self.inherit is None,
            "problems": problems,
        }
        log.log(logging.INFO if state.clean or self.inherit is not None else logging.WARNING,
                "previous lvsd (pid %s) %s; restored %d services, %d real servers, timeouts %s "
                "and sysctls from %s", state.pid or "?", how, len(self.ipvs.services), dests,
                "/".join(map(str, self.ipvs.get_timeouts())), self.state_path)  # fmt: skip
        for problem in problems:
            log.error("restoring %s: %s", self.state_path, problem)

    def remove_stale_vips(self, state: Any) -> None:
        """VIPs the previous lvsd added to ``lo`` and did not remove (it was
        killed): take them away; the data planes add back those still served."""
        if not state.vips or state.clean:
            return
        try:
            from forwarding.vip import VipManager
        except ImportError:  # pragma: no cover
            return
        for warning in VipManager.remove_left_over(state.vips):
            log.warning("%s", warning)
        log.info("removed %d VIPs a dead lvsd left on lo: %s", len(state.vips),
                 ", ".join(h for _, h in state.vips[:20]))  # fmt: skip

    def save_state(self, clean: bool) -> asyncio.Future[Any] | None:
        """Write the state file atomically (write, fsync, rename, fsync of the
        directory: a crash leaves the old or the new file).  Inside the
        event loop the writer thread does it with group commit and the
        returned future is done once it is on disk; outside (start, stop)
        it is written at once."""
        path = self.state_path
        try:
            if not self.opts.state:
                names.ensure_private_dir(os.path.dirname(os.path.abspath(path)))
        except (OSError, names.UnsafePath) as exc:
            self._state_failed(exc)
            return None
        if not clean and self.writer is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                fut = self.writer.changed()
                fut.add_done_callback(self._state_written)
                self.durable = fut
                return fut
        try:
            write_atomically(path, self.render_state(clean))
            self.state_problem = None
        except OSError as exc:
            self._state_failed(exc)
        return None

    def render_state(self, clean: bool = False) -> str:
        from lvs.state import render, snapshot

        return render(snapshot(self.ipvs, self.vips_added(), os.getpid(), clean))

    def _state_written(self, fut: asyncio.Future[Any]) -> None:
        error = fut.result()
        if error is None:
            self.state_problem = None
        else:
            self._state_failed(error)

    def _state_failed(self, exc: BaseException) -> None:
        if self.state_problem is None:
            log.error("cannot write the state file %s: %s (the table would not survive a crash)",
                      self.state_path, exc)  # fmt: skip
        self.state_problem = f"cannot write {self.state_path}: {exc}"

    def pending_write(self) -> asyncio.Future[Any] | None:
        """The write a reply must wait for (the control server awaits it
        after releasing its lock, so concurrent clients share an fsync)."""
        fut, self.durable = self.durable, None
        return fut if fut is not None and not fut.done() else None

    def start_planes(self) -> None:
        if not self.opts.no_dr:
            self.start_direct_plane()
        if self.opts.no_nat:
            return
        from forwarding.proxyproto import parse_specs

        options = {
            "manage_vips": not self.opts.no_vip,
            "proxy_protocol": parse_specs(self.opts.proxy_protocol),
            "transparent": self.opts.transparent,
        }
        plane: Any
        if getattr(self.opts, "nat_engine", "proxy") == "kernel" and self.start_kernel_nat_plane():
            return
        if self.opts.workers > 1:
            from forwarding.nat_pool import NatWorkerPlane

            plane = self.worker_plane = NatWorkerPlane(self.director, self.now, self.opts.workers, **options)
        else:
            from forwarding.nat import NatPlane

            plane = NatPlane(self.director, self.now, **options)
        if self.inherit is not None:
            plane.vips.adopt(self.inherit.vips)
        ctx = getattr(plane, "ctx", None)
        if ctx is not None:  # the limits (lvs/limits.py); --workers: each worker keeps the defaults
            ctx.udp_rcvbuf = self.opts.udp_rcvbuf
            ctx.budget.max_conns = self.opts.max_conns
            ctx.budget.reserve = self.opts.reserve_fds
        self.planes.append(plane)
        plane.start()

    def start_kernel_nat_plane(self) -> bool:
        """``--nat-engine kernel`` (forwarding/nat_kernel.py, experimental):
        True if it serves; else the reason is logged and shown by
        ``lvsadm --status``, and the proxy engine serves instead."""
        from forwarding.nat_kernel import KernelNatPlane, KernelNatUnavailable

        name = "".join(ch if ch.isalnum() else "_" for ch in (self.opts.socket or ""))
        plane = KernelNatPlane(self.director, self.now, manage_vips=not self.opts.no_vip,
                               table="pylvs_nat" + (f"_{name}" if name else ""))  # fmt: skip
        if self.inherit is not None:
            plane.vips.adopt(self.inherit.vips)
        try:
            plane.start()
        except KernelNatUnavailable as exc:
            text = f"--nat-engine kernel cannot start: {exc}; the proxy NAT engine serves instead"
            log.error("%s", text)
            self.warnings.append(text)
            return False
        if self.opts.workers > 1 or self.opts.transparent or self.opts.proxy_protocol:
            text = "--nat-engine kernel ignores --workers, --transparent and --proxy-protocol (proxy options)"
            log.warning("%s", text)
            self.warnings.append(text)
        self.planes.append(plane)
        return True

    def start_direct_plane(self) -> None:
        """DR/TUN plane (forwarding/dr.py): it opens its capture socket and
        nftables table only once a -g/-i service exists."""
        from forwarding.dr import DirectPlane

        name = "".join(ch if ch.isalnum() else "_" for ch in (self.opts.socket or ""))
        plane = DirectPlane(self.director, self.now, table="pylvs" + (f"_{name}" if name else ""))
        self.planes.append(plane)
        plane.start()


def _needs_workers(req: Request) -> bool | None:
    """Does this request show what ``--workers`` processes hold?  None: no;
    False: their counters; True: their connection entries too."""
    op = req.op
    if op == "status":
        return False
    if op == "json":
        what = req.args.get("what", "services")
        return {"services": False, "conns": True}.get(what) if isinstance(what, str) else None
    if op == "proc":
        name = req.args.get("name")
        return (
            {"ip_vs": False, "ip_vs_stats": False, "ip_vs_conn": True, "ip_vs_conn_sync": True}.get(name)
            if isinstance(name, str)
            else None
        )
    if op == "ipvsadm":
        from lvs.ipvsadm.grammar import CMD_LIST, UsageError, parse

        try:
            cmd = parse(list(req.args["argv"]), default_resolver())
        except (UsageError, ValueError, OSError):
            return None  # the request itself reports it
        return bool(cmd.connection) if cmd.kind == CMD_LIST else None
    return None


def _rss_kb() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _available_pages() -> int:
    """si_meminfo's freeram + bufferram in pages, as update_defense_level
    counts available memory (MemFree + Buffers of /proc/meminfo)."""
    kb = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("MemFree:", "Buffers:")):
                    kb += int(line.split()[1])
    except (OSError, ValueError):
        return 1 << 30
    return kb // (os.sysconf("SC_PAGE_SIZE") // 1024)


def _argv_for_successor(argv: list[str]) -> list[str]:
    """lvsd's own arguments without ``--started-by`` (a successor gets its own)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--started-by":
            skip = True
            continue
        if arg.startswith("--started-by="):
            continue
        out.append(arg)
    return out


def _who(peer: tuple[int, int] | None) -> str:
    """The peer of a control request, for the log: pid and uid (user)."""
    if peer is None:
        return "lvsd"
    pid, uid = peer
    try:
        import pwd

        user = pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        user = "?"
    return f"pid {pid} uid {uid} ({user})"


def _changes_table(argv: list[str]) -> bool:
    """Would this ipvsadm command change the table (not a listing, save,
    help or version)?"""
    from lvs.ipvsadm.grammar import CMD_HELP, CMD_LIST, CMD_SAVE, CMD_VERSION, UsageError, parse

    try:
        cmd = parse(list(argv), default_resolver())
    except (UsageError, ValueError, OSError):
        return False
    return cmd.kind not in (CMD_LIST, CMD_SAVE, CMD_HELP, CMD_VERSION)


def _netns_id() -> str:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lvsd",
        description="pylvs daemon: IPVS tables and data planes",
        epilog="When a real server goes down: give lvsd your keepalived.conf (--keepalived-conf) or checks "
        "in the YAML config; failed real servers leave the table (or go to weight 0 with inhibit_on_failure) "
        "and "
        "come back when their checks pass; `lvsadm --status` shows each one's health. To take one out by "
        "hand without breaking its connections: lvsadm --drain -t|-u|-f SERVICE -r SERVER [--timeout S].",
    )
    ap.add_argument(
        "--foreground", "-F", action="store_true", help="stay in the foreground (for service managers)"
    )
    ap.add_argument(
        "--config",
        "-c",
        help="YAML configuration to load (SIGHUP reloads it); real servers may carry keepalived's checks",
    )
    ap.add_argument(
        "--keepalived-conf",
        metavar="FILE",
        help="read an unmodified keepalived.conf: its virtual servers become the table and its health "
        "checkers (TCP_CHECK, HTTP_GET, SSL_GET, UDP_CHECK, DNS_CHECK, MISC_CHECK, PING_CHECK, SMTP_CHECK) "
        "remove failed real servers and add them back when they recover (SIGHUP / lvsadm --reload re-reads "
        "it; vrrp_* blocks are left to `keepalived --vrrp`)",
    )
    ap.add_argument(
        "--health-in-process",
        action="store_true",
        help="run the health checkers' probes in lvsd's own event loop instead of a checker child process",
    )
    ap.add_argument(
        "--state",
        help="the state file: written atomically after every change, read back on start "
        "(default: one per namespace under /var/lib/pylvs, or LVSD_STATE_DIR)",
    )
    ap.add_argument("--started-by", default="by hand", help=argparse.SUPPRESS)
    ap.add_argument(
        "--max-conns", type=int, default=0, metavar="N",
        help="NAT: at most N TCP relays (further connections are reset, counted and logged); "
        "default: as many as the descriptor limit allows after --reserve-fds",
    )  # fmt: skip
    ap.add_argument(
        "--reserve-fds", type=int, default=64, metavar="N",
        help="descriptors relays never take, so the control socket always answers (default 64)",
    )  # fmt: skip
    ap.add_argument(
        "--udp-rcvbuf", type=int, default=8 * 1024 * 1024, metavar="BYTES",
        help="receive buffer of each UDP service's socket (default 8 MiB; drops are counted)",
    )  # fmt: skip
    ap.add_argument(
        "--socket", help="control socket name (abstract) or path; default from LVSD_SOCKET or 'pylvs'"
    )
    ap.add_argument("--allow-group", action="append", default=[], help="a group whose members may use lvsadm")
    ap.add_argument("--no-vip", action="store_true", help="do not add missing VIPs to lo")
    ap.add_argument("--no-nat", action="store_true", help="no NAT data plane (control plane only)")
    ap.add_argument("--no-dr", action="store_true", help="no DR/TUN data plane (AF_PACKET, nftables)")
    ap.add_argument("--workers", type=int, default=1, help="NAT worker processes (SO_REUSEPORT)")
    ap.add_argument(
        "--proxy-protocol",
        action="append",
        default=[],
        metavar="RIP:PORT=v1|v2",
        help="send a PROXY protocol header to this NAT real server (repeatable)",
    )
    ap.add_argument(
        "--nat-engine",
        choices=["proxy", "kernel"],
        default="proxy",
        help="how -m services are served: proxy (default: lvsd relays the connections) or kernel "
        "(EXPERIMENTAL: lvsd decides each new flow's first packet through NFQUEUE and netfilter's NAT "
        "moves the bytes; needs root, nftables and nfnetlink_queue; falls back to proxy with a message)",
    )
    ap.add_argument(
        "--transparent", action="store_true", help="NAT: connect to real servers from the client's address"
    )
    ap.add_argument("--classic", action="store_true", help="pre-2025 kernel rules")
    ap.add_argument(
        "--http",
        metavar="ADDR:PORT",
        help="serve /metrics (Prometheus, node_exporter's IPVS names) and the live status page "
        "here (read-only; e.g. 127.0.0.1:9108)",
    )
    ap.add_argument(
        "--procfs",
        metavar="DIR",
        help="keep DIR/net/ip_vs and DIR/net/ip_vs_stats in the kernel's format "
        "(for prometheus-node-exporter --path.procfs DIR)",
    )
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument(
        "--log-file",
        help="log here (default: stderr with --foreground, else syslog through /dev/log, "
        "else a file beside the state file)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.config and opts.keepalived_conf:
        parser.error("--config and --keepalived-conf exclude each other (either file can hold health checks)")
    if opts.proxy_protocol:
        from forwarding.proxyproto import parse_specs

        try:
            parse_specs(opts.proxy_protocol)
        except ValueError as exc:
            parser.error(str(exc))
    if opts.http:
        from .http import parse_listen

        try:
            parse_listen(opts.http)
        except ValueError as exc:
            parser.error(str(exc))
    opts.log_target_text = setup_logging(opts)
    opts.argv = _argv_for_successor(list(sys.argv[1:] if argv is None else argv))
    if opts.workers > 1:
        _log_workers_alike(opts.log_file, opts.log_level)
    if not opts.foreground:
        _daemonize()
    import uvloop

    uvloop.install()
    try:
        asyncio.run(Daemon(opts).run())
    except OSError as exc:
        print(f"lvsd: {exc}", file=sys.stderr)
        _tell_parent(f"lvsd: {exc}")
        return 1
    except SystemExit as exc:
        _tell_parent(str(exc.code) if exc.code not in (None, 0) else "ok")
        raise
    return 0


LOG_FORMAT = "%(asctime)s lvsd[%(process)d] %(levelname)s %(name)s: %(message)s"
SYSLOG_FORMAT = "lvsd[%(process)d]: %(levelname)s %(name)s: %(message)s"


def setup_logging(opts: argparse.Namespace) -> str:
    """Send the log where an operator finds it and say where (for ``lvsadm
    --status``): ``--log-file``; else stderr in the foreground (the service
    manager keeps it); else syslog/journald through ``/dev/log`` when
    something listens there; else a file beside the state file, never
    /dev/null."""
    import logging.handlers

    level = getattr(logging, opts.log_level.upper())
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if opts.log_file:
        handler = logging.FileHandler(opts.log_file)
        where = f"file {os.path.abspath(opts.log_file)}"
    elif opts.foreground:
        handler = logging.StreamHandler(sys.stderr)
        where = "stderr"
    else:
        handler, where = _syslog_or_file(opts)
    handler.setFormatter(logging.Formatter(SYSLOG_FORMAT if where.startswith("syslog") else LOG_FORMAT))
    root.addHandler(handler)
    return where


def _syslog_or_file(opts: argparse.Namespace) -> tuple[logging.Handler, str]:
    import logging.handlers

    if os.path.exists("/dev/log"):
        try:
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            return handler, "syslog (/dev/log)"
        except OSError:
            pass
    path = os.path.splitext(opts.state or names.state_path(opts.socket))[0] + ".log"
    try:
        if not opts.state:
            names.ensure_private_dir(os.path.dirname(path))
        opts.log_file = path  # workers log there too
        return logging.FileHandler(path), f"file {path}"
    except (OSError, names.UnsafePath):
        return logging.StreamHandler(sys.stderr), "stderr (no /dev/log and no writable log file)"


def _log_workers_alike(log_file: str | None, level: str) -> None:
    """``--workers`` processes log to the same file, at the same level (their
    environment carries both; O_APPEND keeps the processes' lines whole).
    Only with workers: it imports the NAT worker module for the names."""
    from forwarding.nat_pool import LOG_FILE_ENV, LOG_LEVEL_ENV

    os.environ[LOG_LEVEL_ENV] = level
    if log_file:
        os.environ[LOG_FILE_ENV] = os.path.abspath(log_file)
    else:
        os.environ.pop(LOG_FILE_ENV, None)


#: seconds the command that started lvsd waits for it to be serving
READY_TIMEOUT = 30.0
#: the daemon's end of the pipe to the process that started it (see _daemonize)
_ready_fd: int | None = None


def _daemonize() -> None:
    """Detach: fork, new session, standard streams to /dev/null.  The first
    process stays until the daemon serves (control socket, planes, --http
    listener) or fails, and exits 0 or prints the daemon's error and exits
    1: so ``lvsd --http ...; lvsadm -A ...`` does not race lvsadm's
    auto-start, and a port in use is reported where lvsd was started."""
    global _ready_fd
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        os._exit(_wait_for_daemon(read_end))
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    _ready_fd = write_end
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)


def _wait_for_daemon(read_end: int) -> int:
    import select

    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    text = data.decode("utf-8", "replace").strip()
    if text == "ok":
        return 0
    if not data and time.monotonic() >= deadline:
        print(f"lvsd: still starting after {READY_TIMEOUT:g} s", file=sys.stderr)
        return 0
    print(text or "lvsd: exited while starting", file=sys.stderr)
    return 1


def _tell_parent(text: str) -> None:
    """Tell the process that started the daemon how the start went (once)."""
    global _ready_fd
    if _ready_fd is None:
        return
    fd, _ready_fd = _ready_fd, None
    try:
        os.write(fd, text.encode("utf-8", "replace")[:4000] + b"\n")
    except OSError:
        pass
    finally:
        os.close(fd)


if __name__ == "__main__":
    raise SystemExit(main())
