"""Replay every kernel-oracle scenario through ``lvsadm simulate`` and compare
with what the real kernel decided (tests/data/traces, recorded from Debian's
6.1.192 kernel in qemu; see tests/data/README.md).

The contract: every flow's real server, every ipvsadm step's exit status and
output, and the ``ipvsadm -L -n`` half of every snapshot, byte for byte.
twos draws random numbers in the kernel, so its scenarios are checked for
never choosing a weight-0 or overloaded server instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lvs.simulate import Simulation
from tests.oracle_compare import watch_twos

DATA = Path(__file__).parent / "data"
SCENARIOS = sorted(p.stem for p in (DATA / "scenarios").glob("*.scn"))
RANDOM = {"twos-tcp", "twos-udp"}


def run_scenario(name: str, seed: int = 0) -> list[dict]:
    sim = Simulation(seed=seed)
    got: list[dict] = []
    sim.run((DATA / "scenarios" / f"{name}.scn").read_text().splitlines(), got.append)
    return got


def load_trace(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / "traces" / f"{name}.jsonl").read_text().splitlines()]


def listing_half(snapshot_output: str) -> str:
    """The ``-L -n`` part of a snapshot (the ``--stats`` part follows it)."""
    banner = "IP Virtual Server version"
    second = snapshot_output.find(banner, len(banner))
    return snapshot_output if second < 0 else snapshot_output[:second]


def comparable(lines: list[dict]) -> list[tuple]:
    out = []
    for d in lines:
        if "i" in d:
            out.append(("flow", d["i"], d["proto"], tuple(d["flow"]), d["vip"], d["real_server"]))
        elif d.get("step") == "ipvsadm":
            out.append(("ipvsadm", d["args"], d["rc"], d["output"]))
        elif d.get("step") == "snapshot":
            out.append(("snapshot", listing_half(d["output"])))
    return out


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n not in RANDOM])
def test_replay_matches_kernel(name: str) -> None:
    want = comparable(load_trace(name))
    got = comparable(run_scenario(name))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == w


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_twos_never_picks_quiesced_or_overloaded(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    picks = watch_twos(monkeypatch)
    got = comparable(run_scenario(name, seed=7))
    want = comparable(load_trace(name))
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[:5] for g in got if g[0] == "flow"] == [w[:5] for w in want if w[0] == "flow"]
    # the non-random parts still match exactly: ipvsadm steps
    assert [g for g in got if g[0] == "ipvsadm"] == [w for w in want if w[0] == "ipvsadm"]
    assert picks


def test_cli_simulate_prints_json_lines() -> None:
    """``lvsadm simulate`` as a user runs it: a subprocess printing JSON lines."""
    scn = DATA / "scenarios" / "rr-udp.scn"
    proc = subprocess.run(
        [sys.executable, "-m", "lvsd.cli", "simulate", "--seed", "3", str(scn)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert comparable(lines) == comparable(load_trace("rr-udp"))


def test_simulate_rejects_bad_scenario() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lvsd.cli", "simulate", "-"],
        input="udp 10.0.0.1 nonsense\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "line 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sleep_expires_udp_entries() -> None:
    """UDP entries live 300 s: after ``sleep 301`` the counters are back to 0."""
    scenario = """
ipvsadm -A -u 10.0.0.2:53 -s rr
ipvsadm -a -u 10.0.0.2:53 -r 10.1.0.1:53 -m
udp 10.2.0.1:1000 10.0.0.2:53
udp 10.2.0.2:1000 10.0.0.2:53
snapshot
sleep 299
snapshot
sleep 2
snapshot
""".splitlines()
    sim = Simulation()
    out: list[dict] = []
    sim.run(scenario, out.append)
    snaps = [listing_half(d["output"]) for d in out if d.get("step") == "snapshot"]
    rows = [s.splitlines()[-1].split() for s in snaps]
    assert [r[-1] for r in rows] == ["2", "2", "0"]


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n not in RANDOM])
def test_explain_adds_reasons_without_changing_decisions(name: str) -> None:
    """--explain asks each scheduler for its account before the decision: the
    decisions stay the kernel's (tests/test_explain.py checks the accounts)."""
    sim = Simulation(explain=True)
    got: list[dict] = []
    sim.run((DATA / "scenarios" / f"{name}.scn").read_text().splitlines(), got.append)
    assert comparable(got) == comparable(load_trace(name))
    flows = [d for d in got if "i" in d]
    assert all(isinstance(d["explain"], list) and d["explain"] for d in flows)
