"""``--workers N``: the NAT data plane in N processes, one table copy each.

Design (the simple, honest one):

* lvsd's main process keeps the control plane: the table that ``lvsadm``
  changes, the VIPs on ``lo``, the listings.  With workers it serves no NAT
  traffic itself.
* Each worker is a process (``python -m forwarding.workers``) with its own
  core (:class:`~lvs.core.Director`) and a :class:`~forwarding.nat.NatPlane`
  whose listening sockets use SO_REUSEPORT, so the kernel spreads new
  connections and datagrams over the workers (by 4-tuple: one UDP client
  flow always meets the same worker).  For a persistent service a classic
  BPF program on the reuseport group picks the worker from the client's
  address instead, so one client address always meets the same worker and
  its template (persistence per client address holds; persistence groups
  wider than one address, ``-M``, may be split over workers).
* Replication: the main process sends each worker the table at start and
  every service change (service with all its real servers, in kernel order),
  and the timeouts and sysctls when they change.  Workers apply them through
  the same admin API, so their tables equal the main one.
* Scheduling semantics: each worker schedules independently on its own
  table: rr/wrr rotate per worker, lc/wlc/sed/nq compare the worker's own live
  connection counts, persistence templates live in the worker that made them.
  With N workers and even spreading this approximates the single-table
  behaviour; it is not identical.
* Counters and entries, one director's view: every ``REPORT`` seconds each
  worker reports, per real server, its ActiveConn/InActConn/persistent
  counts and the growth of its traffic counters, and the main process keeps
  the sums (the rate estimator and ``--rate`` work on those).  A listing does
  not rely on the last report: before lvsd answers ``-L``/``-l`` (any form),
  ``--json services|conns``, ``--proc ...`` or ``--status``, it sends every
  worker a ``query`` over its control socket and waits for the answers
  (at most ``QUERY_TIMEOUT`` seconds; a worker that does not answer is left
  out and a warning logged).  Each answer is a report made at that moment,
  plus, for connection listings (``-L -c``, ``--json conns``, ``--proc
  ip_vs_conn``), a copy of every entry of the worker's table
  (:func:`lvs.conn.conn_row`, the time left on its timer rather than its
  expiry).  So the counts, traffic counters and entries shown are as of the
  request, listed after the main process's own entries, worker by worker.
  The copy costs the worker about 4 us per entry (0.4 s per 100,000
  entries, measured), during which it relays nothing, and the main process
  about 6 us per entry to read it back; counters-only queries cost nothing
  noticeable.
* Control messages (JSON lines on the socketpair): main to worker
  ``options``, ``env``, ``svc``, ``del``, ``query`` {id, conns}, ``stop``;
  worker to main ``report`` {dests, entries, plane}, with ``id`` and
  ``conns`` when it answers a query.
* A dead worker (its control socket closes: killed, crashed) is reaped, its
  end logged (``worker 0 (pid 123) was killed by SIGKILL; restarting it with
  the current table``) and a new one started at once with the current
  table; see :class:`WorkerPool`.  Its connections and entries are lost with
  it; the listening sockets of the others keep serving meanwhile, so new
  clients see no gap.
* ICMP port unreachable (:mod:`forwarding.icmp`) is sent by the worker that
  got the datagram; the rate limit is per worker process, so a client whose
  flows spread over N workers may get up to N times the kernel's rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from lvs.conn import ConnView, conn_row
from lvs.constants import AF_INET6, CONN_F_FWD_MASK
from lvs.core import Director
from lvs.ctl import IPVS, DestSpec, ServiceSpec
from lvs.errors import IPVSError
from lvs.model import Service, ServiceKey

log = logging.getLogger("lvsd.workers")

#: where and how verbosely workers log: lvsd sets these from --log-file and
#: --log-level before it starts them (unset: stderr, warnings)
LOG_FILE_ENV = "LVSD_LOG_FILE"
LOG_LEVEL_ENV = "LVSD_LOG_LEVEL"

#: seconds between two counter reports of a worker
REPORT = 0.5
#: seconds a listing waits for the workers' answers (``WorkerPool.query``)
QUERY_TIMEOUT = 2.0
#: a worker dying sooner than this after its start counts as a quick death
QUICK_DEATH = 10.0
#: pause before restarting a worker, by its number of quick deaths in a row
RESTART_PAUSES = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68
#: a BPF load from the network header (``SKF_NET_OFF``)
_SKF_NET_OFF = -0x100000


# ----------------------------------------------------------------------------
# serialising the table
# ----------------------------------------------------------------------------
def key_tuple(key: ServiceKey) -> list[int]:
    return [key.af, key.protocol, key.addr, key.port, key.fwmark]


def service_record(svc: Service) -> dict[str, Any]:
    """A service and its real servers (kernel order, newest first) as JSON data."""
    return {
        "key": key_tuple(svc.key),
        "sched": svc.sched_name,
        "flags": svc.flags,
        "timeout": svc.timeout,
        "netmask": svc.netmask,
        "pe": svc.pe_name,
        "dests": [
            [d.af, d.addr, d.port, d.conn_flags & CONN_F_FWD_MASK, d.weight, d.u_threshold, d.l_threshold]
            for d in svc.destinations
        ],
    }


def apply_service(ipvs: IPVS, rec: dict[str, Any], now: float) -> None:
    """Make ``ipvs``'s copy of a service equal to ``rec``."""
    key = ServiceKey(*rec["key"])
    spec = ServiceSpec(key, rec["sched"], rec["flags"], rec["timeout"], rec["netmask"], rec["pe"])
    svc = ipvs.get(key)
    if svc is None:
        svc = ipvs.add_service(spec, now)
    elif (svc.sched_name, svc.flags, svc.timeout, svc.netmask, svc.pe_name) != (
        spec.sched_name,
        spec.flags,
        spec.timeout,
        spec.netmask,
        spec.pe_name,
    ):
        ipvs.edit_service(spec, now)
    want = {(d[0], d[1], d[2]): d for d in rec["dests"]}
    for dest in list(svc.destinations):
        if (dest.af, dest.addr, dest.port) not in want:
            ipvs.del_dest(key, dest.af, dest.addr, dest.port, now)
    # oldest first: each add goes to the head, so the order ends up as the main's
    for af, addr, port, fwd, weight, u, lo in reversed(rec["dests"]):
        spec_d = DestSpec(af, addr, port, fwd=fwd, weight=weight, u_threshold=u, l_threshold=lo)
        dest = svc.find_dest(af, addr, port)
        if dest is None:
            ipvs.add_dest(key, spec_d, now)
        elif (dest.conn_flags & CONN_F_FWD_MASK, dest.weight, dest.u_threshold, dest.l_threshold) != (
            fwd,
            weight,
            u,
            lo,
        ):
            ipvs.edit_dest(key, spec_d, now)


