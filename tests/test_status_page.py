"""The status page in a real headless Chromium (Debian's ``chromium``):
it loads without a network beyond lvsd, draws the table, and its numbers
change while traffic flows.  Screenshots (desktop and phone) are kept in
``build/test-artifacts/``."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from .chromium import CHROMIUM, Browser
from .helpers import ROOT, lvsadm, running_lvsd
from .natlab import Backends, free_port

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium missing (Debian package chromium)"),
]

ARTIFACTS = ROOT / "build" / "test-artifacts"


def traffic(port: int, seconds: float, stop: threading.Event) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                while s.recv(4096):
                    pass
        except OSError:
            time.sleep(0.05)
        time.sleep(0.02)


def test_page_updates_while_traffic_flows() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    backends = Backends()
    http_port, vip_port = free_port(), free_port()
    stop = threading.Event()
    try:
        rports = [backends.http(0), backends.http(0), backends.http(0)]
        with running_lvsd("--no-dr", "--http", f"127.0.0.1:{http_port}") as name:
            vip = f"127.0.0.1:{vip_port}"
            for argv in (
                ["-A", "-t", vip, "-s", "wrr"],
                *[["-a", "-t", vip, "-r", f"127.0.0.1:{p}", "-m", "-w", str(w)] for p, w in zip(rports, (3, 2, 1))],
                ["-A", "-u", "127.0.0.1:5353", "-s", "sh", "-p", "300"],
                ["-a", "-u", "127.0.0.1:5353", "-r", "127.0.0.1:53", "-m", "-w", "0"],
            ):
                assert lvsadm(name, *argv).returncode == 0, argv
            browser = Browser()
            try:
                browser.open(f"http://127.0.0.1:{http_port}/", 1280, 900)
                browser.wait_for("Number(document.body.dataset.updates || 0) >= 1")
                assert browser.eval("document.querySelectorAll('.svc').length") == 2
                assert browser.eval("document.querySelectorAll('.dests tbody tr').length") == 4
                before = browser.eval("document.getElementById('t-conns').textContent")
                assert before == "0"
                flow = threading.Thread(target=traffic, args=(vip_port, 60, stop), daemon=True)
                flow.start()
                # the total counter moves within a poll or two; the rate follows the estimator
                browser.wait_for("document.getElementById('t-conns').textContent !== '0'", timeout=30)
                first = browser.eval("document.getElementById('t-conns').textContent")
                browser.wait_for(f"document.getElementById('t-conns').textContent !== {first!r}", timeout=30)
                browser.wait_for("document.getElementById('t-cps').textContent !== '0'", timeout=30)
                browser.wait_for("document.querySelector('#s-cps path.line') !== null", timeout=30)
                assert browser.eval("document.getElementById('dot').className") == "dot on"
                assert browser.eval("document.querySelectorAll('#events li.ev.admin').length") >= 6
                assert browser.eval("document.querySelector('.vip').textContent").startswith("TCP 127.0.0.1:")
                time.sleep(4)  # a few more polls so the sparklines have points
                browser.screenshot(str(ARTIFACTS / "status-page.png"))
                browser.open(f"http://127.0.0.1:{http_port}/", 390, 844, mobile=True)
                browser.wait_for("Number(document.body.dataset.updates || 0) >= 1")
                # nothing wider than the phone's screen except inside the scrolling tables
                overflow = browser.eval("document.documentElement.scrollWidth <= window.innerWidth + 1")
                assert overflow, "the page is wider than a phone screen"
                browser.screenshot(str(ARTIFACTS / "status-page-phone.png"))
            finally:
                stop.set()
                browser.close()
    finally:
        stop.set()
        backends.close()
    assert Path(ARTIFACTS / "status-page.png").stat().st_size > 10_000
