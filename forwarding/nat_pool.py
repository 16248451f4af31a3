"""``lvsd --workers N``: the NAT data plane in N processes, one table copy each.

* lvsd's main process keeps the control plane: the table that ``lvsadm``
  changes, the VIPs on ``lo``, the listings; it serves no NAT traffic itself
  (:class:`NatWorkerPlane`).
* Each worker (:mod:`forwarding.nat_worker`) runs a
  :class:`~forwarding.nat.NatPlane` on its own core, with SO_REUSEPORT
  listeners: the kernel spreads new connections and datagrams over the
  workers by 4-tuple; for a persistent service a cBPF program steers by
  client address instead (:mod:`forwarding.reuseport`), so persistence per
  client address holds (``-M`` groups wider than one address may be split).
* Replication (:mod:`lvs.replication`): each worker gets the table at start
  and every service change, and the timeouts and sysctls when they change.
* Scheduling semantics: each worker schedules on its own table (rr/wrr rotate
  per worker, lc/wlc/sed/nq see the worker's own counts, templates live in
  the worker that made them): close to one table's behaviour, not identical.
* Counters and entries, one director's view: every ``REPORT`` seconds each
  worker reports per real server its live counts and the growth of its
  traffic counters; the main process keeps the sums.  Before lvsd answers a
  listing, ``--json``, ``--proc`` or ``--status`` it asks every worker
  (:meth:`WorkerPool.query`, at most ``QUERY_TIMEOUT`` seconds) for a report
  made at that moment and, for connection listings, a copy of every entry
  (about 4 us per entry in the worker, 6 us to read back, measured).
* Control messages (JSON lines on a socketpair): main to worker ``options``,
  ``env``, ``svc``, ``del``, ``query`` {id, conns}, ``stop``; worker to main
  ``report`` {dests, entries, plane}, with ``id`` and ``conns`` for a query.
* A dead worker is reaped, its end logged and a new one started with the
  current table (:class:`WorkerPool`); its connections and entries are lost,
  the other workers keep serving.  ICMP port unreachable is rate-limited per
  worker, so a client spread over N workers may get N times the kernel's rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from lvs.conn import ConnView
from lvs.core import Director
from lvs.model import Service, ServiceKey
from lvs.replication import (
    DestKey,
    LiveCounts,
    apply_dest_report,
    environment,
    key_tuple,
    service_record,
    show_live_counts,
)

from .nat_common import ServedAddress, raise_nofile, tune_gc
from .nat_services import NatServices

log = logging.getLogger("lvsd.workers")

#: where and how verbosely workers log: lvsd sets these from --log-file and
#: --log-level before it starts them (unset: stderr, warnings)
LOG_FILE_ENV = "LVSD_LOG_FILE"
LOG_LEVEL_ENV = "LVSD_LOG_LEVEL"

#: seconds a listing waits for the workers' answers (``WorkerPool.query``)
QUERY_TIMEOUT = 2.0
#: a worker dying sooner than this after its start counts as a quick death
QUICK_DEATH = 10.0
#: pause before restarting a worker, by its number of quick deaths in a row
RESTART_PAUSES = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
#: seconds between two checks for changed timeouts and sysctls
ENV_CHECK = 0.5


class _Link(asyncio.Protocol):
    """JSON lines to and from one worker (messages queue until connected)."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.t: asyncio.Transport | None = None
        self.queue: list[bytes] = []
        self.closed = False
        #: the pieces of a line not yet complete (a worker's answer with its
        #: entries may be many megabytes: joined once, not grown per read)
        self.parts: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        for data in self.queue:
            self.t.write(data)  # type: ignore[union-attr]
        self.queue = []

    def data_received(self, data: bytes) -> None:
        while True:
            nl = data.find(b"\n")
            if nl < 0:
                if data:
                    self.parts.append(data)
                return
            self.parts.append(data[:nl])
            line = b"".join(self.parts)
            self.parts = []
            data = data[nl + 1 :]
            try:
                self.pool.on_report(self, json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("bad report from worker %d: %s", self.index, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.t = None
        self.closed = True
        self.pool.on_lost(self)

    def send(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        if self.t is not None:
            if not self.t.is_closing():
                self.t.write(data)
        elif not self.closed:
            self.queue.append(data)


class WorkerPool:
    """N worker processes fed with the main table; their counters summed back.

    A worker that dies is started again with the current table (services,
    timeouts, sysctls), at once, or after a growing pause (1 s up to 30 s)
    when it keeps dying within ``QUICK_DEATH`` seconds of its start.  The
    connections it relayed die with it (their sockets close), and so do its
    entries and persistence templates, as when a director restarts; the
    other workers go on undisturbed.  Both events are logged as warnings.
    """

    def __init__(
        self, director: Director, now_fn: Callable[[], float], n: int, options: dict[str, Any]
    ) -> None:
        self.director = director
        self.now = now_fn
        self.n = n
        self.options = options
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.links: list[_Link | None] = [None] * n
        self.tasks: list[asyncio.Future[Any]] = []
        #: worker -> {(svc key, dest af, addr, port): (active, inact, persist)}
        self.counts: list[dict[DestKey, LiveCounts]] = [{} for _ in range(n)]
        #: worker -> entries in its table, as of its last report
        self.entries = [0] * n
        self.planes: list[str] = ["starting"] * n
        self.served: set[ServiceKey] = set()
        self._last_env: Any = None
        self.lost = 0
        self.restarts = 0
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = [0.0] * n
        self._quick_deaths = [0] * n
        self._restarted = [False] * n
        self._qid = 0
        self._waiting: dict[int, tuple[_Link, asyncio.Future[dict[str, Any] | None]]] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._last_env = self._env()
        for i in range(self.n):
            self._spawn(i)

    def _spawn(self, i: int) -> bool:
        """Start worker ``i`` and queue the current table for it."""
        assert self.loop is not None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [sys.executable, "-m", "forwarding.nat_worker", str(child.fileno()), str(i), str(self.n)]
        try:
            proc = subprocess.Popen(cmd, pass_fds=[child.fileno()], cwd=_root(), env=_worker_env())
        except OSError as exc:
            parent.close()
            log.error("cannot start worker %d: %s", i, exc)
            return False
        finally:
            child.close()
        parent.setblocking(False)
        link = _Link(self, i)
        self.procs[i] = proc
        self.links[i] = link
        self.counts[i] = {}
        self.entries[i] = 0
        self.planes[i] = "starting"
        self._started[i] = time.monotonic()
        self.tasks.append(
            asyncio.ensure_future(self.loop.create_unix_connection(lambda link=link: link, sock=parent))
        )
        link.send({"op": "options", **self.options})
        link.send({"op": "env", **(self._last_env or self._env())})
        ipvs = self.director.ipvs
        for key in self.served:
            svc = ipvs.get(key)
            if svc is not None:
                link.send({"op": "svc", "svc": service_record(svc)})
        return True

    def send_all(self, msg: dict[str, Any]) -> None:
        for link in self.links:
            if link is not None:
                link.send(msg)

    def update(self, svc: Service) -> None:
        """A served service appeared or changed: every worker gets it whole."""
        self.served.add(svc.key)
        self.send_all({"op": "svc", "svc": service_record(svc)})

    def remove(self, key: ServiceKey) -> None:
        if key in self.served:
            self.served.discard(key)
            self.send_all({"op": "del", "key": key_tuple(key)})

    def _env(self) -> dict[str, Any]:
        return environment(self.director.ipvs)

    def sync_env(self, force: bool = False) -> None:
        """Timeouts and sysctls, when they changed."""
        env = self._env()
        if force or env != self._last_env:
            self._last_env = env
            self.send_all({"op": "env", **env})

    def on_report(self, link: _Link, msg: dict[str, Any]) -> None:
        if msg.get("op") != "report" or link is not self.links[link.index]:
            return
        index = link.index
        self.planes[index] = str(msg.get("plane", ""))
        self.entries[index] = int(msg.get("entries", 0))
        self.counts[index] = apply_dest_report(self.director.ipvs, msg["dests"])
        self._apply_counts()
        qid = msg.get("id")
        if isinstance(qid, int):
            waiting = self._waiting.pop(qid, None)
            if waiting is not None and not waiting[1].done():
                waiting[1].set_result(msg)

    def _apply_counts(self) -> None:
        """Show the workers' live counts on the main table's real servers."""
        show_live_counts(self.director.ipvs, self.served, self.counts)

    async def query(self, conns: bool, timeout: float = QUERY_TIMEOUT) -> list[ConnView]:
        """Ask every worker for its counters now (and its entries, with
        ``conns``): when this returns, the main table's counts and traffic
        counters include everything the workers had counted when they
        answered, and the result holds copies of their entries.  A worker
        that does not answer within ``timeout`` seconds is left out (its last
        periodic report stands; a warning is logged)."""
        assert self.loop is not None
        asked: list[tuple[int, _Link, asyncio.Future[dict[str, Any] | None]]] = []
        for link in self.links:
            if link is None or link.closed:
                continue
            self._qid += 1
            fut: asyncio.Future[dict[str, Any] | None] = self.loop.create_future()
            self._waiting[self._qid] = (link, fut)
            asked.append((self._qid, link, fut))
            link.send({"op": "query", "id": self._qid, "conns": conns})
        if asked:
            await asyncio.wait([f for _, _, f in asked], timeout=timeout)
        views: list[ConnView] = []
        now = self.now()
        for qid, link, fut in asked:
            self._waiting.pop(qid, None)
            msg = fut.result() if fut.done() else None
            if msg is None:
                log.warning(
                    "worker %d did not answer within %g s: its entries are not listed", link.index, timeout
                )
                continue
            try:
                views.extend(ConnView.from_row(row, now) for row in msg.get("conns") or ())
            except (TypeError, ValueError) as exc:
                log.warning("bad connection entry from worker %d: %s", link.index, exc)
        return views

    def on_lost(self, link: _Link) -> None:
        index = link.index
        for qid, (who, fut) in list(self._waiting.items()):
            if who is link:
                del self._waiting[qid]
                if not fut.done():
                    fut.set_result(None)
        if link is not self.links[index]:
            return
        self.planes[index] = "gone"
        self.counts[index] = {}
        self.entries[index] = 0
        self.lost += 1
        self._apply_counts()
        if not self.closing and self.loop is not None:
            self.tasks.append(asyncio.ensure_future(self._restart(index, link)))

    async def _restart(self, index: int, link: _Link) -> None:
        """Worker ``index`` is gone (its control socket closed): reap it, log
        how it ended, start a new one with the current table."""
        proc = self.procs[index]
        pid = proc.pid if proc is not None else 0
        deadline = time.monotonic() + 2
        while proc is not None and proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        rc = proc.poll() if proc is not None else None
        if proc is not None and rc is None:  # its socket broke but it lives: end it
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
            rc = proc.poll()
        if rc is None:
            how = "lost its control socket"
        elif rc < 0:
            try:
                how = f"was killed by {signal.Signals(-rc).name}"
            except ValueError:
                how = f"was killed by signal {-rc}"
        else:
            how = f"exited with status {rc}"
        while not self.closing and self.links[index] is link:
            # the first death restarts at once; a restarted worker that dies
            # again soon waits longer each time (no busy crash loop)
            quick = self._restarted[index] and time.monotonic() - self._started[index] < QUICK_DEATH
            self._quick_deaths[index] = self._quick_deaths[index] + 1 if quick else 0
            pause = RESTART_PAUSES[min(self._quick_deaths[index], len(RESTART_PAUSES) - 1)]
            log.warning(
                "worker %d (pid %d) %s; restarting it with the current table%s",
                index,
                pid,
                how,
                f" in {pause:g} s" if pause else "",
            )
            if pause:
                await asyncio.sleep(pause)
                if self.closing:
                    return
            if self._spawn(index):
                self._restarted[index] = True
                self.restarts += 1
                new = self.procs[index]
                log.warning("worker %d restarted as pid %d", index, new.pid if new is not None else 0)
                return
            how = "could not be started"
            self._started[index] = time.monotonic()
            self._restarted[index] = True

    def connections(self) -> int:
        """Entries held by the workers, as of their last reports."""
        return sum(self.entries)

    def describe(self) -> str:
        pids = [p.pid if p is not None else 0 for p in self.procs]
        text = f"{self.n} workers (SO_REUSEPORT): " + " | ".join(
            f"w{i} pid {pids[i]}: {p}" for i, p in enumerate(self.planes)
        )
        return text + (f" | restarts {self.restarts}" if self.restarts else "")

    async def close(self) -> None:
        self.closing = True
        self.send_all({"op": "stop"})
        await asyncio.sleep(0.05)
        for link in self.links:
            if link is not None and link.t is not None:
                link.t.close()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            if proc is None:
                continue
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for task in self.tasks:
            if not task.done():
                task.cancel()


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    root = _root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class NatWorkerPlane(NatServices[ServedAddress]):
    """The NAT data plane of ``lvsd --workers N`` as the main process sees it:
    it follows the table, holds the VIPs and feeds the :class:`WorkerPool`,
    whose processes carry the traffic."""

    def __init__(
        self,
        director: Director,
        now_fn: Callable[[], float],
        workers: int,
        *,
        manage_vips: bool = True,
        proxy_protocol: dict[tuple[str, int], int] | None = None,
        transparent: bool = False,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(director, now_fn, manage_vips=manage_vips)
        self.pool = WorkerPool(
            director,
            now_fn,
            workers,
            {
                "proxy_protocol": [[h, p, v] for (h, p), v in (proxy_protocol or {}).items()],
                "transparent": transparent,
                "connect_timeout": connect_timeout,
            },
        )
        self._checker: asyncio.TimerHandle | None = None
        self._env_soon = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the workers, then serve the current table through them."""
        self.loop = asyncio.get_running_loop()
        raise_nofile()
        tune_gc()
        self.pool.start(self.loop)
        self.follow()
        self._checker = self.loop.call_later(ENV_CHECK, self._check_env)

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None
        await self.pool.close()  # first: the workers need no "del" for each service
        self.unfollow()
        self.vips.close()
        await asyncio.sleep(0)

    def describe(self) -> str:
        return f"nat: {len(self.served)} services served by " + self.pool.describe()

    async def query(self, conns: bool) -> list[ConnView]:
        """The workers' counters now (and copies of their entries): see
        :meth:`WorkerPool.query`."""
        return await self.pool.query(conns)

    def connections(self) -> int:
        """Entries the workers hold, as of their last reports."""
        return self.pool.connections()

    # -- serving (NatServices) -----------------------------------------------------------
    def open_service(self, svc: Service, address: ServedAddress) -> ServedAddress:
        return address  # the workers listen

    def service_changed(self, svc: Service, served: ServedAddress) -> None:
        self.pool.update(svc)

    def close_service(self, served: ServedAddress) -> None:
        self.pool.remove(served.key)

    def table_changed(self) -> None:
        # once per burst of changes (an ``ipvsadm -R`` of thousands of services)
        if not self._env_soon and self.loop is not None:
            self._env_soon = True
            self.loop.call_soon(self._sync_env_now)

    def _sync_env_now(self) -> None:
        self._env_soon = False
        self.pool.sync_env()

    def _check_env(self) -> None:
        try:
            self.pool.sync_env()
        finally:
            if self.loop is not None:
                self._checker = self.loop.call_later(ENV_CHECK, self._check_env)


__all__ = ["LOG_FILE_ENV", "LOG_LEVEL_ENV", "NatWorkerPlane", "WorkerPool"]
