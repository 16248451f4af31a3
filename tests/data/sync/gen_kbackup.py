"""Write kbackup.scn: a kernel sync BACKUP fed with datagrams that pylvs
encodes (lvs.sync), good ones and bad ones, so the VM's ``ipvsadm -L -c -n``
shows what the kernel made of each.  The feed is also kept as kbackup.feed.json
for tests/test_sync_wire.py.

    .venv/bin/python tests/data/sync/gen_kbackup.py
    oracle/run-scenario.sh tests/data/sync/kbackup.scn OUT.jsonl   # then copy OUT.* here
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from lvs.addr import parse_ip
from lvs.sync import SyncEntry, encode_messages, record_v1

HERE = Path(__file__).parent


def ip(text: str) -> int:
    return parse_ip(text)[1]


def e4(proto: int, flags: int, state: int, c: str, v: str, d: str, timeout: int = 0, fwmark: int = 0,
       **kw: object) -> SyncEntry:
    (ca, cp), (va, vp), (da, dp) = (x.rsplit(":", 1) for x in (c, v, d))
    af = 10 if ca.startswith("[") else 2
    strip = lambda a: a.strip("[]")  # noqa: E731
    return SyncEntry(af, proto, flags, state, ip(strip(ca)), int(cp), ip(strip(va)), int(vp), ip(strip(da)), int(dp),
                     fwmark, timeout, **kw)  # type: ignore[arg-type]


TCP, UDP, IP = 6, 17, 0
GOOD_V1 = [
    e4(TCP, 0x0003, 1, "10.3.0.1:50001", "10.0.0.1:80", "10.1.0.1:80", 900),
    e4(UDP, 0x0100, 0, "10.3.0.2:50002", "10.0.0.2:53", "10.1.0.2:5353", 300),
    e4(TCP, 0x1183, 1, "10.3.0.5:0", "10.0.0.3:80", "10.1.0.3:80", 300),
    e4(TCP, 0x0103, 4, "10.3.0.5:50005", "10.0.0.3:80", "10.1.0.3:80", 120),
    e4(IP, 0x1183, 0, "10.3.0.6:0", "0.0.0.7:0", "10.1.0.7:0", 120, fwmark=7),
    e4(UDP, 0x0183, 0, "10.3.0.6:50006", "10.9.0.7:53", "10.1.0.7:53", 300, fwmark=7),
    e4(TCP, 0x0600, 1, "10.3.0.8:50008", "10.0.0.8:21", "10.1.0.8:21", 900, seq=(1000, 5, 0, 2000, 0, 0)),
    e4(UDP, 0x0182, 0, "10.3.0.4:50004", "10.0.0.4:53", "10.1.0.4:53", 300),
    e4(TCP, 0x0003, 1, "10.3.0.9:50009", "10.0.0.1:80", "10.1.0.1:80", 1234),
    e4(TCP, 0x0103, 5, "10.3.0.10:50010", "10.0.0.1:80", "10.1.0.1:80", 120),
]
GOOD_V1_B = [
    e4(TCP, 0x0003, 1, "[2001:db8:3::1]:50007", "[2001:db8::1]:443", "[2001:db8:1::1]:443", 900),
    e4(TCP, 0x0103, 7, "[2001:db8:3::2]:50011", "[2001:db8::1]:443", "[2001:db8:1::1]:443", 60),
    e4(UDP, 0x1183, 0, "10.3.0.12:0", "10.0.0.9:5060", "10.1.0.9:5060", 60, pe_name="sip", pe_data=b"call-17@a"),
]
GOOD_V0 = [
    e4(TCP, 0x0003, 1, "10.3.1.1:51001", "10.0.0.1:80", "10.1.0.1:80"),
    e4(UDP, 0x0100, 0, "10.3.1.2:51002", "10.0.0.2:53", "10.1.0.2:5353"),
    e4(TCP, 0x1183, 1, "10.3.1.5:0", "10.0.0.3:80", "10.1.0.3:80"),
    e4(TCP, 0x0003, 1, "10.3.1.5:51005", "10.0.0.3:80", "10.1.0.3:80"),
    e4(TCP, 0x0600, 1, "10.3.1.8:51008", "10.0.0.8:21", "10.1.0.8:21", seq=(7, 1, 0, 9, 0, 0)),
]


def one(e: SyncEntry, syncid: int = 9) -> bytes:
    return encode_messages([e], 1, syncid)[0]


def v1_raw(records: list[bytes], syncid: int = 9, nr: int | None = None, size_delta: int = 0) -> bytes:
    """A v1 datagram from raw records (padding between them), for bad cases."""
    body = b""
    for r in records:
        body += bytes((-len(body)) & 3) + r
    n = len(records) if nr is None else nr
    return struct.pack("!BBHBbH", 0, syncid, 8 + len(body) + size_delta, n, 1, 0) + body


def with_option(rec: bytes, opt: bytes) -> bytes:
    size = (rec[2] << 8 | rec[3]) + len(opt)
    return rec[:2] + struct.pack("!H", size) + rec[4:] + opt


def feed() -> list[tuple[str, bytes]]:
    bad = lambda n: e4(TCP, 0x0003, 1, f"10.3.2.{n}:5200{n}", "10.0.0.1:80", "10.1.0.1:80", 900)  # noqa: E731
    rec = lambda n: record_v1(bad(n))  # noqa: E731
    ver2 = rec(6)
    ver2 = ver2[:2] + bytes((ver2[2] | 0x10,)) + ver2[3:]
    out = [
        ("good v1 IPv4", encode_messages(GOOD_V1, 1, 9)[0]),
        ("good v1 IPv6 + sip template", encode_messages(GOOD_V1_B, 1, 9)[0]),
        ("good v0", encode_messages(GOOD_V0, 0, 9)[0]),
        ("syncid 0 sent to a syncid-9 backup: dropped", one(bad(7), syncid=0)),
        ("wrong syncid 8: dropped", one(bad(1), syncid=8)),
        ("size field 4 too big: dropped", v1_raw([rec(2)], size_delta=4)),
        ("unknown mandatory option: that record skipped, the next kept",
         v1_raw([with_option(rec(3), b"\x05\x02ab"), rec(4)])),
        ("unknown optional option (0x45): kept", v1_raw([with_option(rec(8), b"\x45\x02ab")])),
        ("nr_conns 2, one record: the first kept", v1_raw([rec(5)], nr=2)),
        ("record version 1: dropped", v1_raw([ver2])),
        ("zero-length option: dropped", v1_raw([with_option(rec(9), b"\x01\x00")])),
    ]
    return out


SERVICES = """\
ipvsadm -A -t 10.0.0.1:80 -s rr
ipvsadm -a -t 10.0.0.1:80 -r 10.1.0.1:80 -g
ipvsadm -A -u 10.0.0.2:53 -s rr
ipvsadm -a -u 10.0.0.2:53 -r 10.1.0.2:5353 -m
ipvsadm -A -u 10.0.0.4:53 -s rr
ipvsadm -a -u 10.0.0.4:53 -r 10.1.0.4:53 -i
ipvsadm -A -t 10.0.0.3:80 -s rr -p 300
ipvsadm -a -t 10.0.0.3:80 -r 10.1.0.3:80 -g
ipvsadm -A -f 7 -s rr -p 120
ipvsadm -a -f 7 -r 10.1.0.7:0 -g
ipvsadm -A -t 10.0.0.8:21 -s rr
ipvsadm -a -t 10.0.0.8:21 -r 10.1.0.8:21 -m
ipvsadm -A -u 10.0.0.9:5060 -s rr -p 60 --pe sip
ipvsadm -a -u 10.0.0.9:5060 -r 10.1.0.9:5060 -g
ipvsadm -A -t [2001:db8::1]:443 -s rr
ipvsadm -a -t [2001:db8::1]:443 -r [2001:db8:1::1]:443 -g
"""


def main() -> None:
    items = feed()
    lines = [
        "# Kernel IPVS as sync BACKUP (syncid 9) fed with pylvs-encoded datagrams; written by gen_kbackup.py",
        "addr 192.0.2.2/24",
        SERVICES.rstrip("\n"),
        "ipvsadm --start-daemon backup --mcast-interface dummy0 --syncid 9",
        "sleep 0.5",
    ]
    for label, data in items:
        lines.append(f"sh echo {label.replace(':', ' -').replace('(', '').replace(')', '')}")
        lines.append(f"sh /bin/ipvslab mcast dummy0 224.0.0.81 8848 {data.hex()}")
    lines += ["sleep 0.5", "conns fed", "ipvsadm -L -n", "ipvsadm -L --daemon", "sh cat /proc/net/ip_vs_conn_sync"]
    (HERE / "kbackup.scn").write_text("\n".join(lines) + "\n")
    (HERE / "kbackup.feed.json").write_text(
        json.dumps([{"label": lbl, "hex": d.hex()} for lbl, d in items], indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
