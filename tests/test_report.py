"""``lvsadm simulate --report``: the per-server totals of the plain-text report
equal what the kernel decided (tests/data/traces), for every scenario."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lvs.report import parse_final_table
from lvs.simulate import Simulation, simulate_report

DATA = Path(__file__).parent / "data"
SCENARIOS = sorted(p.stem for p in (DATA / "scenarios").glob("*.scn"))
RANDOM = {"twos-tcp", "twos-udp"}


def trace_counts(name: str) -> Counter[str]:
    lines = (DATA / "traces" / f"{name}.jsonl").read_text().splitlines()
    return Counter(d["real_server"] for d in map(json.loads, lines) if "i" in d and d["real_server"])


def report_text(name: str, seed: int = 0) -> str:
    out = io.StringIO()
    simulate_report((DATA / "scenarios" / f"{name}.scn").read_text().splitlines(), out, seed=seed)
    return out.getvalue()


@pytest.mark.parametrize("name", SCENARIOS)
def test_report_totals_equal_kernel_trace(name: str) -> None:
    text = report_text(name)
    got = {k: v for k, v in parse_final_table(text).items() if v}
    want = trace_counts(name)
    if name in RANDOM:
        # twos draws random numbers in the kernel too: the totals are those of
        # our own JSON replay with the same seed, and the flow count the kernel's
        sim = Simulation(seed=0)
        lines: list[dict] = []
        sim.run((DATA / "scenarios" / f"{name}.scn").read_text().splitlines(), lines.append)
        ours = Counter(d["real_server"] for d in lines if "i" in d and d["real_server"])
        assert got == dict(ours)
        assert sum(got.values()) == sum(want.values())
    else:
        assert got == dict(want)
    assert "Traceback" not in text


def test_report_reads_like_ipvsadm() -> None:
    text = report_text("wlc-tcp")
    lines = text.splitlines()
    # one line per flow, with the chosen real server and state
    flows = [line for line in lines if " #" in line and " => " in line]
    assert len(flows) == sum(trace_counts("wlc-tcp").values())
    assert "=> 10.1.0.4:80 (ESTABLISHED)" in flows[0]
    # snapshots exactly as ipvsadm -L -n prints them, indented
    assert "    IP Virtual Server version 1.2.1 (size=4096)" in lines
    assert "    TCP  10.0.0.1:80 wlc" in lines
    # final table: shares add up, active/inactive at the end as in the last snapshot
    table = lines[lines.index(next(x for x in lines if x.startswith("real server "))) + 1 :]
    rows = [r.split() for r in table if r and not r.startswith("(")]
    assert sum(float(r[-4].rstrip("%")) for r in rows) == pytest.approx(100.0, abs=0.2)
    last_snapshot = [x for x in lines if x.startswith("      -> 10.1.0.1:80") and "Masq" in x][-1].split()
    row = next(r for r in rows if r[0] == "10.1.0.1:80")
    assert (row[-2], row[-1]) == (last_snapshot[-2], last_snapshot[-1])


def test_report_shows_errors_and_sleeps() -> None:
    scenario = [
        "ipvsadm -A -u 10.0.0.2:53 -s rr",
        "ipvsadm -a -u 10.0.0.9:53 -r 10.1.0.1:53 -m",
        "ipvsadm -a -u 10.0.0.2:53 -r 10.1.0.1:53 -m",
        "udp 10.2.0.1:1000 10.0.0.2:53",
        "sleep 301",
        "udp 10.2.0.1:1000 10.0.0.3:53",
    ]
    out = io.StringIO()
    simulate_report(scenario, out)
    text = out.getvalue()
    assert "ipvsadm -a -u 10.0.0.9:53 -r 10.1.0.1:53 -m  -> exit 255: Service not defined" in text
    assert "   301.0s  sleep 301s" in text
    assert "   301.0s  #1     udp 10.2.0.1:1000 -> 10.0.0.3:53  => none (no real server)" in text
    assert parse_final_table(text) == {"10.1.0.1:53": 1}


def test_cli_report() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lvsd.cli", "simulate", "--report", str(DATA / "scenarios" / "rr-udp.scn")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert parse_final_table(proc.stdout) == dict(trace_counts("rr-udp"))
