"""The table-replication codec of ``lvsd --workers`` (lvs.replication): a
worker's copy equals the main table after any sequence of changes, and the
reports carry exactly the growth of the counters."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from lvs.constants import AF_INET, CONN_F_DROUTE, CONN_F_MASQ, IPPROTO_TCP, IPPROTO_UDP
from lvs.ctl import IPVS, DestSpec, ServiceSpec
from lvs.model import ServiceKey
from lvs.replication import (
    apply_dest_report,
    apply_environment,
    apply_service,
    dest_report,
    environment,
    service_record,
    show_live_counts,
)

KEY = ServiceKey(AF_INET, IPPROTO_TCP, 0x0A000001, 80)


def wire(obj: object) -> object:
    """What the socketpair carries: JSON text and back."""
    return json.loads(json.dumps(obj))


def table_view(ipvs: IPVS) -> list[object]:
    return [service_record(svc) for svc in ipvs.services.values()]


# one admin step on the main table: (add/edit dest i with weight w) or (delete dest i) or a service edit
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("dest"),
            st.integers(0, 5),
            st.integers(0, 9),
            st.sampled_from([CONN_F_MASQ, CONN_F_DROUTE]),
        ),
        st.tuples(st.just("del"), st.integers(0, 5)),
        st.tuples(st.just("svc"), st.sampled_from(["rr", "wlc", "sh"]), st.sampled_from([0, 1])),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_a_copy_follows_every_change(ops: list[tuple]) -> None:
    main, copy = IPVS(), IPVS()
    main.add_service(ServiceSpec(KEY, "rr"), 0.0)
    apply_service(copy, wire(service_record(main.get(KEY))), 0.0)
    for op in ops:
        svc = main.get(KEY)
        assert svc is not None
        if op[0] == "dest":
            _, i, w, fwd = op
            spec = DestSpec(AF_INET, 0xC0A80001 + i, 8080, fwd=fwd, weight=w)
            if svc.find_dest(AF_INET, spec.addr, 8080) is None:
                main.add_dest(KEY, spec, 0.0)
            else:
                main.edit_dest(KEY, spec, 0.0)
        elif op[0] == "del":
            if svc.find_dest(AF_INET, 0xC0A80001 + op[1], 8080) is not None:
                main.del_dest(KEY, AF_INET, 0xC0A80001 + op[1], 8080, 0.0)
        else:
            main.edit_service(ServiceSpec(KEY, op[1], op[2]), 0.0)
        apply_service(copy, wire(service_record(main.get(KEY))), 0.0)
        assert table_view(copy) == table_view(main)


def test_environment_round_trip() -> None:
    main, copy = IPVS(), IPVS()
    main.set_timeouts(900, 120, 300)
    main.sysctl.set("expire_nodest_conn", "1")
    msg = wire(environment(main))
    msg["sysctl"]["no_such_sysctl"] = 1  # a newer main: skipped, not fatal
    apply_environment(copy, msg)
    assert environment(copy) == environment(main)


def test_reports_carry_growth_and_live_counts() -> None:
    worker, main = IPVS(), IPVS()
    key = ServiceKey(AF_INET, IPPROTO_UDP, 0x0A000001, 53)
    for ipvs in (worker, main):
        ipvs.add_service(ServiceSpec(key, "rr"), 0.0)
        ipvs.add_dest(key, DestSpec(AF_INET, 0xC0A80001, 53, fwd=CONN_F_MASQ), 0.0)
    wdest = worker.get(key).destinations[0]
    wdest.stats.add(3, 300, 2, 200)
    wdest.activeconns, wdest.inactconns = 4, 1
    rows, last = dest_report(worker, {})
    counts = apply_dest_report(main, wire(rows))
    mdest = main.get(key).destinations[0]
    assert (mdest.stats.inpkts, mdest.stats.outbytes, main.stats.inbytes) == (3, 200, 300)
    wdest.stats.add(1, 10, 0, 0)
    rows, last = dest_report(worker, last)
    apply_dest_report(main, wire(rows))
    assert (mdest.stats.inpkts, mdest.stats.inbytes) == (4, 310)  # the growth only, not the total again
    show_live_counts(main, {key}, [counts, counts])
    assert (mdest.activeconns, mdest.inactconns, mdest.persistconns) == (8, 2, 0)
