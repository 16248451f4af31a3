"""Tools of the health-check end-to-end tests: the test servers of
tests/health_servers.py as processes, keepalived.conf for a NAT service, and
bounded polls of lvsd's table."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from lvsd.client import Client

from .helpers import PY, ROOT
from .natlab import free_port

__all__ = ["free_port", "start_server", "stop", "table", "wait_for", "write_conf"]

SERVERS = ROOT / "tests" / "health_servers.py"
DELAY_LOOP, CONNECT_TIMEOUT, RETRY, DELAY_BEFORE_RETRY = 1, 1, 1, 1


def start_server(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [PY, str(SERVERS), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"test server {args} did not start"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)


def table(sock: str) -> str:
    with Client(autostart=False, name=sock) as c:
        return c.call("ipvsadm", argv=["-L", "-n"])["stdout"]


def wait_for(sock: str, pred, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Poll ``-L -n`` until ``pred(text)``; the time it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred(table(sock)):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s:\n{table(sock)}")


def write_conf(path: Path, vport: int, ports: list[int], inhibit: bool) -> None:
    rs = "".join(
        f"""
    real_server 127.0.0.1 {p} {{
        weight 1
        HTTP_GET {{
            url {{
                path /
                status_code 200
            }}
            connect_timeout {CONNECT_TIMEOUT}
            retry {RETRY}
            delay_before_retry {DELAY_BEFORE_RETRY}
        }}
    }}"""
        for p in ports
    )
    path.write_text(
        f"""! keepalived.conf as an operator writes it
global_defs {{
    router_id LVS_TEST
}}
virtual_server 127.0.0.1 {vport} {{
    delay_loop {DELAY_LOOP}
    lb_algo rr
    lb_kind NAT
    protocol TCP
    {"inhibit_on_failure" if inhibit else ""}
{rs}
}}
"""
    )
