"""Sync stream: a master encodes 50,000 connections/s and a backup applies
them, each process on its own core (issue 15, point 4).

The master process (``taskset -c MASTER_CPU``) holds a Director with one DR
service and CONNS connection entries made through ``process_in`` (SYN, ACK,
ACK: ESTABLISHED at the 3rd packet, sync_threshold 3); during the run it
offers RATE of them per second to its :class:`lvs.sync.SyncMaster` (the
call ``process_in`` makes for the packet that hits the threshold), takes the
finished datagrams and sends them over UDP to the backup.  The backup
process (``taskset -c BACKUP_CPU``) is lvsd's receive path,
:meth:`lvsd.syncd.SyncDaemons.receive` (decode, then
``Director.sync_apply`` binding each entry to its own real server), on a
socket with lvsd's 4 MB receive buffer.

Reported per side: CPU time (user + system, ``getrusage``) for the run, per
datagram and per connection; the share of one core it used at the offered
rate; the backup's datagrams received versus sent (a backup that falls
behind overflows its socket and loses datagrams) and entries in its table.

    .venv/bin/python benchmarks/sync_stream.py [--rate 50000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvs.core import Director  # noqa: E402
from lvs.ctl import IPVS  # noqa: E402
from lvs.ipvsadm.commands import run as ipvsadm  # noqa: E402
from lvs.ipvsadm.names import FilesResolver  # noqa: E402
from lvs.model import Flow  # noqa: E402
from lvs.proto_tcp import ACK, SYN  # noqa: E402
from lvs.sync import SyncMaster, SyncParams  # noqa: E402

VIP = 0x0A000064
END = b"END"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def director() -> Director:
    import io

    ipvs = IPVS()
    for cmd in ("-A -t 10.0.0.100:80 -s rr", "-a -t 10.0.0.100:80 -r 172.16.0.21:80 -g",
                "-a -t 10.0.0.100:80 -r 172.16.0.22:80 -g"):  # fmt: skip
        assert ipvsadm(cmd.split(), ipvs, 0.0, io.StringIO(), io.StringIO(), FilesResolver()) == 0
    return Director(ipvs)


def master(port: int, rate: int, seconds: float) -> dict:
    d = director()
    n = int(rate * seconds)
    conns = []
    for i in range(n):
        f = Flow(socket.AF_INET, 6, 0x0B000000 + i // 60000, 1024 + i % 60000, VIP, 80)
        d.process_in(f, 0.0, SYN)
        conns.append(d.process_in(f, 0.0, ACK).conn)
    m = SyncMaster(1, params=SyncParams())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect(("127.0.0.1", port))
    sent = 0
    tick = 0.01
    per_tick = int(rate * tick)
    c0, t0 = cpu(), time.monotonic()
    i = 0
    while i < n:
        target = t0 + (i // per_tick) * tick
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic() - t0
        for cp in conns[i : i + per_tick]:
            m.sync_conn(cp, 3, now)
        i += per_tick
        for _, data in m.due(now):
            sock.send(data)
            sent += 1
    for _, data in m.due(1e9):
        sock.send(data)
        sent += 1
    wall, used = time.monotonic() - t0, cpu() - c0
    time.sleep(0.5)
    sock.send(END)
    return {
        "side": "master", "conns": n, "datagrams": sent, "wall_s": round(wall, 3), "cpu_s": round(used, 3),
        "us_per_conn": round(used / n * 1e6, 2), "us_per_datagram": round(used / sent * 1e6, 1),
        "core_share": round(used / wall, 3), "achieved_per_s": round(n / wall),
    }  # fmt: skip


def backup(port: int, ready: Path) -> dict:
    from lvsd.syncd import BACKUP_RCVBUF, SO_RCVBUFFORCE, SyncDaemons

    d = director()
    t0 = time.monotonic()
    syncd = SyncDaemons(d, lambda: time.monotonic() - t0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BACKUP_RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BACKUP_RCVBUF)
    sock.bind(("127.0.0.1", port))
    ready.write_text("ready")
    got = 0
    first = c0 = None
    while True:
        data = sock.recv(65535)
        if data == END:
            break
        if first is None:
            first, c0 = time.monotonic(), cpu()
        syncd.receive(data, 1)
        got += 1
    wall = time.monotonic() - (first or time.monotonic())
    used = cpu() - (c0 or cpu())
    n = len(d.conns)
    return {
        "side": "backup", "datagrams": got, "entries": n, "wall_s": round(wall, 3), "cpu_s": round(used, 3),
        "us_per_conn": round(used / max(n, 1) * 1e6, 2),
        "us_per_datagram": round(used / max(got, 1) * 1e6, 1),
        "core_share": round(used / max(wall, 1e-9), 3), "counters": dict(syncd.counters),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=50000, help="connections per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--master-cpu", default="0")
    ap.add_argument("--backup-cpu", default="1")
    ap.add_argument("--fifo", type=int, default=0, help="run both under SCHED_FIFO at this priority (root)")
    ap.add_argument("--role", choices=["master", "backup"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready", default="")
    a = ap.parse_args()
    if a.role == "master":
        print(json.dumps(master(a.port, a.rate, a.seconds)))
        return 0
    if a.role == "backup":
        print(json.dumps(backup(a.port, Path(a.ready))))
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = Path(f"/tmp/pylvs-sync-bench-{os.getpid()}.ready")
    me = [sys.executable, __file__, "--port", str(port), "--rate", str(a.rate), "--seconds", str(a.seconds)]
    fifo = ["chrt", "-f", str(a.fifo)] if a.fifo else []
    b = subprocess.Popen(
        [*fifo, "taskset", "-c", a.backup_cpu, *me, "--role", "backup", "--ready", str(ready)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    ready.unlink(missing_ok=True)
    m = subprocess.run([*fifo, "taskset", "-c", a.master_cpu, *me, "--role", "master"], capture_output=True,
                       text=True, timeout=600, check=True)  # fmt: skip
    out, _ = b.communicate(timeout=60)
    rm, rb = json.loads(m.stdout), json.loads(out)
    print(json.dumps(rm))
    print(json.dumps(rb))
    ok = rb["datagrams"] == rm["datagrams"] and rb["entries"] == rm["conns"]
    print(f"offered {a.rate}/s for {a.seconds} s (reached {rm['achieved_per_s']}/s): "
          f"master {rm['us_per_conn']} us/conn ({rm['us_per_datagram']} us/datagram, "
          f"{rm['core_share']:.0%} of its core); backup {rb['us_per_conn']} us/conn "
          f"({rb['us_per_datagram']} us/datagram, {rb['core_share']:.0%} of its core); "
          f"datagrams {rb['datagrams']}/{rm['datagrams']}, entries {rb['entries']}/{rm['conns']}: "
          f"{'kept up' if ok else 'FELL BEHIND'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
