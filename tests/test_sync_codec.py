"""lvs.sync: the codec round-trips (hypothesis), the parser is defensive
(any bytes: counted and dropped, never an exception, never a corrupt
table), and the master's buffers and rules."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvs.constants import AF_INET, CONN_F_SYNC, IPPROTO_TCP, IPPROTO_UDP
from lvs.core import Director
from lvs.ctl import IPVS
from lvs.ipvsadm.commands import run as _run
from lvs.ipvsadm.names import FilesResolver
from lvs.model import Flow
from lvs.proto_tcp import ACK, FIN, SYN
from lvs.sync import (
    DEFAULT_MAXLEN,
    SyncEntry,
    SyncMaster,
    SyncParams,
    decode_message,
    encode_messages,
)
from tests.synclab import entries


def ipvsadm(argv: list[str], ipvs: IPVS, now: float, out: io.StringIO, err: io.StringIO) -> int:
    return _run(argv, ipvs, now, out, err, FilesResolver())


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def synced(e: SyncEntry) -> SyncEntry:
    return SyncEntry(**{**{f: getattr(e, f) for f in e.__dataclass_fields__}, "flags": e.flags | CONN_F_SYNC})


@SETTINGS
@given(st.lists(entries(), max_size=60), st.integers(1, 255), st.sampled_from([DEFAULT_MAXLEN, 600, 9000]))
def test_v1_round_trip(batch: list[SyncEntry], syncid: int, maxlen: int) -> None:
    out = []
    for msg in encode_messages(batch, 1, syncid, maxlen):
        assert len(msg) <= maxlen
        d = decode_message(msg, syncid)
        assert d.version == 1 and d.dropped == "" and not d.skipped
        out += d.entries
    assert out == [synced(e) for e in batch]


@SETTINGS
@given(st.lists(entries(v0=True), max_size=80), st.integers(0, 255))
def test_v0_round_trip(batch: list[SyncEntry], syncid: int) -> None:
    out = []
    for msg in encode_messages(batch, 0, syncid):
        assert len(msg) <= DEFAULT_MAXLEN
        d = decode_message(msg, 0)
        assert d.version == 0 and d.dropped == ""
        out += d.entries
    assert out == [synced(e) for e in batch]


def _director() -> Director:
    ipvs = IPVS()
    for cmd in ("-A -t 10.0.0.1:80 -s rr -p 60", "-a -t 10.0.0.1:80 -r 10.1.0.1:80 -g",
                "-A -u 10.0.0.2:53 -s rr", "-a -u 10.0.0.2:53 -r 10.1.0.2:53 -m"):  # fmt: skip
        assert ipvsadm(cmd.split(), ipvs, 0.0, io.StringIO(), io.StringIO()) == 0
    return Director(ipvs)


_DIRECTOR = _director()


@SETTINGS
@given(st.one_of(
    st.binary(max_size=300),
    st.lists(entries(), min_size=1, max_size=5).flatmap(
        lambda b: st.tuples(st.just(encode_messages(b, 1, 9)[0]), st.integers(0, 400), st.binary(max_size=4))
    ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]):]),
))  # fmt: skip
def test_any_bytes_are_counted_and_dropped_never_raised(data: bytes) -> None:
    """Random bytes and damaged real messages: decode_message never raises;
    whatever it accepts is applied to a live table without error, and the
    table's counters stay sane."""
    d = decode_message(data, 9)
    assert d.dropped in ("", "short", "size", "syncid", "truncated", "record-version", "type", "option")
    for e in d.entries:
        assert e.flags & CONN_F_SYNC
        _DIRECTOR.sync_apply(e, 1.0)
    for svc in _DIRECTOR.ipvs.services.values():
        for dest in svc.destinations:
            assert dest.activeconns >= 0 and dest.inactconns >= 0 and dest.persistconns >= 0


def test_named_drops() -> None:
    good = encode_messages([SyncEntry(AF_INET, 6, 3, 1, 1, 2, 3, 4, 5, 6, 0, 900)], 1, 9)[0]
    assert decode_message(good[:3]).dropped == "short"
    assert decode_message(good + b"\0").dropped == "size"
    assert decode_message(good, 8).dropped == "syncid"
    assert decode_message(good, 0).entries and decode_message(good, 9).entries
    wrong_version = good[:5] + b"\x02" + good[6:]
    assert decode_message(wrong_version).version == 0  # read as v0, as the kernel does
    assert decode_message(good[:8] + b"\x01" + good[9:]).dropped == "truncated"  # IPv6 in 36 bytes
    assert decode_message(good[:8] + b"\x02" + good[9:]).dropped == "type"
    unknown_proto = good[:9] + b"\x63" + good[10:]
    assert decode_message(unknown_proto).skipped["protocol"] == 1


