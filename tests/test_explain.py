"""``--explain`` with the arithmetic: for every public scenario and every
scheduler, recompute the numbers of each explanation from the state it
describes (the server rows it carries), check that its choice is the choice
the simulation made, and that the text is plain ASCII words."""

from __future__ import annotations

import re
from functools import cache
from itertools import pairwise
from math import gcd
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from lvs.constants import AF_INET, DEST_F_OVERLOAD, IPPROTO_TCP, SVC_F_SCHED1, SVC_F_SCHED2
from lvs.explain import chosen
from lvs.model import Flow, SchedContext
from lvs.sched import SCHEDULER_NAMES
from lvs.simulate import Simulation
from schedulers.hashing import hsiphash_u32_py
from tests.schedlab import add, make_service

DATA = Path(__file__).parent / "data"
SCENARIOS = sorted(p.stem for p in (DATA / "scenarios").glob("*.scn"))
GOLDEN = 0x61C88647
MH_KEY1 = (2654435761, 2654435761)
MH_SIZE = 4093


@cache
def run(name: str, classic: bool = False) -> list[dict]:
    """The flow lines of a scenario run with --explain (cached: several tests read them)."""
    sim = Simulation(seed=0, explain=True, classic=classic)
    out: list[dict] = []
    sim.run((DATA / "scenarios" / f"{name}.scn").read_text().splitlines(), out.append)
    return [d for d in out if "i" in d]


def prod(nums: list[int]) -> int:
    p = 1
    for n in nums:
        p *= n
    return p


def overhead(row: dict, classic: bool) -> int:
    return row["active"] * 256 + row["inactive"] + (0 if classic else row["active"])


def usable(row: dict) -> bool:
    return row["weight"] > 0 and not row["overloaded"]


def check_reasons(acc: dict, rows: dict[str, dict]) -> None:
    for st in acc["steps"]:
        if st["kind"] != "skip":
            continue
        row = rows[st["server"]]
        reason = st["reason"]
        if reason == "weight 0":
            assert row["weight"] <= 0
        elif reason.startswith("overloaded"):
            assert row["overloaded"]
        elif reason.startswith("unavailable"):
            assert not row["available"]
        elif reason.startswith("full:"):
            assert row["active"] > row["weight"]
            assert reason == f"full: {row['active']} active > weight {row['weight']}"
        elif reason.startswith("weight ") and "< current weight" in reason:
            w, cw = map(int, re.findall(r"\d+", reason))
            assert w == row["weight"] and w < cw
        elif reason.startswith("busy"):
            assert row["active"] > 0
        else:
            raise AssertionError(f"unknown reason {reason!r}")


def check_walk(acc: dict, rows: dict[str, dict]) -> None:
    """Compare steps: operands from the rows, verdict from the products; the
    candidate left standing is the choice (least-connection family)."""
    name, classic = acc["scheduler"], acc["classic"]
    cand = None
    for st in acc["steps"]:
        if st["kind"] == "start":
            cand = st["server"]
            assert usable(rows[cand]) or name in ("lblc", "lblcr")
        elif st["kind"] == "pick":
            cand = st["server"]
        elif st["kind"] == "note":
            cand = None
        elif st["kind"] == "compare":
            assert st["candidate"] == cand
            c, d = rows[st["candidate"]], rows[st["challenger"]]
            if name in ("wlc", "lblc", "lblcr"):
                want_l, want_r = [overhead(c, classic), d["weight"]], [overhead(d, classic), c["weight"]]
            elif name in ("sed", "nq"):
                want_l, want_r = [c["active"] + 1, d["weight"]], [d["active"] + 1, c["weight"]]
            elif name == "lc":
                want_l, want_r = [overhead(c, classic)], [overhead(d, classic)]
            elif name in ("fo", "ovf"):
                want_l, want_r = [d["weight"]], [c["weight"]]
            elif name == "twos":
                want_l, want_r = [overhead(c, classic), d["weight"]], [overhead(d, classic), c["weight"]]
            else:
                raise AssertionError(name)
            assert (st["left"], st["right"]) == (want_l, want_r)
            assert st["replaced"] == (prod(st["left"]) > prod(st["right"]))
            if st["replaced"]:
                cand = st["challenger"]
    if name in ("lc", "wlc", "sed", "fo", "ovf") or (name == "nq" and acc["chosen"]):
        assert acc["chosen"] == cand
    if name in ("lc", "wlc", "sed", "fo", "ovf"):
        # every server is accounted for: skipped, started or compared
        seen = {st.get("server") or st.get("challenger") for st in acc["steps"]}
        assert seen == set(rows)


def check_rr(acc: dict, rows: dict[str, dict]) -> None:
    order = [r["server"] for r in acc["servers"]]
    start = 0 if acc["cursor"] is None else order.index(acc["cursor"]) + 1
    walk = order[start:] + (order[:start] if acc["cursor"] is not None else [])
    want = next((s for s in walk if usable(rows[s])), None)
    assert acc["chosen"] == want


