"""``/metrics``: one scrape of lvsd, as prometheus-client's text format.

The table's families (node_exporter's IPVS names and pylvs's rates) come
from :mod:`lvs.metrics`, copied and rendered in steps with the loop let run
between them; the daemon's own families are built here:

* ``pylvs_dataplane_events_total{plane, event}``: the NAT relay's and the
  DR/TUN plane's counters (accepted, refused, connect failures, resets, ICMP
  sent; frames, forwarded, rejected, ...);
* ``pylvs_control_operations_total{op, result}``: control-socket requests
  (``ipvsadm`` commands by their kind) and their outcome;
* ``pylvs_http_requests_total{code}``: this listener's answers;
* lvsd's process metrics (prometheus-client's ProcessCollector,
  PlatformCollector, GCCollector) and ``pylvs_info{version}``.

:class:`FamiliesCollector` offers the same families to any
prometheus-client registry; a test checks that ``generate_latest`` over it
writes byte for byte what :func:`lvs.metrics.render` writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from lvs import metrics as table_metrics
from lvs.metrics import Family

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: NatPlane attributes counted in pylvs_dataplane_events_total{plane="nat"}
NAT_EVENTS = (
    "accepted",
    "refused",
    "connect_failures",
    "connect_timeouts",
    "resets",
    "expired",
    "nodest",
    "udp_flows_opened",
    "udp_dropped",
)
#: DirectPlane.stats attributes counted with plane="dr"
DR_EVENTS = (
    "frames",
    "forwarded",
    "fast",
    "rejected",
    "dropped",
    "accepted",
    "malformed",
    "waiting",
    "no_route",
    "queued",
)


class FamiliesCollector(Collector):
    """prometheus-client's view of :class:`lvs.metrics.Family` objects."""

    def __init__(self, fams: Iterable[Family]) -> None:
        self.fams = list(fams)

    def collect(self) -> Iterable[Any]:
        for fam in self.fams:
            if fam.type == "counter":
                name = fam.name[: -len("_total")] if fam.name.endswith("_total") else fam.name
                metric: Any = CounterMetricFamily(name, fam.help, labels=fam.labels)
            else:
                metric = GaugeMetricFamily(fam.name, fam.help, labels=fam.labels)
            for values, value in fam.samples:
                metric.add_metric(list(values), value)
            yield metric