# -- the master -----------------------------------------------------------------------
def _flow(c: int, proto: int = IPPROTO_TCP, vaddr: int = 0x0A000001, vport: int = 80) -> Flow:
    return Flow(AF_INET, proto, 0x0A020000 + c, 40000 + c, vaddr, vport)


def test_state_changes_go_at_once_established_at_the_threshold() -> None:
    d = _director()
    m = d.sync = SyncMaster(9)
    d.process_in(_flow(1), 0.0, SYN)  # SYN_RECV: never sent; its template is
    assert [e.is_template for e in decode_message(m.buffers[0].message()).entries] == [True]
    for _ in range(2):
        d.process_in(_flow(1), 0.1, ACK)  # ESTABLISHED at packets 2, 3 (threshold 3)
    recs = decode_message(m.buffers[0].message()).entries
    assert [(e.is_template, e.state) for e in recs] == [(True, 0), (True, 1), (False, 1), (True, 1)]
    d.process_in(_flow(1), 0.2, FIN | ACK)  # a change to FIN_WAIT: at once, packet 4
    assert decode_message(m.buffers[0].message()).entries[-2].state == 4
    conn_records = []
    for k in range(5, 104):
        before = m.sent_records
        d.process_in(_flow(1), 0.3, ACK)
        conn_records += [k] * (m.sent_records - before - 1)  # the template goes every time
    # then only every sync_period (50) packets at sync_threshold: 53, 103
    assert conn_records == [53, 103]


def test_persist_mode_sends_templates_only_and_buffers_fill_then_flush() -> None:
    d = _director()
    m = d.sync = SyncMaster(9, params=SyncParams(threshold=1, persist_mode=1))
    for c in range(200):
        d.process_in(_flow(c), 0.0, SYN)
        d.process_in(_flow(c), 0.0, ACK)
    msgs = [data for _, data in m.due(0.0)]  # full buffers go at once
    assert msgs and all(len(x) <= DEFAULT_MAXLEN for x in msgs)
    rest = m.due(2.0)
    got = [e for x in msgs + [data for _, data in rest] for e in decode_message(x).entries]
    assert got and all(e.is_template for e in got)
    assert m.due(5.0) == [] and m.next_flush() is None


def test_udp_batches_through_account_in_hit_the_threshold() -> None:
    d = _director()
    m = d.sync = SyncMaster(9)
    f = _flow(1, IPPROTO_UDP, 0x0A000002, 53)
    d.process_in(f, 0.0)
    cp = d.conns.lookup_in(IPPROTO_UDP, AF_INET, f.caddr, f.cport, f.vaddr, f.vport)
    d.account_in(cp, 0.1, 10, 600)  # packets 2..11 include packet 3
    assert [e.cport for e in decode_message(m.buffers[0].message()).entries] == [40001]


def test_refresh_period_and_retries_hold_back_resends() -> None:
    d = _director()
    m = d.sync = SyncMaster(9, params=SyncParams(threshold=3, period=0, refresh_period=60, retries=1))
    f = _flow(1, IPPROTO_UDP, 0x0A000002, 53)
    sent = []
    for k in range(40):
        before = m.sent_records
        d.process_in(f, k * 1.0)
        if m.sent_records > before:
            sent.append(k)
    # with a refresh period and no sync_period the packet count does not
    # matter: sent at once (t=0); then the expiry has moved < 60 s: one
    # retry (sync_retries 1) 60/8 s later; then nothing until it moves 60 s
    assert sent == [0, 8]
    assert m.needed(d.conns.lookup_in(17, AF_INET, f.caddr, f.cport, f.vaddr, f.vport), 99, 70.0)


def test_state_file_keeps_sync_daemons_and_the_period() -> None:
    """lvs.state: the running sync daemons and sync_threshold's period go
    into lvsd's state file and come back (a crashed or restarted lvsd starts
    them again); a damaged daemon entry is a StateError."""
    import json

    import pytest

    from lvs.ctl import SyncDaemon
    from lvs.state import StateError, parse, render, restore_sync, snapshot

    ipvs = IPVS()
    ipvs.sysctl.set("sync_threshold", "2 20")
    ipvs.start_daemon(SyncDaemon("master", "eth1", 7, 0, "", 8848, 1))
    ipvs.start_daemon(SyncDaemon("backup", "eth1", 7, 1400, "ff02::81", 9000, 1))
    text = render(snapshot(ipvs, [], 1))
    again = IPVS()
    state = parse(text)
    again.sysctl.set("sync_threshold", str(state.sysctl["sync_threshold"]))
    assert restore_sync(again, state) == []
    assert again.daemons == ipvs.daemons
    assert (again.sysctl.sync_threshold, again.sysctl.sync_period) == (2, 20)
    assert restore_sync(again, state)[0].endswith("Daemon has already run")
    obj = json.loads(text)
    obj["daemons"][0]["syncid"] = "7"
    with pytest.raises(StateError):
        parse(json.dumps(obj))
