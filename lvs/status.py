"""What the status page shows, as plain data, pure.

* :class:`History`: a ring of samples of the table's counters (the whole
  table and the first :data:`HISTORY_SERVICES` services), one sample per
  call of :meth:`History.sample` (lvsd calls it every
  :data:`SAMPLE_PERIOD` seconds), read back as connections/s and bytes/s per
  interval for the page's sparklines of the last ten minutes.
* :class:`Events`: recent admin changes (and, once health checks exist,
  health transitions), newest last.
* :func:`services_steps` / :func:`conns_view`: ``lvsadm --json services``
  and ``--json conns`` built in steps or bounded, so a page poll never holds
  lvsd's loop long.

Time is passed in (``now``, seconds); nothing here reads a clock.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from . import json_views
from .addr import format_ip
from .constants import AF_INET
from .ipvsadm import listing

__all__ = [
    "HISTORY_SECONDS",
    "HISTORY_SERVICES",
    "SAMPLE_PERIOD",
    "Event",
    "Events",
    "History",
    "conns_view",
    "service_id",
    "services_steps",
]

SAMPLE_PERIOD = 2.0  # seconds between two samples: the kernel estimator's period
HISTORY_SECONDS = 600.0  # the sparklines cover ten minutes
HISTORY_SERVICES = 200  # services with a history of their own (the whole table always has one)
SERVICES_CHUNK = 100  # services turned into JSON per step


def service_id(svc: Any) -> str:
    """A stable text key of a service, as the page names it:
    ``tcp 10.0.0.1:80``, ``udp [2001:db8::1]:53``, ``fwm 7`` (``fwm 7 inet6``)."""
    key = svc.key
    if key.fwmark:
        return f"fwm {key.fwmark}" + (" inet6" if key.af != AF_INET else "")
    proto = {6: "tcp", 17: "udp", 132: "sctp"}.get(key.protocol, str(key.protocol))
    addr = format_ip(key.af, key.addr)
    if key.af != AF_INET:
        addr = f"[{addr}]"
    return f"{proto} {addr}:{key.port}"


class History:
    """Counter samples, at most ``HISTORY_SECONDS / SAMPLE_PERIOD`` + 1 of
    them per series.  A series is (time, connections, bytes in + out); rates
    are the growth between neighbouring samples divided by their distance in
    time (a counter zeroed by ``ipvsadm -Z`` gives 0, not a negative rate)."""

    def __init__(
        self,
        seconds: float = HISTORY_SECONDS,
        period: float = SAMPLE_PERIOD,
        services: int = HISTORY_SERVICES,
    ) -> None:
        self.points = int(seconds / period) + 1
        self.max_services = services
        self.total: deque[tuple[float, int, int]] = deque(maxlen=self.points)
        self.services: dict[str, deque[tuple[float, int, int]]] = {}

    def sample(self, ipvs: Any, now: float) -> None:
        """Take one sample of the whole table and of the first services."""
        st = ipvs.stats
        self.total.append((now, st.conns, st.inbytes + st.outbytes))
        seen: set[str] = set()
        for svc in itertools.islice(ipvs.services.values(), self.max_services):
            sid = service_id(svc)
            seen.add(sid)
            ring = self.services.get(sid)
            if ring is None:
                ring = self.services[sid] = deque(maxlen=self.points)
            s = svc.stats
            ring.append((now, s.conns, s.inbytes + s.outbytes))
        for sid in [k for k in self.services if k not in seen]:
            del self.services[sid]

    @staticmethod
    def rates(ring: deque[tuple[float, int, int]]) -> dict[str, list[float]]:
        """``t`` (end of each interval), ``cps`` and ``bps`` per interval."""
        t: list[float] = []
        cps: list[float] = []
        bps: list[float] = []
        prev = None
        for point in ring:
            if prev is not None and point[0] > prev[0]:
                dt = point[0] - prev[0]
                t.append(round(point[0], 3))
                cps.append(round(max(0, point[1] - prev[1]) / dt, 3))
                bps.append(round(max(0, point[2] - prev[2]) / dt, 3))
            prev = point
        return {"t": t, "cps": cps, "bps": bps}

    def view(self, now: float) -> dict[str, Any]:
        return {
            "time": now,
            "period": SAMPLE_PERIOD,
            "total": self.rates(self.total),
            "services": {sid: self.rates(ring) for sid, ring in self.services.items()},
        }


@dataclass
class Event:
    """One line of the page's "recent events": ``time`` (seconds since the
    epoch, as the daemon passes it), ``kind`` ("admin", "health", "daemon"),
    ``text``."""

    time: float
    kind: str
    text: str


class Events:
    """The last ``size`` events, oldest first."""

    def __init__(self, size: int = 200) -> None:
        self.ring: deque[Event] = deque(maxlen=size)
        self.count = 0

    def add(self, when: float, kind: str, text: str) -> None:
        self.count += 1
        self.ring.append(Event(when, kind, text[:500]))

    def view(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "events": [{"time": e.time, "kind": e.kind, "text": e.text} for e in self.ring],
        }


def services_steps(
    ipvs: Any, now: float, chunk: int = SERVICES_CHUNK, limit: int | None = None
) -> Generator[None, None, dict[str, Any]]:
    """``lvsadm --json services`` (:func:`lvs.json_views.services_json`),
    ``chunk`` services per step, the first ``limit`` of them in ipvsadm's
    order (``total_services`` says how many there are); each service also
    carries its page ``id`` (:func:`service_id`)."""
    header = {k: getattr(ipvs, k) for k in ("version", "conn_tab_size") if hasattr(ipvs, k)}
    whole = json_views.services_json(
        SimpleNamespace(services={}, stats=ipvs.stats, remote_conns=[], **header), now
    )
    ordered = listing.ordered_services(ipvs)
    whole["total_services"] = len(ordered)
    if limit is not None:
        ordered = ordered[:limit]
    out: list[dict[str, Any]] = []
    for start in range(0, len(ordered), chunk):
        for svc in ordered[start : start + chunk]:
            row = json_views.service_json(svc)
            row["id"] = service_id(svc)
            out.append(row)
        yield
    whole["services"] = out
    return whole


def conns_view(ipvs: Any, now: float, limit: int, remote: list[Any] | None = None) -> dict[str, Any]:
    """At most ``limit`` entries of ``lvsadm --json conns`` (the table's own
    first, then ``remote``: the ``--workers`` processes' copies), with the
    total count."""
    conns = getattr(ipvs, "conns", None) or ()
    remote = remote or []
    chosen = list(itertools.islice(itertools.chain(conns, remote), max(0, limit)))
    rows = json_views.conns_json(SimpleNamespace(conns=chosen, remote_conns=[]), now)
    return {"total": len(conns) + len(remote), "shown": len(rows), "conns": rows}