def check_wrr(acc: dict, rows: dict[str, dict]) -> None:
    weights = [r["weight"] for r in acc["servers"]]
    g = 0
    for w in weights:
        if w > 0:
            g = gcd(g, w)
    g = g or 1
    assert acc["di"] == g
    assert acc["max_weight"] == max(weights, default=0)
    assert acc["mw"] == acc["max_weight"] - (g - 1)
    passes = [st["cw"] for st in acc["steps"] if st["kind"] == "pass"]
    if acc["mw"] == 0:
        assert acc["gave_up"] == "every weight is 0" and not passes and acc["chosen"] is None
        return
    assert passes[0] == acc["cw"]
    for a, b in pairwise(passes):
        assert b == a - g or (a - g <= 0 and b == acc["mw"])
    picks = [st for st in acc["steps"] if st["kind"] == "pick"]
    if acc["chosen"]:
        assert picks[-1]["server"] == acc["chosen"]
        assert rows[acc["chosen"]]["weight"] >= passes[-1] == acc["cw_after"]


def sh_layout(servers: list[dict]) -> list[str]:
    table: list[str] = []
    i = 0
    while len(table) < 256:
        row = servers[i % len(servers)]
        table.extend([row["server"]] * max(1, min(row["weight"], 256 - len(table))))
        i += 1
    return table


def check_hash(acc: dict, rows: dict[str, dict]) -> None:
    name = acc["scheduler"]
    servers = acc["servers"]
    if name in ("dh", "sh"):
        bucket = ((acc["hash_input"] * GOLDEN) & 0xFFFFFFFF) >> 24
        assert acc["bucket"] == bucket
        if name == "dh":
            assert acc["owner"] == servers[bucket % len(servers)]["server"]
        else:
            layout = sh_layout(servers)
            assert acc["owner"] == layout[bucket]
            for p in acc["probes"]:
                assert p["bucket"] == (2 * bucket + p["offset"]) % 256
                assert p["owner"] == layout[p["bucket"]]
    else:
        slot = hsiphash_u32_py(acc["hash_input"], *MH_KEY1) % MH_SIZE
        assert acc["slot"] == slot
        assert sum(acc["slots_owned"].values()) == MH_SIZE
        for p in acc["probes"]:
            assert p["roffset"] == (p["offset"] + slot) % MH_SIZE
            want = hsiphash_u32_py((p["roffset"] + acc["hash_input"]) & 0xFFFFFFFF, *MH_KEY1) % MH_SIZE
            assert p["slot"] == want
    owner = acc["owner"]
    if owner is not None and usable(rows[owner]) and (name != "dh" or rows[owner]["available"]):
        assert acc["chosen"] == owner
    elif acc["probes"] if name != "dh" else False:
        last = acc["probes"][-1]
        assert acc["chosen"] == (last["owner"] if last["reason"] is None else None)
        assert all(rows[p["owner"]]["weight"] <= 0 or rows[p["owner"]]["overloaded"] for p in acc["probes"][:-1])
    else:
        assert acc["chosen"] is None


def check_locality(acc: dict, rows: dict[str, dict]) -> None:
    check = acc.get("overload_check")
    if check:
        row = rows.get(check["server"]) or acc["cached_row"]
        assert (check["active"], check["weight"]) == (row["active"], row["weight"])
        below = [r for r in acc["servers"] if r["active"] * 2 < r["weight"]]
        assert check["overloaded"] == (row["active"] > row["weight"] and bool(below))
        if check["overloaded"]:
            assert check["below_half"]["server"] == below[0]["server"]
    check_walk(acc, rows)


def check_twos(acc: dict, rows: dict[str, dict]) -> None:
    eligible = [r for r in acc["servers"] if usable(r)]
    running = []
    total = 0
    for r in eligible:
        total += r["weight"]
        running.append([r["server"], r["weight"], total])
    assert acc["running"] == running
    if not running:
        assert acc["chosen"] is None
        return
    assert acc["total"] == total
    r1, r2 = acc["draws"]
    assert 0 <= r1 <= total and 0 <= r2 <= total
    assert acc["choice1"] == next(s for s, _, c in running if c >= r1)
    assert acc["choice2"] == next(s for s, _, c in running if c >= r2)
    check_walk(acc, rows)
    (cmp,) = [st for st in acc["steps"] if st["kind"] == "compare"]
    assert acc["chosen"] == (acc["choice2"] if cmp["replaced"] else acc["choice1"])


CHECKS = {
    "rr": check_rr,
    "wrr": check_wrr,
    "lc": check_walk,
    "wlc": check_walk,
    "sed": check_walk,
    "nq": check_walk,
    "fo": check_walk,
    "ovf": check_walk,
    "dh": check_hash,
    "sh": check_hash,
    "mh": check_hash,
    "lblc": check_locality,
    "lblcr": check_locality,
    "twos": check_twos,
}


