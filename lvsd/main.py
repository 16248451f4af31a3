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
from typing import Any

from lvs.core import Director
from lvs.ctl import IPVS
from lvs.protocol import Request

from .names import socket_address
from .observe import Observer
from .resolver import default_resolver
from .server import AccessPolicy, ControlServer
from .syncd import SyncDaemons

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
        self.worker_plane: Any = None
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
        try:
            reply = self._handle(req)
        finally:
            self.flush_planes()
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

    def worker_pool(self) -> Any:
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
            return self.run_ipvsadm(req.args["argv"], req.args.get("stdin", ""))
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
            return self.reload()
        if op == "sysctl":
            return self.sysctl(req.args)
        if op == "drain":
            return self.drain(req.args)
        if op == "shutdown":
            log.info("shutdown asked for by lvsadm --shutdown")
            # a moment for lvsadm to read this and hang up before the server closes
            asyncio.get_running_loop().call_later(0.2, self._stop.set)
            return {"pid": os.getpid()}
        return {"ok": False, "error": f"unsupported operation {op}"}

    def run_ipvsadm(self, argv: list[str], stdin: str = "") -> dict[str, Any]:
        from lvs.ipvsadm.commands import run

        out, err = io.StringIO(), io.StringIO()
        rc = run(argv, self.ipvs, self.now(), out, err, default_resolver(), stdin=io.StringIO(stdin))
        self.seq += 1
        return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "seq": self.seq}

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
            return {name: getattr(self.ipvs.sysctl, name) for name in self.ipvs.sysctl.names()}
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

    def reload(self) -> dict[str, Any]:
        """SIGHUP / ``lvsadm --reload``: re-read --config or --keepalived-conf;
        unchanged services, real servers, their health and connections stay;
        a file with errors changes nothing."""
        if self.health is None:
            return {"ok": False, "error": "lvsd runs without --config: nothing to reload"}
        from lvs.config import ConfigError
        from lvs.keepalived_conf import KeepalivedConfError

        try:
            return {"changes": self.health.reload()}
        except (KeepalivedConfError, ConfigError) as exc:
            return {"ok": False, "error": str(exc)}

    def sysctl(self, args: dict[str, Any]) -> dict[str, Any]:
        """Read or set one of net.ipv4.vs.*; ``text`` is the value as the
        kernel's /proc/sys file shows it (sync_threshold: "3\t50")."""
        name = str(args.get("name", ""))
        sysctls = self.ipvs.sysctl
        if name not in sysctls.names():
            return {"ok": False, "error": f"{'bad' if 'value' in args else 'unknown'} sysctl {name}"}
        if "value" in args:
            try:
                sysctls.set(name, str(args["value"]))
                self.syncd.refresh_params()
            except (KeyError, ValueError):
                return {"ok": False, "error": f"bad sysctl {name}"}
        value = getattr(sysctls, name)
        text = f"{value}\t{sysctls.sync_period}" if name == "sync_threshold" else str(value)
        return {"value": value, "text": text}

    # -- life cycle -------------------------------------------------------------
    async def ticker(self) -> None:
        """Drive the core's timers; expiry runs in slices so no request or
        packet waits long behind it."""
        while not self._stop.is_set():
            more = self.director.tick(self.now(), EXPIRY_BUDGET)
            if self.drains:
                self.step_drains()
            await asyncio.sleep(0 if more else TICK)

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
        if self.opts.state and os.path.exists(self.opts.state):
            self.restore_state(self.opts.state)
        self.start_planes()
        self.flush_planes()
        await self.server.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        log.info("lvsd listening on %r", socket_address(self.opts.socket))
        ticker = asyncio.create_task(self.ticker())
        if self.health is not None:
            self.health.start(child=not self.opts.health_in_process)
        try:
            await self.observer.start()
        except OSError as exc:  # --http's port taken: stop as on SIGTERM, then say why
            log.error("%s", exc)
            self._stop.set()
            start_error: OSError | None = exc
        else:
            start_error = None
            _tell_parent("ok")
        await self._stop.wait()
        ticker.cancel()
        self.syncd.close()
        await self.observer.close()
        if self.health is not None:
            await self.health.close()
        await self.server.close()
        for plane in self.planes:
            await plane.close()
        if self.opts.state:
            self.save_state(self.opts.state)
        if start_error is not None:
            raise start_error

    def _on_sighup(self) -> None:
        reply = self.reload()
        self.flush_planes()
        if reply.get("ok", True):
            log.info("configuration reloaded: %s", reply.get("changes"))
        else:
            log.error("reload failed: %s", reply.get("error"))

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
        if self.opts.workers > 1:
            from forwarding.nat_pool import NatWorkerPlane

            plane = self.worker_plane = NatWorkerPlane(self.director, self.now, self.opts.workers, **options)
        else:
            from forwarding.nat import NatPlane

            plane = NatPlane(self.director, self.now, **options)
        self.planes.append(plane)
        plane.start()

    def start_direct_plane(self) -> None:
        """DR/TUN plane (forwarding/dr.py): it opens its capture socket and
        nftables table only once a -g/-i service exists."""
        from forwarding.dr import DirectPlane

        name = "".join(ch if ch.isalnum() else "_" for ch in (self.opts.socket or ""))
        plane = DirectPlane(self.director, self.now, table="pylvs" + (f"_{name}" if name else ""))
        self.planes.append(plane)
        plane.start()

    def save_state(self, path: str) -> None:
        from lvs.ipvsadm.listing import save_rules

        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(save_rules(self.ipvs, numeric=True))
        os.replace(tmp, path)

    def restore_state(self, path: str) -> None:
        with open(path, encoding="utf-8") as fh:
            reply = self.run_ipvsadm(["-R"], fh.read())
        if reply["rc"] != 0:
            log.error("restoring %s: %s", path, reply["stderr"].strip())


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
    ap.add_argument("--state", help="save the table here on exit and restore it on start (ipvsadm -S format)")
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
    ap.add_argument("--log-file", help="log here instead of stderr")
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
    logging.basicConfig(
        level=getattr(logging, opts.log_level.upper()),
        filename=opts.log_file,
        format="%(asctime)s lvsd[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
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
