"""``lvsadm --drain``: weight 0 at once (new connections go elsewhere, the
ones the server has go on), the server deleted when its active connections
reach 0, or at the timeout; progress printed."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from tests.healthlab import free_port
from tests.helpers import PY, ROOT, lvsadm, running_lvsd


def connect(port: int) -> tuple[socket.socket, int]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s, int(s.recv(16).split(b"\n")[0])


def test_drain_waits_for_connections_then_deletes(backends) -> None:  # type: ignore[no-untyped-def]
    a, b = backends.greeter(), backends.greeter()
    vport = free_port()
    with running_lvsd("--no-dr") as sock:
        svc = f"127.0.0.1:{vport}"
        for cmd in (["-A", "-t", svc, "-s", "rr"], ["-a", "-t", svc, "-r", f"127.0.0.1:{a}", "-m"],
                    ["-a", "-t", svc, "-r", f"127.0.0.1:{b}", "-m"]):  # fmt: skip
            assert lvsadm(sock, *cmd).returncode == 0
        held = [connect(vport) for _ in range(2)]
        victim = held[0][1]
        env = {**os.environ, "LVSD_SOCKET": sock, "LVSADM_NO_AUTOSTART": "1"}
        proc = subprocess.Popen(
            [PY, "-m", "lvsd.cli", "--drain", "-t", svc, "-r", f"127.0.0.1:{victim}", "--timeout", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while "  0 " not in lvsadm(sock, "-L", "-n").stdout and time.monotonic() < deadline:
                time.sleep(0.1)
            listing = lvsadm(sock, "-L", "-n").stdout
            line = next(x for x in listing.splitlines() if f":{victim}" in x)
            assert line.split()[3:5] == ["0", "1"], listing  # weight 0, its connection still active
            # new connections all go to the other server
            fresh = [connect(vport) for _ in range(4)]
            assert {port for _, port in fresh} == {a, b} - {victim}
            for s, _ in fresh:
                s.close()
            assert proc.poll() is None
            held[0][0].close()
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert "draining, weight 0, 1 active" in out
        assert "deleted: no active connections left" in out
        assert f":{victim}" not in lvsadm(sock, "-L", "-n").stdout
        held[1][0].close()


def test_drain_timeout_and_errors(backends) -> None:  # type: ignore[no-untyped-def]
    a = backends.greeter()
    vport = free_port()
    with running_lvsd("--no-dr") as sock:
        svc = f"127.0.0.1:{vport}"
        assert lvsadm(sock, "-A", "-t", svc).returncode == 0
        assert lvsadm(sock, "-a", "-t", svc, "-r", f"127.0.0.1:{a}", "-m").returncode == 0
        s, _ = connect(vport)
        r = lvsadm(sock, "--drain", "-t", svc, "-r", f"127.0.0.1:{a}", "--timeout", "1")
        assert r.returncode == 0 and "deleted at the timeout with 1 active connections" in r.stdout
        assert f":{a}" not in lvsadm(sock, "-L", "-n").stdout
        s.close()
        r = lvsadm(sock, "--drain", "-t", svc, "-r", "127.0.0.1:1")
        assert r.returncode == 1 and r.stderr.startswith("lvsadm: ") and "Traceback" not in r.stderr
        r = lvsadm(sock, "--drain", "-t", "127.0.0.9:1", "-r", "127.0.0.1:1")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        r = lvsadm(sock, "--drain", "-t", svc)
        assert r.returncode == 2 and "usage: lvsadm --drain" in r.stderr