def check_flow(line: dict) -> str | None:
    acc = line["account"]
    text = "\n".join(line["explain"])
    assert text.isascii()
    assert "``" not in text and ":func:" not in text and "\\u" not in text
    assert chosen(acc) == line["real_server"] or (line["real_server"] is None and chosen(acc) is None)
    if acc is None or acc["kind"] != "schedule" or acc.get("scheduler") is None:
        return None
    sacc = acc["scheduler"]
    extra = sacc.get("set_rows", []) + ([sacc["cached_row"]] if "cached_row" in sacc else [])
    rows = {r["server"]: r for r in extra + sacc["servers"]}
    for r in sacc["servers"]:
        assert r["overhead"] == overhead(r, sacc["classic"])
    check_reasons(sacc, rows)
    CHECKS[sacc["scheduler"]](sacc, rows)
    if sacc["chosen"]:
        assert f"chosen: {sacc['chosen']}" in text
    return sacc["scheduler"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_explanations_recompute(name: str) -> None:
    seen = set()
    for line in run(name):
        seen.add(check_flow(line))
    assert seen - {None}


def test_every_scheduler_explained() -> None:
    seen: set[str | None] = set()
    for name in SCENARIOS:
        for line in run(name):
            acc = line["account"]
            if acc and acc.get("scheduler"):
                seen.add(acc["scheduler"]["scheduler"])
    assert seen >= set(SCHEDULER_NAMES)


@pytest.mark.parametrize("name", ["wlc-tcp", "lc-tcp", "lblcr-fwmark-tcp", "twos-tcp"])
def test_classic_overhead(name: str) -> None:
    for line in run(name, classic=True):
        check_flow(line)


def test_explain_text_reads_well() -> None:
    lines = run("wlc-tcp")
    text = lines[3]["explain"]
    assert text[0] == "wlc: overhead = active*256 + active + inactive (active*256 + total)"
    assert "10.1.0.1:80 against 10.1.0.4:80: 1*1 = 1 > 0*5 = 0, so 10.1.0.1:80 replaces 10.1.0.4:80" in text
    assert text[-1] == "chosen: 10.1.0.1:80"
    assert lines[0]["rule"].startswith("wlc: weighted least-connection scheduling (ip_vs_wlc.c)")
    persist = run("rr-persistent-netmask-tcp")
    assert any(x.startswith("persistent service: the template for client net") for d in persist for x in d["explain"])
    mh = run("mh-fallback-udp")
    assert any("fallback probe" in x for d in mh for x in d["explain"])


# -- property: the account is the decision, and asking for it changes nothing ----

SERVER = hs.tuples(hs.integers(0, 5), hs.integers(0, 12), hs.integers(0, 12), hs.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=hs.sampled_from(SCHEDULER_NAMES),
    servers=hs.lists(SERVER, min_size=1, max_size=7),
    warmup=hs.lists(hs.integers(0, 40), max_size=6),
    clients=hs.lists(hs.integers(0, 40), min_size=1, max_size=4),
    flags=hs.integers(0, 3),
    classic=hs.booleans(),
    index=hs.booleans(),
)
def test_account_is_the_decision(name, servers, warmup, clients, flags, classic, index) -> None:  # type: ignore[no-untyped-def]
    import random

    svc = make_service(name, SchedContext(rng=random.Random(5), classic=classic), index_min=0 if index else None)
    svc.flags |= (SVC_F_SCHED1 if flags & 1 else 0) | (SVC_F_SCHED2 if flags & 2 else 0)
    dests = [add(svc, k + 1, w) for k, (w, _, _, _) in enumerate(servers)]

    def flow(c: int) -> Flow:
        # sh/mh hash the client, dh/lblc/lblcr the destination: vary both
        return Flow(AF_INET, IPPROTO_TCP, 0x0A020000 + c, 20000 + c, 0x0A030000 + c % 5, 80, 0)

    for c in warmup:
        svc.scheduler.schedule(flow(c), 1.0)
    for dest, (_, active, inactive, overloaded) in zip(dests, servers):
        dest.activeconns, dest.inactconns = active, inactive
        if overloaded:
            dest.flags |= DEST_F_OVERLOAD
        svc.scheduler.counts_changed(dest)
    for c in clients:
        acc = svc.scheduler.account(flow(c), 2.0)
        again = svc.scheduler.account(flow(c), 2.0)
        assert again == acc  # asking changes nothing
        dest = svc.scheduler.schedule(flow(c), 2.0)
        assert acc["chosen"] == (None if dest is None else dest.endpoint())
        extra = acc.get("set_rows", []) + ([acc["cached_row"]] if "cached_row" in acc else [])
        rows = {r["server"]: r for r in extra + acc["servers"]}
        for r in acc["servers"]:
            assert r["overhead"] == overhead(r, classic)
        check_reasons(acc, rows)
        CHECKS[name](acc, rows)