# ----------------------------------------------------------------------------
# the main process's side
# ----------------------------------------------------------------------------
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
        self.counts: list[dict[tuple[Any, ...], tuple[int, int, int]]] = [{} for _ in range(n)]
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
        cmd = [sys.executable, "-m", "forwarding.workers", str(child.fileno()), str(i), str(self.n)]
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
        ipvs = self.director.ipvs
        return {
            "timeouts": list(ipvs.get_timeouts()),
            "sysctl": {n: getattr(ipvs.sysctl, n) for n in ipvs.sysctl.names()},
        }

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
        ipvs = self.director.ipvs
        self.planes[index] = str(msg.get("plane", ""))
        self.entries[index] = int(msg.get("entries", 0))
        counts: dict[tuple[Any, ...], tuple[int, int, int]] = {}
        for key, af, addr, port, active, inact, persist, conns, inp, outp, inb, outb in msg["dests"]:
            skey = ServiceKey(*key)
            counts[(skey, af, addr, port)] = (active, inact, persist)
            svc = ipvs.get(skey)
            dest = svc.find_dest(af, addr, port) if svc is not None else None
            targets = [ipvs.stats]
            if svc is not None:
                targets.append(svc.stats)
            if dest is not None:
                targets.append(dest.stats)
            for st in targets:
                st.conns += conns
                st.inpkts += inp
                st.outpkts += outp
                st.inbytes += inb
                st.outbytes += outb
        self.counts[index] = counts
        self._apply_counts()
        qid = msg.get("id")
        if isinstance(qid, int):
            waiting = self._waiting.pop(qid, None)
            if waiting is not None and not waiting[1].done():
                waiting[1].set_result(msg)

    def _apply_counts(self) -> None:
        """Show the workers' live counts on the main table's real servers."""
        ipvs = self.director.ipvs
        for skey in self.served:
            svc = ipvs.get(skey)
            if svc is None:
                continue
            for dest in svc.destinations:
                k = (skey, dest.af, dest.addr, dest.port)
                a = i = p = 0
                for c in self.counts:
                    got = c.get(k)
                    if got is not None:
                        a += got[0]
                        i += got[1]
                        p += got[2]
                dest.activeconns, dest.inactconns, dest.persistconns = a, i, p

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


