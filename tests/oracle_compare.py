"""Compare a scenario's replay through ``lvs.simulate`` with the lab kernel's trace.

Used by tests/test_random_replay.py and by hand (``python -m tests.oracle_compare TRACE...``
prints the first difference of each).  What is compared, line by line:

* every flow's real server (``null`` when the kernel made no entry);
* every ``ipvsadm`` step's exit status and output;
* both halves of every snapshot (``-L -n`` and ``-L -n --stats``: the generator lets the
  rate estimator run before each one, so the counters are the kernel's), except the
  OutPkts/OutBytes columns (see :func:`without_out_counters`);
* every ``sh ipvsadm ...`` / ``sh cat /proc/net/ip_vs`` step's status and output.

The kernel orders its service hash table with ``(size_t)netns_ipvs >> 8``, which changes
from boot to boot; :func:`salt_of` finds the value a recorded run had from its
``/proc/net/ip_vs`` or ``--nosort`` output (any candidate that explains them all).
twos draws random numbers: its flows are checked for the invariants only (never a
weight-0 or overloaded server) and everything its choices feed (counters) is skipped.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

import pytest

from lvs.ipvsadm.names import FilesResolver
from lvs.simulate import Simulation

#: the step kinds whose output the emulation must reproduce exactly
EXACT_SH = ("ipvsadm", "cat /proc/net/ip_vs")


def load_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparable(lines: list[dict], *, random_sched: bool = False) -> list[tuple]:
    out: list[tuple] = []
    for d in lines:
        if "i" in d:
            if random_sched:
                out.append(("flow", d["i"], d["proto"], tuple(d["flow"]), d["vip"]))
            else:
                out.append(("flow", d["i"], d["proto"], tuple(d["flow"]), d["vip"], d["real_server"]))
        elif d.get("step") == "ipvsadm":
            out.append(("ipvsadm", d["args"], d["rc"], d["output"]))
        elif d.get("step") == "snapshot" and not random_sched:
            out.append(("snapshot", d["args"], without_out_counters(d["output"])))
        elif d.get("step") == "sh" and d["args"].startswith(EXACT_SH):
            out.append(("sh", d["args"], d["rc"], d["output"]))
    return out


def without_out_counters(snapshot: str) -> str:
    """A snapshot with the OutPkts and OutBytes columns of its ``--stats`` half
    blanked.  They count the real servers' segments, and whether a listener
    acknowledges the client's FIN on its own or together with its own FIN depends
    on how fast the listener process runs (delayed ACK): the lab shows both."""
    banner = "IP Virtual Server version"
    second = snapshot.find(banner, len(banner))
    if second < 0:
        return snapshot
    head, stats = snapshot[:second], snapshot[second:]
    rows = []
    for line in stats.split("\n"):
        cols = line.split()
        if len(cols) >= 6 and cols[-1].isdigit() and cols[-2].isdigit():
            conns, inpkts, _, inbytes, _ = cols[-5:]
            line = " ".join([*cols[:-5], conns, inpkts, "-", inbytes, "-"])
        rows.append(line)
    return head + "\n".join(rows)


#: what the lab VM's resolver knows: its /etc/hosts, and the /etc/services setup.sh copied
LAB_HOSTS = (Path(__file__).parent / "data" / "lab" / "etc-hosts").read_text()
LAB_SERVICES = Path(__file__).parent / "data" / "lab" / "etc-services"


_RESOLVER: list[FilesResolver] = []


def lab_resolver() -> FilesResolver:
    if not _RESOLVER:
        _RESOLVER.append(FilesResolver(LAB_HOSTS, LAB_SERVICES.read_text()))
    return _RESOLVER[0]


def replay(scenario: list[str], salt: int | None = None, seed: int = 0) -> list[dict]:
    sim = Simulation(seed=seed, svc_hash_salt=salt, resolver=lab_resolver())
    got: list[dict] = []
    sim.run(scenario, got.append)
    return got


def order_command(d: dict) -> str | None:
    """The command of an ``sh`` or ``capture`` step whose output shows the kernel's
    service order (``cat /proc/net/ip_vs``, anything with ``--nosort``), else None."""
    if d.get("step") == "sh":
        cmd = d["args"]
    elif d.get("step") == "capture":
        cmd = d["args"].partition(" ")[2]
    else:
        return None
    return cmd if cmd == "cat /proc/net/ip_vs" or "--nosort" in cmd else None


def _listing_command(d: dict) -> str | None:
    """The command of an ``ipvsadm -L``/``-l``/``-S`` step or capture: its sorted
    output still depends on the salt, through the input order of libipvs's
    non-transitive sort."""
    if d.get("step") in ("ipvsadm", "sh"):
        cmd = d["args"] if d["step"] == "sh" else "ipvsadm " + d["args"]
    elif d.get("step") == "capture":
        cmd = d["args"].partition(" ")[2]
    else:
        return None
    words = cmd.split()
    if len(words) < 2 or words[0] != "ipvsadm":
        return None
    if words[1] not in ("-L", "-l", "-S", "--list", "--save"):
        return None
    # counters, rates, entries and timers are no evidence of the order
    volatile = {"--stats", "--rate", "--exact", "-c", "--connection", "--timeout", "--daemon"}
    return None if volatile.intersection(words) else cmd


def salt_of(scenario: list[str], recorded: list[dict]) -> int | None:
    """The service-hash salt of the recorded boot: the first value (0..255) under
    which every ``cat /proc/net/ip_vs`` and ``--nosort`` step (``sh`` or
    ``capture``) of the replay prints what the kernel printed; a record with none
    of those is read from its ipvsadm listings instead (a wide table's sorted
    order shows the salt too). None if the record has no such step or no value fits."""
    select = order_command
    wanted = [d["output"] for d in recorded if select(d)]
    if not wanted:
        select = _listing_command
        wanted = [d["output"] for d in recorded if select(d)]
    if not wanted:
        return None
    sim = Simulation(resolver=lab_resolver())
    candidates = set(range(256))
    seen = 0

    def emit(d: dict) -> None:
        nonlocal seen, candidates
        cmd = select(d)
        if cmd is None or seen >= len(wanted):
            return
        want = wanted[seen]
        seen += 1
        fits = set()
        for salt in candidates:
            sim.ipvs.svc_hash_salt = salt
            result = sim.command(cmd.split())
            if result is None:
                continue
            # sh and ipvsadm steps log stdout and stderr together, captures stdout alone
            text = result[1] + result[2] if d["step"] != "capture" else result[1]
            if text.removesuffix("\n") == want:
                fits.add(salt)
        candidates = fits

    sim.run(scenario, emit)
    # netns_ipvs is page-aligned, so the real value is a multiple of 16 (bits 12-15 of
    # its address); others may fit the outputs as well
    return min(candidates, key=lambda v: (v % 16 != 0, v)) if candidates else None


def uses_random_scheduler(scenario: list[str]) -> bool:
    return any(" twos" in line for line in scenario if line.startswith("ipvsadm"))


def first_difference(scenario_path: Path, trace_path: Path) -> str | None:
    """None if the replay matches the trace, else a description of the first difference."""
    scenario = scenario_path.read_text().splitlines()
    trace = load_trace(trace_path)
    salt = salt_of(scenario, trace)
    rnd = uses_random_scheduler(scenario)
    got = comparable(replay(scenario, salt), random_sched=rnd)
    want = comparable(trace, random_sched=rnd)
    for k, (g, w) in enumerate(zip(got, want)):
        if g != w:
            if g[:-1] == w[:-1] and isinstance(g[-1], str) and isinstance(w[-1], str):
                lines = difflib.unified_diff(
                    w[-1].splitlines(), g[-1].splitlines(), "kernel", "emulation", lineterm=""
                )
                return f"item {k} {w[:-1]!r}:\n" + "\n".join(lines)
            return f"item {k}: kernel {w!r}\n        emulation {g!r}"
    if len(got) != len(want):
        return f"length: kernel {len(want)} items, emulation {len(got)}"
    return None


def main(argv: list[str]) -> int:
    bad = 0
    for t in argv:
        trace = Path(t)
        scn = trace.parent.parent / "scenarios" / (trace.name.removesuffix(".jsonl") + ".scn")
        diff = first_difference(scn, trace)
        if diff:
            bad += 1
            print(f"{trace.stem}: DIFF {diff}")
        else:
            print(f"{trace.stem}: ok")
    print(f"{bad} of {len(argv)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


def watch_twos(monkeypatch: pytest.MonkeyPatch) -> list:
    """Check twos' kernel invariants on every decision of the test (never a
    weight-0 or overloaded server; None only when every server is one of
    those); returns the list of picks, filled as the test runs."""
    from lvs.constants import DEST_F_OVERLOAD
    from lvs.sched import get_scheduler

    cls = get_scheduler("twos")
    assert cls is not None
    original = cls.schedule
    picks: list = []

    def checked(self, flow, now):  # type: ignore[no-untyped-def]
        dest = original(self, flow, now)
        if dest is not None:
            assert dest.weight > 0 and not dest.flags & DEST_F_OVERLOAD
            picks.append(dest)
        else:
            assert all(d.weight == 0 or d.flags & DEST_F_OVERLOAD for d in self.svc.destinations)
        return dest

    monkeypatch.setattr(cls, "schedule", checked)
    return picks
