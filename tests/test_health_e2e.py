"""The question of issue 12, as a test: "when a node goes down, how does IPVS
know, and how does it route back to it once it comes back?"

Three HTTP backends behind a NAT service, HTTP_GET checks from an unmodified
keepalived.conf (delay_loop 1, connect_timeout 1, retry 1, delay_before_retry
1).  A backend is killed: it leaves ``-L -n`` within delay_loop +
connect_timeout + retry x delay_before_retry + 1 s, and a client doing 50
requests/s sees no failure after that; started again, it is back within the
same bound.  Again with inhibit_on_failure (weight 0, then its weight back).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.healthlab import (
    CONNECT_TIMEOUT,
    DELAY_BEFORE_RETRY,
    DELAY_LOOP,
    RETRY,
    free_port,
    start_server,
    stop,
    table,
    wait_for,
    write_conf,
)
from tests.helpers import lvsadm, running_lvsd

BOUND = DELAY_LOOP + CONNECT_TIMEOUT + RETRY * DELAY_BEFORE_RETRY + 1
#: the machine is shared by many test runs: allowed on top of the issue's bound
SLACK = 2.0


class Load(threading.Thread):
    """A client doing 50 requests/s through the virtual service, each on a new connection."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.results: list[tuple[float, bool, str]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            t = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    r.read()
                self.results.append((t, True, ""))
            except OSError as exc:
                self.results.append((t, False, str(exc)))
            time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))

    def failures_after(self, t: float) -> list[tuple[float, bool, str]]:
        return [r for r in self.results if r[0] >= t and not r[1]]


@pytest.mark.parametrize(
    ("inhibit", "in_process"), [(False, False), (True, True)], ids=["remove", "inhibit-in-process"]
)
def test_backend_killed_leaves_and_comes_back(
    tmp_path: Path, procs: list, inhibit: bool, in_process: bool
) -> None:
    vport = free_port()
    ports = [free_port() for _ in range(3)]
    for p in ports:
        procs.append(start_server("http", "127.0.0.1", str(p)))
    conf = tmp_path / "keepalived.conf"
    write_conf(conf, vport, ports, inhibit)
    log = tmp_path / "lvsd.log"
    victim = f"127.0.0.1:{ports[1]}"
    extra = ["--health-in-process"] if in_process else []
    with running_lvsd("--keepalived-conf", str(conf), "--no-dr", "--log-file", str(log), *extra) as sock:
        assert all(f"127.0.0.1:{p}" in table(sock) for p in ports)
        load = Load(f"http://127.0.0.1:{vport}/")
        load.start()
        try:
            time.sleep(2.5)  # first checks have run (bootstrap 1 s + warmup up to delay_loop)
            assert not load.failures_after(0), load.failures_after(0)[:3]

            def gone(text: str) -> bool:
                if inhibit:
                    return any(victim in line and line.split()[3] == "0" for line in text.splitlines())
                return victim not in text

            stop(procs[1])
            took = wait_for(sock, gone, BOUND + SLACK + 5)
            t_gone = time.monotonic()
            print(f"killed backend left -L -n after {took:.2f} s (bound {BOUND} s)")
            assert took <= BOUND + SLACK
            time.sleep(2.0)
            assert load.failures_after(t_gone) == []

            procs[1] = start_server("http", "127.0.0.1", str(ports[1]))

            def back(text: str) -> bool:
                return any(victim in line and line.split()[3] == "1" for line in text.splitlines())

            took = wait_for(sock, back, BOUND + SLACK + 5)
            print(f"restarted backend back in -L -n after {took:.2f} s")
            assert took <= BOUND + SLACK
            t_back = time.monotonic()
            time.sleep(1.0)
            assert load.failures_after(t_gone) == []
            served = {r for r in load.results if r[0] > t_back}
            assert served
        finally:
            load.stop_flag.set()
            load.join(5)
        status = lvsadm(sock, "--status").stdout
        assert "quorum up" in status and victim.replace("127.0.0.1:", "]:tcp:") in status
        data = json.loads(lvsadm(sock, "--json", "services").stdout)
        dests = data["services"][0]["destinations"]
        assert all(d["health"]["state"] == "up" for d in dests)
    text = log.read_text()
    verb = "Disabling" if inhibit else "Removing"
    assert f"{verb} service [127.0.0.1]:tcp:{ports[1]}" in text
    assert "HTTP_CHECK on service" in text and "connection refused" in text
    assert "skipped global_defs" in text and "keepalived --vrrp" in text
    assert os.path.getsize(log) < 100_000
