"""The sync daemon's wire format against the real kernel (tests/data/sync/):

* kmaster.*: datagrams a kernel 6.1 master sent (v1 then v0; IPv4, IPv6,
  templates, fwmark, NAT/DR/TUN) with its ``ipvsadm -L -c -n`` beside them.
  They decode in pylvs to exactly the entries listed there, re-encode to the
  same bytes, and a pylvs Director fed the same packets sends the same
  records in the same order (the send rules).
* kbackup.*: pylvs-encoded datagrams, good and bad, fed to a kernel backup,
  and what its ``ipvsadm -L -c -n`` showed: a pylvs backup fed the same bytes
  lists the same entries and drops the same datagrams.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from lvs.addr import parse_ip
from lvs.constants import AF_INET, AF_INET6, CONN_F_SYNC, IPPROTO_TCP, IPPROTO_UDP
from lvs.core import Director
from lvs.ctl import IPVS
from lvs.ipvsadm.commands import run as _run
from lvs.ipvsadm.names import FilesResolver
from lvs.ipvsadm.proc import proc_ip_vs_conn_sync
from lvs.model import Flow
from lvs.proto_tcp import ACK, FIN, SYN
from lvs.sync import SyncMaster, SyncParams, decode_message, encode_messages


def ipvsadm(argv: list[str], ipvs: IPVS, now: float, out: io.StringIO, err: io.StringIO) -> int:
    return _run(argv, ipvs, now, out, err, FilesResolver())


DATA = Path(__file__).parent / "data" / "sync"


def steps(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def step_output(name: str, step: str, args: str) -> str:
    for s in steps(name):
        if s.get("step") == step and s.get("args", "").startswith(args):
            return s["output"]
    raise LookupError(args)


def listing_rows(text: str) -> set[tuple[str, ...]]:
    """(proto, state, source, virtual, destination) of ``ipvsadm -L -c -n``."""
    rows = set()
    for line in text.splitlines()[2:]:
        f = line.split()
        rows.add((f[0], f[2], f[3], f[4], f[5]))
    return rows


def _ep(af: int, addr: int, port: int) -> str:
    from lvs.addr import format_ip

    return f"[{format_ip(af, addr)}]:{port}" if af == AF_INET6 else f"{format_ip(af, addr)}:{port}"


def row_of(e) -> tuple[str, ...]:
    proto = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP"}.get(e.protocol, "IP")
    if e.is_template:
        state = ("NONE", "ASSURED")[e.state]
    elif e.protocol == IPPROTO_TCP:
        state = ["NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT", "CLOSE", "CLOSE_WAIT"][e.state]
    else:
        state = "UDP"
    vaddr_af = AF_INET if e.protocol == 0 else e.af
    return (proto, state, _ep(e.af, e.caddr, e.cport), _ep(vaddr_af, e.vaddr, e.vport), _ep(e.af, e.daddr, e.dport))


def _last_rows(entries) -> list[tuple[str, ...]]:
    last = {}
    for e in entries:
        row = row_of(e)
        last[(row[0], row[2], row[3])] = row
    return list(last.values())


def kernel_master_datagrams() -> list[bytes]:
    return [bytes.fromhex(h) for h in step_output("kmaster", "sh", "cat /tmp/sync.hex").split()]


# -- a kernel master's datagrams ------------------------------------------------------
def test_kernel_master_datagrams_decode_to_its_listing():
    v1, v0 = kernel_master_datagrams()
    d1, d0 = decode_message(v1, syncid=9), decode_message(v0, syncid=9)
    assert (d1.version, d1.dropped, d0.version, d0.dropped) == (1, "", 0, "")
    assert len(d1.entries) == v1[4] == 13 and len(d0.entries) == v0[0] == 6
    rows_v1 = listing_rows(step_output("kmaster", "conns", "v1"))
    rows_v0 = listing_rows(step_output("kmaster", "conns", "v0"))
    # the last record of each entry is the entry as the kernel listed it (an
    # entry is sent again at each state change: 40002 went ESTABLISHED,
    # CLOSE_WAIT, TIME_WAIT)
    assert set(_last_rows(d1.entries)) == rows_v1
    assert set(_last_rows(d0.entries)) <= rows_v0 and len(_last_rows(d0.entries)) == 4
    # v1 carries timeouts and fwmarks, v0 neither; IPv6 only in v1
    fw = [e for e in d1.entries if e.fwmark]
    assert fw and all(e.fwmark == 7 for e in fw)
    assert any(e.af == AF_INET6 for e in d1.entries) and all(e.af == AF_INET for e in d0.entries)
    assert {e.timeout for e in d1.entries} == {900, 300, 120, 60} and {e.timeout for e in d0.entries} == {0}
    assert all(e.flags & CONN_F_SYNC for e in d1.entries + d0.entries)


def test_kernel_master_datagrams_reencode_to_the_same_bytes():
    for data in kernel_master_datagrams():
        d = decode_message(data)
        sent = [type(e)(**{**{f: getattr(e, f) for f in e.__dataclass_fields__}, "flags": e.flags & ~CONN_F_SYNC})
                for e in d.entries]  # fmt: skip
        assert encode_messages(sent, d.version, data[1]) == [data]


def _scenario_director() -> tuple[Director, SyncMaster]:
    ipvs = IPVS()
    director = Director(ipvs)
    for line in (DATA / "kmaster.scn").read_text().splitlines():
        if line.startswith("ipvsadm -") and "daemon" not in line and "-L" not in line:
            assert ipvsadm(line.split()[1:], ipvs, 0.0, io.StringIO(), io.StringIO()) == 0, line
    ipvs.sysctl.set("sync_threshold", "2 50")
    master = SyncMaster(syncid=9, params=SyncParams(threshold=2, period=50))
    director.sync = master
    return director, master


def _flow(src: str, dst: str, proto: int, mark: int = 0) -> Flow:
    (ca, cp), (va, vp) = (x.rsplit(":", 1) for x in (src, dst))
    af, c = parse_ip(ca.strip("[]"))
    _, v = parse_ip(va.strip("[]"))
    return Flow(af, proto, c, int(cp), v, int(vp), mark)


class _Replay:
    """Packets through a pylvs Director as they passed the VM's IPVS: there,
    clients and real servers are local processes, so a TCP real server's
    segments pass the director too (they clear NOOUTPUT and move the state
    through the OUTPUT table)."""

    def __init__(self, director: Director, t: float) -> None:
        self.director, self.t = director, t

    def pkt(self, src: str, dst: str, proto: int, direction: str, flags: int = 0, mark: int = 0) -> None:
        self.t += 0.01
        f = _flow(src, dst, proto, mark)
        if direction == "in":
            self.director.process_in(f, self.t, flags, 60)
        else:
            cp = self.director.conns.lookup_in(f.protocol, f.af, f.caddr, f.cport, f.vaddr, f.vport)
            self.director.process_out(cp, self.t, flags, 60)

    def tcp(self, src: str, dst: str) -> None:
        for direction, flags in (("in", SYN), ("out", SYN | ACK), ("in", ACK)):
            self.pkt(src, dst, IPPROTO_TCP, direction, flags)

    def close(self, src: str, dst: str) -> None:
        for direction, flags in (("in", FIN | ACK), ("out", ACK), ("out", FIN | ACK), ("in", ACK)):
            self.pkt(src, dst, IPPROTO_TCP, direction, flags)

    def udp(self, src: str, dst: str, mark: int = 0) -> None:
        for _ in range(2):
            self.pkt(src, dst, IPPROTO_UDP, "in", 0, mark)


def test_pylvs_master_sends_what_the_kernel_sent():
    """kmaster.scn's v1 part through a pylvs Director with a SyncMaster
    (threshold "2 50"): the same datagram, byte for byte: which entries are
    sent at which packet, templates after (and before) their connection,
    state changes at once, flags, timeouts, fwmark, IPv6, padding."""
    director, master = _scenario_director()
    r = _Replay(director, 0.0)
    r.tcp("10.2.0.1:40001", "10.0.0.1:80")
    r.tcp("10.2.0.2:40002", "10.0.0.1:80")
    r.udp("10.2.0.3:40003", "10.0.0.2:53")
    r.udp("10.2.0.4:40004", "10.0.0.4:53")
    r.tcp("10.2.0.5:40005", "10.0.0.3:80")
    r.udp("10.2.0.6:40006", "10.9.0.7:53", mark=7)
    r.tcp("[2001:db8:2::1]:40007", "[2001:db8::1]:443")
    r.close("10.2.0.2:40002", "10.0.0.1:80")
    flush = master.next_flush()
    assert flush is not None and master.due(flush - 0.01) == []  # not yet 2 s old
    assert [d for _, d in master.due(flush)] == [kernel_master_datagrams()[0]]


def test_pylvs_master_v0_sends_what_the_kernel_sent():
    """The v0 part: IPv4 only, no timeout or fwmark, and a template only
    right after its connection."""
    director, master = _scenario_director()
    master.params.version = 0
    r = _Replay(director, 10.0)
    r.tcp("10.2.1.1:41001", "10.0.0.1:80")
    r.udp("10.2.1.3:41003", "10.0.0.2:53")
    r.tcp("10.2.1.5:41005", "10.0.0.3:80")
    r.tcp("[2001:db8:2::2]:41007", "[2001:db8::1]:443")
    r.close("10.2.1.1:41001", "10.0.0.1:80")
    assert [d for _, d in master.due(r.t + 2.0)] == [kernel_master_datagrams()[1]]


# -- a kernel backup fed by pylvs ---------------------------------------------------
def _backup_director() -> Director:
    ipvs = IPVS()
    director = Director(ipvs)
    for line in (DATA / "kbackup.scn").read_text().splitlines():
        if line.startswith("ipvsadm -") and "daemon" not in line and "-L" not in line:
            assert ipvsadm(line.split()[1:], ipvs, 0.0, io.StringIO(), io.StringIO()) == 0, line
    return director


def test_pylvs_backup_lists_what_the_kernel_backup_listed():
    director = _backup_director()
    feed = json.loads((DATA / "kbackup.feed.json").read_text())
    drops = []
    for item in feed:
        d = decode_message(bytes.fromhex(item["hex"]), syncid=9)
        drops.append(d.dropped or (",".join(sorted(d.skipped)) if d.skipped else ""))
        for e in d.entries:
            director.sync_apply(e, 1.0)
    assert drops == ["", "", "", "syncid", "syncid", "size", "option", "", "truncated", "record-version", "option"]
    kernel = step_output("kbackup", "conns", "fed")
    kernel_rows = listing_rows(kernel)
    our_rows = {row_of_conn(cp) for cp in director.conns}
    assert our_rows == kernel_rows
    # the same expiry (the kernel listed 0.5-1.5 s after its feed; we list at once)
    kernel_left = {(f[3], f[4]): _mmss(f[1]) for f in (ln.split() for ln in kernel.splitlines()[2:])}
    for cp in director.conns:
        left = kernel_left[(row_of_conn(cp)[2], row_of_conn(cp)[3])]
        assert cp.timeout - 3 <= left <= cp.timeout, (cp, left)
    # Origin SYNC in /proc/net/ip_vs_conn_sync, as the kernel shows it
    proc = proc_ip_vs_conn_sync(director.ipvs, 1.0)
    kproc = step_output("kbackup", "sh", "cat /proc/net/ip_vs_conn_sync")
    strip = lambda text: sorted(re.sub(r"\s+\d+$", "", ln) for ln in text.splitlines()[1:])  # noqa: E731
    assert strip(proc) == strip(kproc)
    # bound to the backup's own real servers: the same counters as the kernel's -L -n
    ours = io.StringIO()
    ipvsadm(["-L", "-n"], director.ipvs, 1.0, ours, io.StringIO())
    assert ours.getvalue().rstrip("\n") == step_output("kbackup", "ipvsadm", "-L -n").rstrip("\n")


def row_of_conn(cp) -> tuple[str, ...]:
    return (
        {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP"}.get(cp.protocol, "IP"),
        cp.state_name(),
        cp.client(),
        _ep(AF_INET if cp.protocol == 0 else cp.af, cp.vaddr, cp.vport),
        cp.real(),
    )


def _mmss(text: str) -> int:
    m, s = text.split(":")
    return int(m) * 60 + int(s)
