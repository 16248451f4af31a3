"""``lvsd --workers N`` seen as one director: the workers' connection entries
and live counts in every listing, and a worker that dies is replaced.

Real lvsd processes, real sockets on loopback; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import tempfile
import time
from typing import Any

import pytest

from .helpers import running_lvsd
from .natlab import Adm, Backends, free_port, greet, udp_ask, wait_until

pytestmark = pytest.mark.timeout(120)


def worker_pids(adm: Adm) -> dict[int, int]:
    """{worker index: pid} from lvsadm --status."""
    planes = " ".join(adm.status()["planes"])
    return {int(i): int(p) for i, p in re.findall(r"\bw(\d+) pid (\d+)", planes)}


def replaced(adm: Adm, index: int, old: int) -> dict[int, int] | None:
    """The worker pids once worker ``index`` runs with another pid than ``old``."""
    now = worker_pids(adm)
    return now if now.get(index) not in (None, old) else None


def all_serving(adm: Adm, what: str) -> bool:
    planes = " ".join(adm.status()["planes"])
    return planes.count(what) == 2


def counts(adm: Adm, kind: str, vip: str) -> tuple[int, int]:
    """(ActiveConn, InActConn) summed over the real servers of one service."""
    out = adm("-L", "-n", kind, vip)
    rows = re.findall(r"^\s+->\s+\S+\s+\w+\s+\d+\s+(\d+)\s+(\d+)", out, re.M)
    assert rows, out
    return sum(int(x) for x, _ in rows), sum(int(y) for _, y in rows)


def stats_row(adm: Adm, proto: str, vip: str) -> list[int]:
    out = adm("-L", "-n", "--stats", "--exact")
    m = re.search(rf"{proto}  {re.escape(vip)}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out)
    assert m, out
    return [int(x) for x in m.groups()]


def test_workers_entries_and_counts_are_listed_as_one_directors(backends: Backends) -> None:
    a, b = backends.greeter(), backends.greeter()
    echo = backends.udp_echo()
    tport, uport = free_port(), free_port(socket.SOCK_DGRAM)
    tvip, uvip = f"127.0.0.1:{tport}", f"127.0.0.1:{uport}"
    with running_lvsd("--workers", "2") as name:
        adm = Adm(name)
        adm("-A", "-t", tvip, "-s", "rr")
        adm("-a", "-t", tvip, "-r", f"127.0.0.1:{a}", "-m")
        adm("-a", "-t", tvip, "-r", f"127.0.0.1:{b}", "-m")
        adm("-A", "-u", uvip, "-s", "rr")
        adm("-a", "-u", uvip, "-r", f"127.0.0.1:{echo}", "-m")
        wait_until(lambda: all_serving(adm, "1 TCP and 1 UDP services served"), 10)

        socks = [greet("127.0.0.1", tport) for _ in range(20)]
        tcp_clients = {f"127.0.0.1:{s.getsockname()[1]}" for s, _ in socks}
        usocks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        for s in usocks:
            assert udp_ask("127.0.0.1", uport, b"ping", s).endswith(b"ping")
        udp_clients = {f"127.0.0.1:{s.getsockname()[1]}" for s in usocks}

        # no waiting: a listing asks the workers at the moment it is made
        rows = adm.conns()
        tcp_rows = [r for r in rows if r[0] == "TCP"]
        udp_rows = [r for r in rows if r[0] == "UDP"]
        assert {r[3] for r in tcp_rows} == tcp_clients and len(tcp_rows) == 20, rows
        assert {r[2] for r in tcp_rows} == {"ESTABLISHED"}
        assert {r[4] for r in tcp_rows} == {tvip}
        assert {r[3] for r in udp_rows} == udp_clients and len(udp_rows) == 4, rows
        assert {r[4] for r in udp_rows} == {uvip} and {r[5] for r in udp_rows} == {f"127.0.0.1:{echo}"}
        # the expiry column counts down from the entry's own timeout
        assert all(r[1] in ("15:00", "14:59") for r in tcp_rows), tcp_rows
        assert all(r[1] in ("05:00", "04:59") for r in udp_rows), udp_rows

        data = adm.call("json", what="conns")["data"]
        assert len(data) == 24
        assert {f"{c['client']['address']}:{c['client']['port']}" for c in data} == tcp_clients | udp_clients
        proc = adm.call("proc", name="ip_vs_conn")["text"].splitlines()
        assert len(proc) == 1 + 24, proc
        assert adm.status()["connections"] == 24

        assert counts(adm, "-t", tvip) == (20, 0)
        assert counts(adm, "-u", uvip) == (0, 4)
        assert stats_row(adm, "TCP", tvip)[0] == 20
        assert stats_row(adm, "UDP", uvip)[:3] == [4, 4, 4]

        # both workers hold some of them (20 connections all hashed to one
        # worker: 2 in a million)
        planes = " ".join(adm.status()["planes"])
        accepted = [int(x) for x in re.findall(r"accepted (\d+)", planes)]
        assert len(accepted) == 2 and min(accepted) > 0 and sum(accepted) == 20, planes

        for s, _ in socks:
            s.close()
        for s in usocks:
            s.close()

        wait_until(lambda: counts(adm, "-t", tvip) == (0, 20), 5)
        states = {r[2] for r in adm.conns() if r[0] == "TCP"}
        assert states and "ESTABLISHED" not in states, states


def test_a_killed_worker_is_restarted_with_the_current_table(backends: Backends) -> None:
    a, b, c = backends.greeter(), backends.greeter(), backends.greeter()
    vport = free_port()
    vip = f"127.0.0.1:{vport}"
    with tempfile.TemporaryDirectory() as tmp:
        log_file = os.path.join(tmp, "lvsd.log")
        with running_lvsd("--workers", "2", "--log-file", log_file) as name:
            adm = Adm(name)
            adm("-A", "-t", vip, "-s", "rr")
            adm("-a", "-t", vip, "-r", f"127.0.0.1:{a}", "-m")
            adm("-a", "-t", vip, "-r", f"127.0.0.1:{b}", "-m")
            wait_until(lambda: all_serving(adm, "1 TCP and 0 UDP services served"), 10)
            lvsd_pid = int(adm.status()["pid"])
            pids = worker_pids(adm)
            assert set(pids) == {0, 1}
            for pid in pids.values():
                with open(f"/proc/{pid}/stat") as fh:
                    assert int(fh.read().rsplit(")", 1)[1].split()[1]) == lvsd_pid

            os.kill(pids[0], signal.SIGKILL)

            new = wait_until(lambda: replaced(adm, 0, pids[0]), 10)
            assert new[1] == pids[1]
            wait_until(lambda: all_serving(adm, "1 TCP and 0 UDP services served"), 10)
            assert "restarts 1" in " ".join(adm.status()["planes"])

            # a table change after the restart reaches the new worker too
            adm("-a", "-t", vip, "-r", f"127.0.0.1:{c}", "-m")
            time.sleep(0.3)
            socks = [greet("127.0.0.1", vport) for _ in range(40)]
            assert {p for _, p in socks} == {a, b, c}
            planes = " ".join(adm.status()["planes"])
            accepted = [int(x) for x in re.findall(r"accepted (\d+)", planes)]
            assert len(accepted) == 2 and min(accepted) > 0 and sum(accepted) == 40, planes
            assert len(adm.conns()) == 40
            for s, _ in socks:
                s.close()
        with open(log_file) as fh:
            text = fh.read()
    assert re.search(
        rf"WARNING lvsd\.workers: worker 0 \(pid {pids[0]}\) was killed by SIGKILL; "
        r"restarting it with the current table\n",
        text,
    ), text
    assert f"worker 0 restarted as pid {new[0]}" in text, text


def test_workers_log_where_lvsd_logs(backends: Backends) -> None:
    """With ``--log-file`` and ``--log-level info``, each worker's own lines
    (here: the service it starts serving) land in lvsd's log file, marked with
    the worker's index and pid, at lvsd's level."""
    a = backends.greeter()
    vip = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as tmp:
        log_file = os.path.join(tmp, "lvsd.log")
        with running_lvsd("--workers", "2", "--log-file", log_file, "--log-level", "info") as name:
            adm = Adm(name)
            adm("-A", "-t", vip, "-s", "rr")
            adm("-a", "-t", vip, "-r", f"127.0.0.1:{a}", "-m")
            wait_until(lambda: all_serving(adm, "1 TCP and 0 UDP services served"), 10)
            pids = worker_pids(adm)

            def both_logged() -> bool:
                with open(log_file) as fh:
                    text = fh.read()
                return all(
                    re.search(rf"lvsd-worker{i}\[{pid}\] INFO lvsd\.nat: serving TCP {vip}", text)
                    for i, pid in pids.items()
                )

            wait_until(both_logged, 10)


def test_workers_listing_when_a_worker_is_gone_or_stuck_still_answers(backends: Backends) -> None:
    """A listing made while a worker is being replaced answers at once with
    what the others hold; one that waits on a stuck worker gives up after the
    query timeout (no traceback, no hang)."""
    a = backends.greeter()
    vport = free_port()
    vip = f"127.0.0.1:{vport}"
    with running_lvsd("--workers", "2") as name:
        adm = Adm(name)
        adm("-A", "-t", vip, "-s", "rr")
        adm("-a", "-t", vip, "-r", f"127.0.0.1:{a}", "-m")
        wait_until(lambda: all_serving(adm, "1 TCP and 0 UDP services served"), 10)
        pids = worker_pids(adm)
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        out: Any = adm("-L", "-c", "-n")
        assert out.startswith("IPVS connection entries\n")
        assert time.monotonic() - t0 < 3
        pids = wait_until(lambda: replaced(adm, 1, pids[1]), 10)
        wait_until(lambda: all_serving(adm, "1 TCP and 0 UDP services served"), 10)

        # a worker that does not answer (stopped) delays a listing by the
        # query timeout (2 s), no more; the others' entries are listed
        socks = [greet("127.0.0.1", vport) for _ in range(10)]
        os.kill(pids[0], signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            rows = adm.conns()
            took = time.monotonic() - t0
        finally:
            os.kill(pids[0], signal.SIGCONT)
        assert 1.5 < took < 4, took
        planes = " ".join(adm.status()["planes"])
        held = {int(i): int(n) for i, n in re.findall(r"\bw(\d+) pid \d+: nat: .*? (\d+) TCP relays", planes)}
        assert len(rows) == held[1], (rows, planes)
        assert len(adm.conns()) == 10  # answered again
        for s, _ in socks:
            s.close()
