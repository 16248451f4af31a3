"""lvsd's health checking: loads keepalived.conf, runs the checkers' probes
in the daemon's event loop, hands their outcomes to the policy
(:class:`lvs.health.HealthMonitor`), logs transitions, runs notify scripts.

Probes run concurrently, at most ``max_parallel`` at a time, each bounded by
its own timeout (connect_timeout, or misc_timeout for scripts) plus a safety
margin, so a silent server or a hung script never holds the loop: the data
planes share it, and a probe only ever awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import glob
import json
import logging
import os
import random
import sys
from collections.abc import Callable
from typing import Any

from checkers import Outcome, probe_for
from lvs.config import Config, apply_config
from lvs.health import Checker, HealthMonitor, VirtualServerConf
from lvs.keepalived_conf import KeepalivedConfError, KeepalivedConfig, parse_keepalived, split_command

log = logging.getLogger("lvsd.health")

MAX_PARALLEL = 256
#: how long beyond its own timeout a probe may take before the runner gives up on it
SAFETY_MARGIN = 5.0
#: scripts (notify_up/down, quorum_up/down) get this long before SIGKILL
SCRIPT_TIMEOUT = 30.0
#: omega's scripts at shutdown get what keepalived gives them (TIMER_HZ: one second)
OMEGA_SCRIPT_TIMEOUT = 1.0


def read_sources(path: str, yaml: bool) -> dict[str, str]:
    """The configuration's file texts: ``path`` and, for keepalived.conf, every
    file its ``include`` globs name (relative to the including file's
    directory, in sorted order, as keepalived resolves them)."""
    if yaml:
        from .config import read_config

        return {path: read_config(path)}
    texts = {path: _read(path)}
    if not yaml:
        parse_keepalived(texts[path], path, _recording_includer(texts))
    return texts


def _recording_includer(texts: dict[str, str]) -> Any:
    def include(pattern: str, parent: str) -> list[tuple[str, str]]:
        base = os.path.dirname(os.path.abspath(parent))
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        out = []
        for name in sorted(glob.glob(full)):
            if name not in texts:
                texts[name] = _read(name)
            out.append((name, texts[name]))
        return out

    return include


def _replaying_includer(texts: dict[str, str]) -> Any:
    """Includes answered from texts read before (the checker process parses
    exactly what lvsd parsed)."""

    def include(pattern: str, parent: str) -> list[tuple[str, str]]:
        base = os.path.dirname(os.path.abspath(parent))
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        return [(name, texts[name]) for name in sorted(texts) if fnmatch.fnmatchcase(name, full)]

    return include


def parse_sources(
    path: str, yaml: bool, texts: dict[str, str]
) -> tuple[list[VirtualServerConf], Config | None, list[str], list[str]]:
    """(checked services, the rest of a YAML file, warnings, skipped-block lines)."""
    if yaml:
        from lvs.config import parse_config

        cfg = parse_config(texts[path], path)
        return cfg.health, cfg, cfg.warnings, []
    kcfg = parse_keepalived(texts[path], path, _replaying_includer(texts))
    return kcfg.services, None, kcfg.warnings, kcfg.skipped


def read_keepalived(path: str) -> KeepalivedConfig:
    """Read and parse ``path`` with its includes."""
    return parse_keepalived(_read(path), path, _recording_includer({}))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except OSError as exc:
        raise KeepalivedConfError(f"{path}: {exc.strerror}") from None


class HealthRunner:
    """The checkers of one configuration file (keepalived.conf, or lvsd's YAML
    with ``checks``), run in lvsd's loop."""

    def __init__(
        self,
        ipvs: Any,
        now: Callable[[], float],
        path: str,
        on_change: Callable[[], None] = lambda: None,
        max_parallel: int = MAX_PARALLEL,
        yaml: bool = False,
    ) -> None:
        self.ipvs = ipvs
        self.now = now
        self.path = path
        self.yaml = yaml
        self.on_change = on_change
        self.max_parallel = max_parallel
        self.monitor: HealthMonitor | None = None
        self.running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.probes_run = 0
        self._closing = False
        #: when the loop wakes next by itself
        self._wake_at = 0.0
        #: told each line the monitor logs (kind "log"/"warning", text): lvsd's event list
        self.on_log: Callable[[str, str], None] | None = None
        #: per checker (Checker.ident): [passed, failed, seconds the last probe took]
        self.check_stats: dict[int, list[float]] = {}
        #: log the configuration's warnings (the checker process leaves that to lvsd)
        self.report = True
        #: the file texts last parsed (what the checker process is given)
        self.sources: dict[str, str] = {}
        #: bumped at each reload: verdicts of an older configuration are dropped
        self.generation = 0
        #: in the checker process: told each checker change (ident, ok, reason, exit code)
        self.emit: Callable[[dict[str, Any]], None] | None = None
        #: in lvsd with a checker process: that process
        self.child: CheckerProcess | None = None

    def _read(self) -> tuple[list[VirtualServerConf], Config | None]:
        """Read the file(s) and parse them: the checked services, and (YAML)
        the rest.  Raises KeepalivedConfError or ConfigError (FILE:LINE: ...)."""
        texts = read_sources(self.path, self.yaml)
        return self._parse(texts)

    def _parse(self, texts: dict[str, str]) -> tuple[list[VirtualServerConf], Config | None]:
        services, plain, warnings, skipped = parse_sources(self.path, self.yaml, texts)
        if self.report:
            for line in skipped:
                log.info("%s", line)
            for line in warnings:
                log.warning("%s", line)
        self.sources = texts
        return services, plain

    # -- life cycle ---------------------------------------------------------------------------
    def load(self, texts: dict[str, str] | None = None) -> None:
        """Read the file and build the table (start-up)."""
        services, plain = self._parse(texts) if texts is not None else self._read()
        now = self.now()
        if plain is not None:
            apply_config(self.ipvs, plain, now)
        self.monitor = HealthMonitor(self.ipvs, services, random.Random())
        self.monitor.start(now)
        self._drain()

    def reload(self, texts: dict[str, str] | None = None) -> list[str]:
        """Re-read the file; keep the state (and connections) of unchanged real
        servers.  A file with errors changes nothing."""
        services, plain = self._parse(texts) if texts is not None else self._read()
        now = self.now()
        monitor = HealthMonitor(self.ipvs, services, random.Random())
        monitor.adopt(self.monitor or HealthMonitor(self.ipvs, []), now)
        whole = Config(services=monitor.desired_table())
        if plain is not None:
            whole = Config(
                services=plain.services + whole.services, sysctl=plain.sysctl, timeouts=plain.timeouts
            )
        changes = apply_config(self.ipvs, whole, now)
        monitor.resync_flags()
        self.monitor = monitor
        self.generation += 1
        self._drain()
        self._wake.set()
        if self.child is not None:
            self.child.send({"op": "reload", "gen": self.generation, "files": self.sources})
        return changes

    def _report(self, cfg: KeepalivedConfig) -> None:
        for line in cfg.skipped:
            log.info("%s", line)
        for line in cfg.warnings:
            log.warning("%s", line)

    def start(self, child: bool = False) -> None:
        """Run the probes here, or (``child``) in a checker process of their
        own, as keepalived runs its checkers in a child: lvsd's loop then
        only applies what changes (a checker going up or down)."""
        if child:
            self.child = CheckerProcess(self)
            self._task = asyncio.create_task(self.child.run())
        else:
            self._task = asyncio.create_task(self._loop())

    def verdict(self, msg: dict[str, Any]) -> None:
        """A checker changed in the checker process: apply it here."""
        monitor = self.monitor
        if monitor is None or msg.get("gen") != self.generation:
            return
        ident = msg.get("ident")
        if not isinstance(ident, int) or not 0 <= ident < len(monitor.checkers):
            return
        chk = monitor.checkers[ident]
        ok = bool(msg.get("ok"))
        if not ok:
            chk.retry_it = chk.retry  # the checker process counted the retries
        code = msg.get("exit_code")
        monitor.result(
            chk, ok, str(msg.get("reason", "")), self.now(), code if isinstance(code, int) else None
        )
        self._drain()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self.child is not None:
            self.child.stop()
        if self.monitor is not None and self.emit is None:
            scripts = self.monitor.shutdown_scripts()  # omega
            if scripts:
                await asyncio.gather(*(run_script(s, OMEGA_SCRIPT_TIMEOUT) for s in scripts))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self.running):
            task.cancel()
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)

    # -- the loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while not self._closing:
            self._wake.clear()
            monitor = self.monitor
            wait = 1.0
            if monitor is not None:
                free = self.max_parallel - len(self.running)
                if free > 0:
                    for chk in monitor.due(self.now(), free):
                        task = asyncio.create_task(self._probe(monitor, chk))
                        self.running.add(task)
                        task.add_done_callback(self.running.discard)
                nxt = monitor.next_due()
                if nxt is not None:
                    wait = max(0.0, min(wait, nxt - self.now()))
                if len(self.running) >= self.max_parallel:
                    wait = 1.0  # woken when a probe finishes
            self._wake_at = self.now() + wait
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives as the event is set (and it is set a thousand times a second with 1,000
            # checkers), which left lvsd running its checks after SIGTERM
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _probe(self, monitor: HealthMonitor, chk: Checker) -> None:
        limit = chk.connect_timeout
        if chk.kind == "MISC_CHECK":
            limit = float(chk.conf.options.get("misc_timeout") or chk.delay_loop) + 2.0
        started = self.now()
        try:
            async with asyncio.timeout(limit + SAFETY_MARGIN):  # no extra task, unlike wait_for
                outcome = await probe_for(chk.kind)(chk)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            outcome = Outcome(False, "probe did not finish in time")
        except Exception as exc:  # a probe's own bug must not stop health checking
            log.exception("%s probe of %s raised", chk.kind, chk.describe())
            outcome = Outcome(False, f"probe error: {exc}")
        self.probes_run += 1
        stats = self.check_stats.setdefault(chk.ident, [0, 0, 0.0])
        stats[0 if outcome.ok else 1] += 1
        stats[2] = self.now() - started
        if monitor is not self.monitor:
            return  # reloaded meanwhile: the new monitor has its own schedule
        before = (chk.is_up, chk.has_run, chk.last_exit_code)
        monitor.result(chk, outcome.ok, outcome.reason, self.now(), outcome.exit_code)
        if self.emit is not None and (chk.is_up, chk.has_run, chk.last_exit_code) != before:
            self.emit({"gen": self.generation, "ident": chk.ident, "ok": outcome.ok, "reason": outcome.reason,
                       "exit_code": outcome.exit_code})  # fmt: skip
        self._drain()
        # wake the loop only when this checker's next attempt comes before the loop's own wake
        # (or probes were held back): with 1,000 checkers this saves ~1,000 loop turns a second
        if chk.due < self._wake_at or len(self.running) >= self.max_parallel:
            self._wake.set()

    def _drain(self) -> None:
        monitor = self.monitor
        if monitor is None or not monitor.outbox:
            return
        items, monitor.outbox = monitor.outbox, []
        changed = False
        for item in items:
            if item.kind == "script" and self.emit is not None:
                continue  # the checker process: lvsd runs the scripts
            if item.kind == "script":
                task = asyncio.get_running_loop().create_task(run_script(item.text))
                self.running.add(task)
                task.add_done_callback(self.running.discard)
            elif item.kind == "warning":
                log.warning("%s", item.text)
            else:
                log.info("%s", item.text)
                changed = True
            if item.kind != "script" and self.on_log is not None:
                self.on_log(item.kind, item.text)
        if changed:
            self.on_change()

    # -- views ---------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """``lvsadm --status``: each checked real server's health, ``since``
        also as UTC wall time."""
        if self.monitor is None:
            return []
        out = self.monitor.status()
        for vs in out:
            for rs in vs["real_servers"]:
                rs["since_utc"] = self._utc(rs["since"])
        return out

    def _utc(self, since: float) -> str:
        import datetime
        import time

        wall = time.time() - (self.now() - since)
        return datetime.datetime.fromtimestamp(wall, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def annotate(self, services_json: dict[str, Any]) -> None:
        """Add each real server's health to ``--json services``."""
        from lvs.addr import parse_ip
        from lvs.constants import AF_INET6
        from lvs.model import ServiceKey

        monitor = self.monitor
        if monitor is None:
            return
        protos = {"tcp": 6, "udp": 17, "sctp": 132}
        for svc in services_json.get("services", []):
            af = AF_INET6 if svc.get("af") == "inet6" else 2
            if svc.get("fwmark"):
                key = ServiceKey(af, 0, 0, 0, int(svc["fwmark"]))
            else:
                key = ServiceKey(
                    af, protos.get(svc.get("protocol") or "", 0), parse_ip(svc["address"])[1], svc["port"]
                )
            for dest in svc.get("destinations", []):
                d_af, d_addr = parse_ip(dest["address"])
                rs = monitor.find(key, d_af, d_addr, dest["port"])
                dest["health"] = monitor.health_of(rs) if rs is not None else None
                if dest["health"] is not None:
                    dest["health"]["since_utc"] = self._utc(dest["health"]["since"])
            for vs in monitor.vss:
                if key in vs.conf.keys:
                    svc["health"] = {
                        "quorum_up": vs.quorum_state_up,
                        "real_servers": [
                            {"server": r.describe(), **monitor.health_of(r)}
                            for r in [*vs.rs, *([vs.sorry] if vs.sorry else [])]
                        ],
                    }


async def run_script(command: str, timeout: float = SCRIPT_TIMEOUT) -> None:
    """Run a notify/quorum script (split as keepalived does, no shell)."""
    argv = split_command(command)
    if not argv:
        log.warning("cannot run script %s: empty or unterminated quote", command)
        return
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )
    except OSError as exc:
        log.warning("cannot run script %s: %s", command, exc)
        return
    try:
        async with asyncio.timeout(timeout):
            status = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        log.warning("script %s timed out and was killed", command)
        return
    if status:
        log.info("script %s exited with status %d", command, status)


