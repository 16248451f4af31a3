"""``lvsadm simulate --report``: a scenario replay as plain text for people.

One line per step of the scenario (ipvsadm commands with their exit status,
flows with the real server chosen and the entry's state, closes, sleeps with
the virtual clock), snapshots as ipvsadm prints them, and at the end one line
per real server: the flows it got, its share of its service's flows, its
weight and its active/inactive connection counts when the scenario ends
(``ActiveConn``/``InActConn`` of ``ipvsadm -L -n``).

Pure: it reads the events :class:`lvs.simulate.Simulation` emits and the
table the simulation leaves; the caller writes the lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ctl import IPVS


@dataclass
class ServerTotal:
    """One real server's line in the final table."""

    server: str
    service: str
    flows: int = 0
    share: float = 0.0
    weight: int | None = None
    active: int = 0
    inactive: int = 0


def _clock(t: float) -> str:
    return f"{t:8.1f}s"


@dataclass
class Report:
    """Turns simulation events into text lines, counting as it goes.

    ``write`` receives each finished line (no newline).  ``explain`` renders a
    flow's explanation under it (``--report --explain``).
    """

    write: Callable[[str], None]
    now: Callable[[], float] = lambda: 0.0
    explain: Callable[[dict[str, Any]], list[str]] | None = None
    #: (real server, vip) -> flows routed there
    counts: dict[str, int] = field(default_factory=dict)
    #: real server -> the virtual address of its flows (for the final table)
    vips: dict[str, str] = field(default_factory=dict)
    flows: int = 0
    dropped: int = 0

    def feed(self, event: dict[str, Any]) -> None:
        t = _clock(self.now())
        if "i" in event:
            self._flow(t, event)
            return
        step = event.get("step")
        if step == "snapshot":
            self.write(f"{t}  snapshot{(' ' + event['args']) if event.get('args') else ''}:")
            for line in event["output"].splitlines():
                self.write("    " + line)
        elif step in ("ipvsadm", "capture"):
            args = event["args"] if step == "ipvsadm" else event["args"].partition("ipvsadm ")[2]
            rc = event["rc"]
            status = "ok" if rc == 0 else f"exit {rc}"
            out = event.get("output", "")
            lines = out.splitlines()
            if rc != 0 and len(lines) == 1:
                self.write(f"{t}  ipvsadm {args}  -> {status}: {lines[0]}")
            else:
                self.write(f"{t}  ipvsadm {args}  -> {status}")
                for line in lines:
                    self.write("    " + line)
        elif step == "close":
            self.write(f"{t}  close {event['args']}")
        elif step == "sleep":
            self.write(f"{t}  sleep {event['args']}s")
        elif step is not None:
            self.write(f"{t}  {step} {event.get('args', '')}".rstrip())

    def _flow(self, t: str, ev: dict[str, Any]) -> None:
        host, port = ev["flow"]
        client = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        mark = f" mark {ev['mark']}" if ev.get("mark") else ""
        rs = ev.get("real_server")
        self.flows += 1
        head = f"{t}  #{ev['i']:<5} {ev['proto']} {client} -> {ev['vip']}{mark}  =>"
        if rs is None:
            self.dropped += 1
            why = ev.get("error") or "no real server"
            self.write(f"{head} none ({why})")
        else:
            self.counts[rs] = self.counts.get(rs, 0) + 1
            self.vips.setdefault(rs, ev["vip"])
            state = ev.get("state", "")
            extra = f", {ev['error']}" if ev.get("error") else ""
            self.write(f"{head} {rs} ({state}{extra})")
        if self.explain is not None:
            for line in self.explain(ev):
                self.write("           " + line)

    def totals(self, ipvs: IPVS | None = None) -> list[ServerTotal]:
        """One entry per real server: the flows counted, and for servers still
        in the table their weight and connection counters now."""
        rows: dict[str, ServerTotal] = {}
        if ipvs is not None:
            for svc in ipvs:
                for d in reversed(svc.destinations):  # oldest first reads like the scenario
                    ep = d.endpoint()
                    row = rows.get(ep)
                    if row is None:
                        row = rows[ep] = ServerTotal(ep, svc.describe(), weight=d.weight)
                    row.active += d.activeconns
                    row.inactive += d.inactconns
        for rs, n in self.counts.items():
            row = rows.get(rs)
            if row is None:
                row = rows[rs] = ServerTotal(rs, "(removed)")
            row.flows = n
        routed = sum(self.counts.values())
        for row in rows.values():
            row.share = row.flows / routed if routed else 0.0
        return list(rows.values())

    def final_table(self, ipvs: IPVS | None = None) -> list[str]:
        rows = self.totals(ipvs)
        out = [
            "",
            f"{self.flows} flows, {self.flows - self.dropped} went to a real server, {self.dropped} to none.",
            "",
            f"{'real server':<24} {'service':<24} {'flows':>7} {'share':>7} {'weight':>6} "
            f"{'active':>7} {'inactive':>8}",
        ]
        for r in rows:
            weight = "-" if r.weight is None else str(r.weight)
            out.append(
                f"{r.server:<24} {r.service:<24} {r.flows:>7} {r.share * 100:>6.1f}% {weight:>6} "
                f"{r.active:>7} {r.inactive:>8}"
            )
        out.append("(flows: new flows sent to the server during the scenario; active/inactive: at the end)")
        return out


def parse_final_table(text: str) -> dict[str, int]:
    """real server -> flows, read back from a report's final table (for tests
    and tools)."""
    counts: dict[str, int] = {}
    lines = text.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if line.startswith("real server "))
    except ValueError:
        return counts
    for line in lines[start + 1 :]:
        if not line or line.startswith("("):
            break
        fields = line.split()
        counts[fields[0]] = int(fields[-5])
    return counts