# ----------------------------------------------------------------------------
# reuseport steering
# ----------------------------------------------------------------------------
def attach_client_steering(sock: socket.socket, af: int, n: int) -> None:
    """Classic BPF on a reuseport group: the socket index is a hash of the
    client's address modulo ``n``, so one client address meets one worker."""
    off = 12 if af != AF_INET6 else 8 + 12  # IPv4 saddr; IPv6: last word of saddr
    # ld [net+off]; ld a*golden (mul); rsh; mod n; ret a
    prog = [
        (0x20, 0, 0, (_SKF_NET_OFF + off) & 0xFFFFFFFF),  # BPF_LD|BPF_W|BPF_ABS
        (0x24, 0, 0, 0x9E3779B1),  # BPF_ALU|BPF_MUL|BPF_K
        (0x74, 0, 0, 16),  # BPF_ALU|BPF_RSH|BPF_K
        (0x94, 0, 0, n),  # BPF_ALU|BPF_MOD|BPF_K
        (0x16, 0, 0, 0),  # BPF_RET|BPF_A
    ]
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    import ctypes

    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def detach_steering(sock: socket.socket) -> None:
    """Back to the kernel's 4-tuple hash."""
    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)


# ----------------------------------------------------------------------------
# a worker process
# ----------------------------------------------------------------------------
class _Worker:
    def __init__(self, sock: socket.socket, index: int, n: int) -> None:
        self.sock = sock
        self.index = index
        self.n = n
        self.t0 = time.monotonic()
        self.ipvs = IPVS()
        self.director = Director(self.ipvs, table_seed=int.from_bytes(os.urandom(8), "little"))
        self.director.reset_clock(self.now())
        self.plane: Any = None
        self.writer: asyncio.StreamWriter | None = None
        self._last: dict[tuple[Any, ...], tuple[int, int, int, int, int]] = {}
        self.stop = asyncio.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        now = self.now()
        if op == "options":
            from .nat import NatPlane

            if self.plane is None:
                pp = {(h, p): v for h, p, v in msg.get("proxy_protocol", [])}
                self.plane = NatPlane(
                    self.director,
                    self.now,
                    manage_vips=False,
                    proxy_protocol=pp,
                    transparent=bool(msg.get("transparent")),
                    connect_timeout=float(msg.get("connect_timeout", 5.0)),
                    reuse_port=self.n,
                )
                self.plane.start()
        elif op == "svc":
            try:
                apply_service(self.ipvs, msg["svc"], now)
            except IPVSError as exc:
                log.warning("worker %d: cannot apply %s: %s", self.index, msg["svc"]["key"], exc)
        elif op == "del":
            key = ServiceKey(*msg["key"])
            if self.ipvs.get(key) is not None:
                self.ipvs.del_service(key, now)
        elif op == "env":
            tcp, fin, udp = msg["timeouts"]
            self.ipvs.set_timeouts(tcp, fin, udp)
            for name, value in msg["sysctl"].items():
                with contextlib.suppress(KeyError, ValueError):
                    self.ipvs.sysctl.set(name, str(value))
        elif op == "query":
            # an answer at once: the counters so far, and the entries if asked
            reply = self.report()
            reply["id"] = msg.get("id")
            if msg.get("conns"):
                reply["conns"] = [conn_row(cp, now) for cp in self.director.conns]
            self.send(reply)
        elif op == "stop":
            self.stop.set()

    def send(self, msg: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def report(self) -> dict[str, Any]:
        dests = []
        last = {}
        for svc in self.ipvs.services.values():
            for d in svc.destinations:
                k = (key_tuple(svc.key), d.af, d.addr, d.port)
                st = d.stats
                cur = (st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes)
                hk = (tuple(k[0]), d.af, d.addr, d.port)
                prev = self._last.get(hk, (0, 0, 0, 0, 0))
                last[hk] = cur
                delta = [c - p for c, p in zip(cur, prev)]
                dests.append(
                    [k[0], d.af, d.addr, d.port, d.activeconns, d.inactconns, d.persistconns, *delta]
                )
        self._last = last
        return {
            "op": "report",
            "dests": dests,
            "entries": len(self.director.conns),
            "plane": self.plane.describe() if self.plane else "",
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_unix_connection(sock=self.sock)
        self.writer = writer
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)

        async def read() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    break
                self.handle(json.loads(line))
            self.stop.set()

        async def tick() -> None:
            next_report = self.now() + REPORT
            while True:
                more = self.director.tick(self.now(), 20000)
                if self.now() >= next_report:
                    next_report = self.now() + REPORT
                    self.send(self.report())
                await asyncio.sleep(0 if more else 0.25)

        tasks = [asyncio.ensure_future(read()), asyncio.ensure_future(tick())]
        await self.stop.wait()
        for t in tasks:
            t.cancel()
        if self.plane is not None:
            await self.plane.close()
        with contextlib.suppress(Exception):
            writer.close()


def worker_main(argv: list[str]) -> int:
    fd, index, n = int(argv[0]), int(argv[1]), int(argv[2])
    logging.basicConfig(
        level=getattr(logging, os.environ.get(LOG_LEVEL_ENV, "warning").upper(), logging.WARNING),
        filename=os.environ.get(LOG_FILE_ENV) or None,
        format=f"%(asctime)s lvsd-worker{index}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    sock = socket.socket(fileno=fd)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_Worker(sock, index, n).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
