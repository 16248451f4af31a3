"""What lvsd keeps so it can be watched: the history of its counters, recent
events, the count of control operations, and (with ``--http``/``--procfs``)
the HTTP listener and the procfs writer.

The daemon makes one :class:`Observer` and calls it at start, at stop and
after each control request; everything else lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections import Counter
from typing import Any

from lvs.status import SAMPLE_PERIOD, Events, History

log = logging.getLogger("lvsd")

#: ipvsadm commands that change the table: each success is an event
CHANGING = frozenset(
    {
        "add-service",
        "edit-service",
        "delete-service",
        "flush",
        "add-server",
        "delete-server",
        "edit-server",
        "set",
        "start-daemon",
        "stop-daemon",
        "restore",
        "zero",
    }
)


class Observer:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.history = History()
        self.events = Events()
        #: (op, ipvsadm command kind or "", "ok"|"error") -> count
        self.control_ops: Counter[tuple[str, str, str]] = Counter()
        self.http: Any = None
        self.procfs: Any = None
        self._sampler: asyncio.Task[None] | None = None
        self.process_registry: Any = None
        #: (virtual server, real server) -> [last state seen, transitions counted]
        self.health_seen: dict[tuple[str, str], list[Any]] = {}

    async def start(self) -> None:
        from .metrics import process_registry

        opts = self.daemon.opts
        self.process_registry = process_registry()
        self.event("daemon", "lvsd started")
        self._sampler = asyncio.ensure_future(self._sample_forever())
        if getattr(opts, "procfs", None):
            from .procfs import ProcfsWriter

            self.procfs = ProcfsWriter(self.daemon, opts.procfs)
            self.procfs.start()
        if getattr(opts, "http", None):
            from .http import HttpServer, parse_listen

            host, port = parse_listen(opts.http)
            self.http = HttpServer(self.daemon, host, port)
            await self.http.start()

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.http is not None:
            await self.http.close()
        if self.procfs is not None:
            await self.procfs.close()

    async def _sample_forever(self) -> None:
        while True:
            pool = self.daemon.worker_pool()
            if pool is not None:
                with contextlib.suppress(Exception):
                    await pool.query(False)
            self.history.sample(self.daemon.ipvs, self.daemon.now())
            await asyncio.sleep(SAMPLE_PERIOD)

    def event(self, kind: str, text: str) -> None:
        self.events.add(time.time(), kind, text)

    def health_log(self, kind: str, text: str) -> None:
        """A line the health monitor logged (keepalived's words): an event.
        (Transitions are counted by the monitor itself, RsState.transitions:
        scanning every real server on every line cost O(servers) per line,
        12 s of stalled loop at the start of 1,000 checked servers.)"""
        self.event("health", text)

    def health_transitions(self) -> dict[tuple[str, str], list[Any]]:
        """(virtual server, real server) -> [alive, up/down transitions]."""
        health = getattr(self.daemon, "health", None)
        monitor = getattr(health, "monitor", None)
        if monitor is None:
            return self.health_seen
        for vs in monitor.vss:
            for rs in [*vs.rs, *([vs.sorry] if vs.sorry else [])]:
                self.health_seen[(vs.conf.name, rs.describe())] = [rs.alive, rs.transitions]
        return self.health_seen

    def on_reply(self, req: Any, reply: Any) -> None:
        """Count one control request; a table change becomes an event."""
        if not isinstance(reply, dict):
            return
        op = str(req.op)
        command = ""
        ok = reply.get("ok", True) is not False
        if op == "ipvsadm":
            argv = [str(a) for a in req.args.get("argv", [])]
            command = self._kind(argv)
            ok = ok and reply.get("rc") == 0
            if ok and command in CHANGING:
                self.event("admin", "ipvsadm " + shlex.join(argv))
        elif op == "reload" and ok:
            self.event("admin", f"configuration reloaded: {reply.get('changes')}")
        elif op == "sysctl" and ok and "value" in req.args:
            self.event("admin", f"sysctl net.ipv4.vs.{req.args.get('name')}={reply.get('value')}")
        self.control_ops[(op[:40], command, "ok" if ok else "error")] += 1

    @staticmethod
    def _kind(argv: list[str]) -> str:
        from lvs.ipvsadm.grammar import UsageError, parse

        from .resolver import default_resolver

        try:
            return str(parse(list(argv), default_resolver()).kind)
        except (UsageError, ValueError, OSError):
            return "invalid"
