"""Health checking as seen through lvsd --http: the pylvs_health_* series,
health transitions in /api/events, each real server's state in
/api/services (what the page shows)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.healthlab import free_port, start_server, stop, write_conf
from tests.helpers import running_lvsd

pytestmark = pytest.mark.timeout(120)


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read()


def series(text: str, name: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[s.labels.get("real_server", "") + s.labels.get("result", "")] = s.value
    return out


def test_health_series_and_events(tmp_path: Path) -> None:
    vport, up_port, down_port, http_port = free_port(), free_port(), free_port(), free_port()
    server = start_server("http", "127.0.0.1", str(up_port))
    try:
        conf = tmp_path / "keepalived.conf"
        write_conf(conf, vport, [up_port, down_port], inhibit=True)
        with running_lvsd("--keepalived-conf", str(conf), "--no-dr", "--http", f"127.0.0.1:{http_port}"):
            up_rs, down_rs = f"[127.0.0.1]:tcp:{up_port}", f"[127.0.0.1]:tcp:{down_port}"
            deadline = time.monotonic() + 20
            while True:
                text = get(http_port, "/metrics").decode()
                state = series(text, "pylvs_health_up")
                checks = series(text, "pylvs_health_checks_total")
                if state.get(up_rs) == 1 and state.get(down_rs) == 0 and checks.get(up_rs + "passed"):
                    break
                assert time.monotonic() < deadline, state
                time.sleep(0.2)
            assert series(text, "pylvs_health_weight") == {up_rs: 1, down_rs: 1}  # the table has 0: inhibited
            assert series(text, "pylvs_health_quorum_up") == {"": 1}
            durations = series(text, "pylvs_health_check_duration_seconds")
            assert set(durations) == {up_rs, down_rs} and all(0 <= v < 5 for v in durations.values())
            assert checks[up_rs + "passed"] >= 1 and checks[down_rs + "failed"] >= 1
            if shutil.which("promtool"):
                r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
                assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr
            # the live one goes down: a transition, an event in keepalived's words
            stop(server)
            deadline = time.monotonic() + 20
            while series(get(http_port, "/metrics").decode(), "pylvs_health_transitions_total").get(up_rs) != 1:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            events = json.loads(get(http_port, "/api/events"))["events"]
            assert any(e["kind"] == "health" and f"Disabling service {up_rs}" in e["text"] for e in events)
            dests = json.loads(get(http_port, "/api/services"))["services"][0]["destinations"]
            assert {d["health"]["state"] for d in dests} == {"down"}
    finally:
        stop(server)
