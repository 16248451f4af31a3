"""Replay the lab recordings of issue 11 through ``lvs.simulate`` and compare them in full.

* ``tests/data/random``: scenarios written by ``oracle/gen-random.py`` (seeded; every
  scheduler and flag, add/edit/delete/re-add of real servers with connections open,
  thresholds, sysctls, -E, one-packet services, persistence with netmask and expiry,
  tables spread over the address space listed every way) and the traces the Debian
  6.1.192 kernel gave for them.
* ``tests/data/lab``: hand-written scenarios of the two classes the issue names (the
  destination trash; listing order of wide tables), with their traces, and the exact
  ipvsadm captures of the wide table (``captures/``).

Every flow's real server, every ipvsadm step, both halves of every snapshot (the
counters the real servers' own segments make aside, see tests/oracle_compare.py) and
every ``sh ipvsadm``/``/proc/net/ip_vs`` output must be identical.  twos draws random
numbers in the kernel: its scenarios are held to the invariants instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.oracle_compare import (
    LAB_SERVICES,
    comparable,
    first_difference,
    lab_resolver,
    load_trace,
    order_command,
    replay,
    salt_of,
    uses_random_scheduler,
    watch_twos,
)

DATA = Path(__file__).parent / "data"
SETS = [DATA / "random", DATA / "lab"]
TRACES = sorted(t for d in SETS for t in (d / "traces").glob("*.jsonl"))
CAPTURES = sorted(p for p in (DATA / "lab" / "captures").glob("*") if p.is_dir())


def _scenario(trace: Path) -> Path:
    return trace.parent.parent / "scenarios" / (trace.name.removesuffix(".jsonl") + ".scn")


@pytest.mark.parametrize("trace", TRACES, ids=[t.stem for t in TRACES])
def test_replay_matches_lab_kernel(trace: Path) -> None:
    diff = first_difference(_scenario(trace), trace)
    assert diff is None, diff


WIDE = [t for t in TRACES if t.stem.startswith("rnd-wide-")]


@pytest.mark.parametrize("trace", WIDE, ids=[t.stem for t in WIDE])
def test_wide_table_replays_from_its_listings_alone(trace: Path) -> None:
    """A wide table recorded without /proc/net/ip_vs or --nosort (an unseen
    capture may have neither): the boot's service-hash salt is read from the
    sorted listings, and every step then replays as the kernel printed it."""
    scenario = _scenario(trace).read_text().splitlines()
    rnd = uses_random_scheduler(scenario)
    recorded = [d for d in load_trace(trace) if not order_command(d)]
    salt = salt_of(scenario, recorded)
    assert salt is not None
    got = [d for d in replay(scenario, salt) if not order_command(d)]
    assert comparable(got, random_sched=rnd) == comparable(recorded, random_sched=rnd)


def test_enough_random_recordings() -> None:
    """Issue 11: at least 300 random scenarios recorded from the lab kernel."""
    random_traces = [t for t in TRACES if t.parent.parent.name == "random"]
    assert len(random_traces) >= 300
    kinds = {t.stem.split("-")[1] for t in random_traces}
    assert {"mixed", "trash", "wide"} <= kinds


def test_every_scenario_has_its_trace() -> None:
    for d in SETS:
        names = {p.stem for p in (d / "scenarios").glob("*.scn")}
        traced = {p.stem for p in (d / "traces").glob("*.jsonl")}
        assert traced <= names
    # every hand-written lab scenario is recorded (captures count as the record)
    lab = {p.stem for p in (DATA / "lab" / "scenarios").glob("*.scn")}
    captured = {p.name for p in CAPTURES}
    assert lab <= {p.stem for p in (DATA / "lab" / "traces").glob("*.jsonl")} | captured


RANDOM_SCHED = [t for t in TRACES if uses_random_scheduler(_scenario(t).read_text().splitlines())]


@pytest.mark.parametrize("trace", RANDOM_SCHED, ids=[t.stem for t in RANDOM_SCHED])
def test_twos_invariants(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """twos never picks a weight-0 or overloaded server, and schedules a flow
    whenever the kernel did (with a seed of its own, not the kernel's)."""
    watch_twos(monkeypatch)
    scenario = _scenario(trace).read_text().splitlines()
    got = comparable(replay(scenario, seed=11), random_sched=True)
    assert got == comparable(load_trace(trace), random_sched=True)


def _captures(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "commands.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("folder", CAPTURES, ids=[p.name for p in CAPTURES])
def test_captures_match_lab(folder: Path) -> None:
    """Each ``capture NAME CMD`` of the scenario: stdout byte for byte and the exit
    status, under the service-hash salt its /proc/net/ip_vs capture shows."""
    scenario = (DATA / "lab" / "scenarios" / f"{folder.name}.scn").read_text().splitlines()
    recorded = _captures(folder)
    as_steps = [
        {
            "step": "capture",
            "args": f"{c['name']} {c['cmd']}",
            "output": (folder / f"{c['name']}.txt").read_text(),
        }
        for c in recorded
    ]
    for d in as_steps:
        d["output"] = d["output"].removesuffix("\n")
    salt = salt_of(scenario, as_steps)
    assert salt is not None
    got = {d["args"].split()[0]: d for d in replay(scenario, salt) if d.get("step") == "capture"}
    assert len(got) == len(recorded)
    for c in recorded:
        want = (folder / f"{c['name']}.txt").read_text()
        err_file = folder / f"{c['name']}.stderr.txt"
        want_err = err_file.read_text() if err_file.exists() else ""
        g = got[c["name"]]
        have = g["output"] + "\n" if g["output"] else ""
        have_err = g["stderr"] + "\n" if g.get("stderr") else ""
        assert (g["rc"], have, have_err) == (c["rc"], want, want_err), c["name"]


def test_generator_is_deterministic(tmp_path: Path) -> None:
    """``oracle/gen-random.py SEED COUNT DIR`` writes the stored scenarios again."""
    gen = Path(__file__).parent.parent / "oracle" / "gen-random.py"
    for kind, seed in (("mixed", 1000), ("trash", 2000), ("wide", 3000), ("quick", 4000), ("batch", 5000)):
        subprocess.run(
            [sys.executable, str(gen), str(seed), "3", str(tmp_path), "--kind", kind], check=True, timeout=60
        )
        compared = 0
        for k in range(3):
            name = f"rnd-{kind}-{seed + k}.scn"
            stored = DATA / "random" / "scenarios" / name
            if stored.exists():  # (scenarios the lab never recorded are not kept)
                assert (tmp_path / name).read_text() == stored.read_text()
                compared += 1
        assert compared, kind


def test_lab_resolver_names_ports() -> None:
    assert lab_resolver().services_table is not None


def test_cli_replays_a_recorded_boot_with_its_salt() -> None:
    """``lvsadm simulate --svc-hash-salt N`` prints the kernel order of that boot:
    the /proc/net/ip_vs and --nosort outputs of a wide recording, byte for byte."""
    trace = DATA / "random" / "traces" / "rnd-wide-3000.jsonl"
    scenario_path = _scenario(trace)
    recorded = load_trace(trace)
    salt = salt_of(scenario_path.read_text().splitlines(), recorded)
    assert salt is not None and salt % 16 == 0
    proc = subprocess.run(
        [sys.executable, "-m", "lvsd.cli", "simulate", "--svc-hash-salt", str(salt), str(scenario_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "PYLVS_HOSTS": str(DATA / "lab" / "etc-hosts"),
            "PYLVS_SERVICES": str(LAB_SERVICES),
        },
    )
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    order = [
        d for d in recorded if d.get("step") == "sh" and ("--nosort" in d["args"] or "/proc" in d["args"])
    ]
    assert order
    mine = {(d["args"], d["output"]) for d in got if d.get("step") == "sh"}
    assert {(d["args"], d["output"]) for d in order} <= mine
