"""lvsd --http and --procfs end to end: a real lvsd with real traffic, its
/metrics against lvsadm's listings, promtool, Debian's node_exporter over
the procfs files, and the listener's limits."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import lvsadm, running_lvsd
from .natlab import Backends, free_port

pytestmark = pytest.mark.timeout(180)

NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


class Lab:
    def __init__(self, name: str, http_port: int, procfs: Path, vip_port: int, rports: list[int]) -> None:
        self.name = name
        self.base = f"http://127.0.0.1:{http_port}"
        self.procfs = procfs
        self.vip_port = vip_port
        self.rports = rports

    def adm(self, *argv: str) -> str:
        r = lvsadm(self.name, *argv)
        assert r.returncode == 0, (argv, r.stderr)
        return r.stdout

    def get(self, path: str, method: str = "GET", timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def traffic(self, n: int) -> None:
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", self.vip_port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                while s.recv(4096):
                    pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    procfs = tmp_path_factory.mktemp("procfs")
    backends = Backends()
    http_port = free_port()
    try:
        rports = [backends.http(0), backends.http(0)]
        with running_lvsd("--no-dr", "--http", f"127.0.0.1:{http_port}", "--procfs", str(procfs)) as name:
            lab = Lab(name, http_port, procfs, free_port(), rports)
            vip = f"127.0.0.1:{lab.vip_port}"
            lab.adm("-A", "-t", vip, "-s", "rr")
            lab.adm("-a", "-t", vip, "-r", f"127.0.0.1:{rports[0]}", "-m", "-w", "2")
            lab.adm("-a", "-t", vip, "-r", f"127.0.0.1:{rports[1]}", "-m")
            lab.adm("-A", "-f", "7", "-s", "wlc")
            lab.adm("-a", "-f", "7", "-r", "10.9.9.9", "-g", "-w", "5")
            lab.adm("-A", "-u", "[2001:db8::1]:53", "-s", "sh")
            lab.adm("-a", "-u", "[2001:db8::1]:53", "-r", "[2001:db8::5]:53", "-m")
            yield lab
    finally:
        backends.close()


def node_ipvs(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("node_ipvs_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def listing_view(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The node_ipvs_* series as ``lvsadm -L -n``, ``-L -n --stats`` and
    ``--proc ip_vs_stats`` show them."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    service: dict[str, str] = {}
    for line in lab.adm("-L", "-n").splitlines()[3:]:
        m = re.match(r"(TCP|UDP|FWM)\s+(\S+)", line)
        if m:
            proto, where = m.groups()
            if proto == "FWM":
                service = {"proto": "FWM", "local_address": "", "local_port": "0", "local_mark": f"{int(where):08X}"}
            else:
                addr, port = where.rsplit(":", 1)
                service = {"proto": proto, "local_address": addr.strip("[]"), "local_port": port, "local_mark": ""}
            continue
        m = re.match(r"\s+->\s+(\S+)\s+\w+\s+(\d+)\s+(\d+)\s+(\d+)", line)
        assert m, line
        where, weight, active, inact = m.groups()
        raddr, rport = where.rsplit(":", 1)
        labels = tuple(sorted({**service, "remote_address": raddr.strip("[]"), "remote_port": rport}.items()))
        out[("node_ipvs_backend_weight", labels)] = float(weight)
        out[("node_ipvs_backend_connections_active", labels)] = float(active)
        out[("node_ipvs_backend_connections_inactive", labels)] = float(inact)
    stats = lab.adm("--proc", "ip_vs_stats").splitlines()[2].split()
    names = ["connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes"]
    for name, value in zip(names, stats):
        out[(f"node_ipvs_{name}_total", ())] = float(int(value, 16))
    # the totals are the sum of the services' --stats rows (no service was deleted)
    sums = [0] * 5
    for line in lab.adm("-L", "-n", "--stats").splitlines()[3:]:
        if not line.startswith("  ->"):
            for i, v in enumerate(line.split()[2:7]):
                sums[i] += int(v)
    assert sums == [int(v, 16) for v in stats]
    return out


def stable(lab: Lab, fetch: Any) -> tuple[Any, Any]:
    """(listing, fetched) taken while the listing did not change around the fetch."""
    for _ in range(20):
        before = listing_view(lab)
        got = fetch()
        if listing_view(lab) == before:
            return before, got
        time.sleep(0.2)
    raise AssertionError("the table kept changing")


def test_metrics_equal_lvsadm_after_traffic(lab: Lab) -> None:
    lab.traffic(7)
    held = socket.create_connection(("127.0.0.1", lab.vip_port), timeout=5)  # one ActiveConn
    try:
        deadline = time.monotonic() + 10
        while "1          " not in lab.adm("-L", "-n") and time.monotonic() < deadline:
            time.sleep(0.05)
        listing, text = stable(lab, lambda: lab.get("/metrics")[2].decode())
        got = node_ipvs(text)
        assert got == listing
        assert got[("node_ipvs_connections_total", ())] >= 8
        assert sum(v for (n, _), v in got.items() if n == "node_ipvs_backend_connections_active") == 1
        assert sum(v for (n, _), v in got.items() if n == "node_ipvs_backend_connections_inactive") >= 7
        # pylvs rates are ipvsadm --rate's figures, the control ops are counted
        assert "pylvs_backend_connections_per_second{" in text
        assert re.search(r'pylvs_control_operations_total\{command="add-service",op="ipvsadm",result="ok"\} 3\.0', text)
        assert 'pylvs_dataplane_events_total{event="accepted",plane="nat"}' in text
        assert "process_resident_memory_bytes" in text
    finally:
        held.close()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)")
def test_promtool_check_metrics_is_clean(lab: Lab) -> None:
    lab.traffic(2)
    text = lab.get("/metrics")[2]
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60, check=False)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


@pytest.mark.skipif(NODE_EXPORTER is None, reason="node_exporter missing (Debian package prometheus-node-exporter)")
def test_node_exporter_over_procfs_reports_the_same(lab: Lab) -> None:
    assert NODE_EXPORTER is not None
    lab.traffic(3)
    port = free_port()
    proc = subprocess.Popen(
        [NODE_EXPORTER, f"--path.procfs={lab.procfs}", "--collector.disable-defaults", "--collector.ipvs",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def both() -> tuple[dict[Any, float], dict[Any, float]]:
            time.sleep(1.5)  # lvsd rewrites the files every second
            deadline = time.monotonic() + 15
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                        exported = resp.read().decode()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.1)
            assert 'node_scrape_collector_success{collector="ipvs"} 1' in exported
            return node_ipvs(exported), node_ipvs(lab.get("/metrics")[2].decode())

        listing, (exported, ours) = stable(lab, both)
        assert exported == ours == listing
    finally:
        proc.terminate()
        proc.wait(10)


def test_only_get_and_head(lab: Lab) -> None:
    before = lab.adm("-S", "-n")
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        code, headers, _ = lab.get("/api/services", method=method)
        assert code == 405 and headers.get("Allow") == "GET, HEAD", method
    code, headers, body = lab.get("/metrics", method="HEAD")
    assert code == 200 and body == b"" and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert lab.get("/nowhere")[0] == 404
    assert lab.adm("-S", "-n") == before


def test_api_views(lab: Lab) -> None:
    lab.traffic(1)
    code, headers, body = lab.get("/api/services")
    assert code == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    ref = json.loads(lab.adm("--json", "services"))
    for view in (data, ref):
        view.pop("time")
        for s in view["services"]:
            s.pop("id", None)
    data.pop("total_services")
    assert data.keys() == ref.keys() and [s["port"] for s in data["services"]] == [s["port"] for s in ref["services"]]
    conns = json.loads(lab.get("/api/conns?limit=2")[2])
    assert conns["shown"] <= 2 and conns["total"] >= conns["shown"]
    assert lab.get("/api/conns?limit=x")[0] == 400
    events = json.loads(lab.get("/api/events")[2])["events"]
    assert any(e["kind"] == "admin" and "-A -f 7" in e["text"] for e in events)
    history = json.loads(lab.get("/api/history")[2])
    assert history["period"] == 2.0 and "total" in history
    page = lab.get("/")
    assert page[0] == 200 and b"<html" in page[2] and "default-src 'self'" in page[1]["Content-Security-Policy"]


def raw(lab: Lab, payload: bytes, timeout: float = 10) -> bytes:
    port = int(lab.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(payload)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
    return data


def test_limits(lab: Lab) -> None:
    assert raw(lab, b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
    assert raw(lab, b"GET / HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505 ")
    assert raw(lab, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    port = int(lab.base.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
    try:
        time.sleep(0.5)
        assert raw(lab, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503 ")
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while not raw(lab, b"GET /api/events HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 "):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_metrics_with_workers_answer_for_all(backends: Backends, tmp_path: Path) -> None:
    """lvsd --workers 2: the connections live in the workers, and /metrics
    and the procfs files (asked of the workers first) count them as -L -n does."""
    http_port, vport = free_port(), free_port()
    rports = [backends.http(0), backends.http(0)]
    with running_lvsd("--no-dr", "--workers", "2", "--http", f"127.0.0.1:{http_port}",
                      "--procfs", str(tmp_path)) as name:  # fmt: skip
        lab = Lab(name, http_port, tmp_path, vport, rports)
        vip = f"127.0.0.1:{vport}"
        lab.adm("-A", "-t", vip, "-s", "rr")
        for p in rports:
            lab.adm("-a", "-t", vip, "-r", f"127.0.0.1:{p}", "-m")
        deadline = time.monotonic() + 15
        while True:  # both workers listen once the service reached them
            try:
                lab.traffic(12)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        listing, text = stable(lab, lambda: lab.get("/metrics")[2].decode())
        got = node_ipvs(text)
        assert got == listing
        assert sum(v for (n, _), v in got.items() if n == "node_ipvs_backend_connections_inactive") >= 12
        assert got[("node_ipvs_connections_total", ())] >= 12
        deadline = time.monotonic() + 10
        while "  -> 7F000001" not in (tmp_path / "net" / "ip_vs").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