class CheckerProcess:
    """lvsd's checker child (``python -m lvsd.checkerd``), as keepalived's
    Keepalived_healthcheckers: it parses the same file texts, runs every
    probe with the same policy, and writes one JSON line each time a checker
    changes (and its counters once a second); lvsd applies those to the
    table.  A child that dies is started again with the current texts."""

    def __init__(self, runner: HealthRunner) -> None:
        self.runner = runner
        self.proc: asyncio.subprocess.Process | None = None
        self._stopping = False

    def send(self, msg: dict[str, Any]) -> None:
        proc = self.proc
        if proc is not None and proc.stdin is not None and proc.returncode is None:
            proc.stdin.write((json.dumps(msg) + "\n").encode())

    def stop(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def run(self) -> None:
        runner = self.runner
        while not self._stopping:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "lvsd.checkerd", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, limit=1 << 24,
            )  # fmt: skip
            log.info("checker process started (pid %d)", self.proc.pid)
            self.send({"op": "load", "path": runner.path, "yaml": runner.yaml, "gen": runner.generation,
                       "files": runner.sources})  # fmt: skip
            assert self.proc.stdout is not None
            try:
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        break
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if msg.get("op") == "stats":
                        if msg.get("gen") == runner.generation:
                            runner.check_stats = {int(k): v for k, v in msg.get("stats", {}).items()}
                            runner.probes_run = int(msg.get("probes", 0))
                    else:
                        runner.verdict(msg)
            finally:
                if self.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                await self.proc.wait()
            if not self._stopping:
                log.error("checker process (pid %d) exited with %s; starting it again", self.proc.pid,
                          self.proc.returncode)  # fmt: skip
                await asyncio.sleep(1.0)
