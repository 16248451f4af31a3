"""Reloading a health-checked configuration (``lvsadm --reload`` and SIGHUP):
unchanged real servers keep their health state and their connections, a
file with errors changes nothing and says FILE:LINE, unknown keywords are
warned about; the same checkers written in lvsd's YAML config."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from tests.healthlab import free_port, table, wait_for
from tests.helpers import lvsadm, running_lvsd

CHECK = "TCP_CHECK {\n connect_timeout 1\n }"


def conf(vport: int, ports: list[int], extra: str = "") -> str:
    servers = "".join(f"    real_server 127.0.0.1 {p} {{\n        {CHECK}\n    }}\n" for p in ports)
    return f"virtual_server 127.0.0.1 {vport} {{\n    delay_loop 1\n    lb_algo rr\n    lb_kind NAT\n" \
        f"    protocol TCP\n{extra}{servers}}}\n"  # fmt: skip


def test_reload_keeps_state_and_connections(tmp_path: Path, backends) -> None:  # type: ignore[no-untyped-def]
    up1, up2 = backends.greeter(), backends.greeter()
    dead = free_port()
    vport = free_port()
    path = tmp_path / "keepalived.conf"
    path.write_text(conf(vport, [up1, dead]))
    log = tmp_path / "lvsd.log"
    with running_lvsd("--keepalived-conf", str(path), "--no-dr", "--log-file", str(log)) as sock:
        wait_for(sock, lambda t: f":{dead}" not in t, 10)
        held = socket.create_connection(("127.0.0.1", vport), timeout=5)
        assert int(held.recv(16).split(b"\n")[0]) == up1
        path.write_text(conf(vport, [up1, dead, up2], extra="    frobnicate yes\n"))
        r = lvsadm(sock, "--reload")
        assert r.returncode == 0, r.stderr
        now = table(sock)
        # the dead server is still known to be down: not put back by the reload
        assert f":{dead}" not in now and f":{up2}" in now
        line = next(x for x in now.splitlines() if f":{up1}" in x)
        assert line.split()[4] == "1", now  # its connection went on
        # a file with errors changes nothing, and says where
        path.write_text(conf(vport, [up2]).replace("delay_loop 1", "delay_loop 1 {"))
        r = lvsadm(sock, "--reload")
        assert r.returncode == 1 and f"{path}:1: block 'virtual_server' is missing" in r.stderr, r.stderr
        assert table(sock) == now
        # SIGHUP does what --reload does
        path.write_text(conf(vport, [up2]))
        pid = int(
            next(x for x in lvsadm(sock, "--status").stdout.splitlines() if x.startswith("pid:")).split()[1]
        )
        os.kill(pid, signal.SIGHUP)
        wait_for(sock, lambda t: f":{up1}" not in t and f":{up2}" in t, 10)
        held.close()
    text = log.read_text()
    assert f"{path}:6: unknown keyword 'frobnicate'" in text
    assert "failed, table unchanged" in text and "asked by SIGHUP" in text


def test_yaml_config_with_checks(tmp_path: Path, backends) -> None:  # type: ignore[no-untyped-def]
    up = backends.greeter()
    dead, vport = free_port(), free_port()
    path = tmp_path / "lvsd.yaml"
    path.write_text(
        f"""services:
  - tcp: 127.0.0.1:{vport}
    scheduler: rr
    health: {{delay_loop: 1, inhibit_on_failure: true}}
    realservers:
      - address: 127.0.0.1:{up}
        method: masq
        checks: [{{TCP_CHECK: {{connect_timeout: 1}}}}]
      - address: 127.0.0.1:{dead}
        method: masq
        weight: 3
        checks:
          - TCP_CHECK: {{connect_timeout: 1}}
  - tcp: 127.0.0.1:{free_port()}
    realservers: [{{address: 127.0.0.1:{dead}, method: masq}}]
"""
    )
    with running_lvsd("--config", str(path), "--no-dr") as sock:
        assert f"127.0.0.1:{dead}" in table(sock)
        took = wait_for(
            sock, lambda t: any(f":{dead}" in x and x.split()[3] == "0" for x in t.splitlines()), 10
        )
        assert took < 10
        # the service without checks keeps its (dead) server as written
        assert table(sock).count(f":{dead}") == 2
        time.sleep(0.2)
        status = lvsadm(sock, "--status").stdout
        assert f"[127.0.0.1]:tcp:{dead} down" in status and "TCP_CHECK: connection refused" in status


def test_checker_process_restarted(tmp_path: Path, backends) -> None:  # type: ignore[no-untyped-def]
    """The probes run in a child of lvsd; killed, it is started again and
    the checks go on."""
    up, up2 = backends.greeter(), backends.greeter()
    vport = free_port()
    path = tmp_path / "keepalived.conf"
    path.write_text(conf(vport, [up, up2]))
    log = tmp_path / "lvsd.log"
    with running_lvsd("--keepalived-conf", str(path), "--no-dr", "--log-file", str(log)) as sock:
        pid = int(
            next(x for x in lvsadm(sock, "--status").stdout.splitlines() if x.startswith("pid:")).split()[1]
        )

        def children() -> list[int]:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

        deadline = time.monotonic() + 10
        while not children():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        first = children()[0]
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not [c for c in children() if c != first]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        backends.run(_close_servers(backends, up2))
        wait_for(sock, lambda t: f":{up2}" not in t, 10)
    text = log.read_text()
    assert "checker process" in text and "starting it again" in text


async def _close_servers(backends, port: int) -> None:  # type: ignore[no-untyped-def]
    for srv in backends.servers:
        if srv.sockets and srv.sockets[0].getsockname()[1] == port:
            srv.close()