def process_registry() -> CollectorRegistry:
    """lvsd's own process: CPU, memory, open files, start time; Python's GC."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def dataplane_family(planes: Iterable[Any]) -> Family:
    fam = Family(
        "pylvs_dataplane_events_total",
        "counter",
        "Data-plane events: NAT relay (accepted, refused, connect failures and timeouts, resets, "
        "expired, no real server, UDP flows, ICMP port unreachable sent) and DR/TUN frames "
        "(this process's planes; with --workers the NAT relay's counters live in the workers).",
        ("plane", "event"),
    )
    for plane in planes:
        counters = getattr(plane, "ctx", plane)  # the NAT plane keeps them in its RelayContext
        if hasattr(counters, "accepted") and hasattr(counters, "resets"):
            for name in NAT_EVENTS:
                fam.samples.append((("nat", name), int(getattr(counters, name, 0) or 0)))
            icmp = getattr(counters, "icmp", None)
            fam.samples.append((("nat", "icmp_unreachable_sent"), int(getattr(icmp, "sent", 0) or 0)))
        stats = getattr(plane, "stats", None)
        if stats is not None and hasattr(stats, "frames"):
            for name in DR_EVENTS:
                fam.samples.append((("dr", name), int(getattr(stats, name, 0) or 0)))
            fam.samples.append(
                (("dr", "tx_errors"), int(getattr(getattr(plane, "tx", None), "errors", 0) or 0))
            )
    return fam


def counter_family(
    name: str, text: str, labels: tuple[str, ...], counts: dict[tuple[str, ...], int]
) -> Family:
    return Family(name, "counter", text, labels, [(k, v) for k, v in sorted(counts.items())])


def daemon_families(daemon: Any) -> list[Family]:
    from lvs import __version__ as version

    fams = [
        Family("pylvs_info", "gauge", "pylvs's version (always 1).", ("version",), [((version,), 1)]),
        dataplane_family(daemon.planes),
        counter_family(
            "pylvs_control_operations_total",
            "Control-socket requests by operation (for ipvsadm, the command's kind) and result.",
            ("op", "command", "result"),
            dict(daemon.observer.control_ops),
        ),
    ]
    http = daemon.observer.http
    if http is not None:
        fams.append(
            counter_family(
                "pylvs_http_requests_total",
                "Answers of lvsd's HTTP listener by status code.",
                ("code",),
                {(str(code),): n for code, n in http.answers.items()},
            )
        )
    if getattr(daemon, "health", None) is not None:
        fams.extend(health_families(daemon))
    return fams


def health_families(daemon: Any) -> list[Family]:
    """keepalived.conf health checking (``lvsd --keepalived-conf``): per real
    server its state, effective weight and the transitions lvsd saw; per
    checker its results and how long its last probe took; per virtual
    server its quorum."""
    runner = daemon.health
    monitor = runner.monitor
    seen = daemon.observer.health_transitions()
    rs_labels = ("virtual_server", "real_server", "role")
    chk_labels = ("virtual_server", "real_server", "checker", "check")
    up = Family(
        "pylvs_health_up", "gauge", "1 while the real server's checkers pass (keepalived's alive).", rs_labels
    )
    weight = Family(
        "pylvs_health_weight",
        "gauge",
        "The real server's effective weight (keepalived's real_weight; an inhibited one has 0 in the table).",
        rs_labels,
    )
    moves = Family(
        "pylvs_health_transitions_total",
        "counter",
        "Up/down transitions of the real server seen by lvsd.",
        rs_labels,
    )
    checks = Family(
        "pylvs_health_checks_total",
        "counter",
        "Probes by checker and result.",
        (*chk_labels, "result"),
    )
    duration = Family(
        "pylvs_health_check_duration_seconds", "gauge", "How long the checker's last probe took.", chk_labels
    )
    quorum = Family(
        "pylvs_health_quorum_up", "gauge", "1 while the virtual server has its quorum.", ("virtual_server",)
    )
    if monitor is None:
        return [up, weight, moves, checks, duration, quorum]
    done: set[tuple[str, ...]] = set()
    for vs in monitor.vss:
        name = vs.conf.name
        if (name,) not in done:
            done.add((name,))
            quorum.samples.append(((name,), int(vs.quorum_state_up)))
        for rs in [*vs.rs, *([vs.sorry] if vs.sorry else [])]:
            labels = (name, rs.describe(), "sorry" if rs.sorry else "real")
            if labels in done:
                continue
            done.add(labels)
            up.samples.append((labels, int(rs.alive)))
            weight.samples.append((labels, monitor.health_of(rs)["weight"]))
            moves.samples.append((labels, seen.get((name, rs.describe()), [None, 0])[1]))
            for index, chk in enumerate(rs.checkers):
                passed, failed, took = runner.check_stats.get(chk.ident, (0, 0, 0.0))
                chk_key = (name, rs.describe(), chk.kind, str(index))
                checks.samples.append(((*chk_key, "passed"), int(passed)))
                checks.samples.append(((*chk_key, "failed"), int(failed)))
                duration.samples.append((chk_key, round(float(took), 6)))
    return [up, weight, moves, checks, duration, quorum]


async def _drive(steps: Any) -> Any:
    """Run a step generator to its end, letting the loop run between steps."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(0)


_gc_holds = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_held() -> Iterator[None]:
    """No cyclic collection while a scrape runs.  A scrape of a big table
    makes a few hundred thousand short-lived containers (the snapshot); with
    the collector on they get promoted and set off full collections, each
    walking the whole table in one go (1.2 s for 10,000 services x 10 real
    servers on the loaded test machine, benchmarks/RESULTS.md): exactly the
    stall the chunking avoids.  The snapshot is freed by reference counting
    when the scrape ends, so nothing is left for the collector to promote."""
    global _gc_holds, _gc_was_enabled
    if _gc_holds == 0:
        _gc_was_enabled = gc.isenabled()
        gc.disable()
    _gc_holds += 1
    try:
        yield
    finally:
        _gc_holds -= 1
        if _gc_holds == 0 and _gc_was_enabled:
            gc.enable()


async def scrape(daemon: Any) -> AsyncIterator[str]:
    """The exposition in pieces.  With ``--workers`` the workers are asked
    for their counts first, so the figures are as of this scrape."""
    pool = daemon.worker_pool()
    if pool is not None:
        await pool.query(False)
    with gc_held():
        snap = await _drive(table_metrics.snapshot_steps(daemon.ipvs))
        fams = table_metrics.families(snap, daemon_families(daemon))
        for piece in table_metrics.render_chunks(fams):
            yield piece
            await asyncio.sleep(0)
        del fams
        await _drive(table_metrics.release_steps(snap))
    registry = daemon.observer.process_registry
    if registry is not None:
        yield generate_latest(registry).decode("utf-8")
