"""The scheduler lab (``lvsadm lab``): the session logic, the JSON API over a
real HTTP server, and a full exercise in headless Chromium driven through
the DevTools protocol: wrr with weights 1/2/3, 60 flows, the page shows
10/20/30, and the exported scenario replays to the same decisions."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvs.simulate import Simulation
from teaching.labsession import LabError, LabSession
from tests.helpers import terminate

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("PYLVS_ARTIFACTS", ROOT / "tests" / "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOC = (ROOT / "docs" / "teaching.md").read_text()


def replay(scenario: str) -> list[str | None]:
    got: list[dict] = []
    Simulation().run(scenario.splitlines(), got.append)
    return [d["real_server"] for d in got if "i" in d]


def test_session_wrr_123_and_export_replays() -> None:
    lab = LabSession()
    lab.service("wrr")
    for k, w in enumerate((1, 2, 3), 1):
        lab.add_server(f"10.1.0.{k}:80", w)
    lab.send("10.2.0.1", 60, many=True)
    flows = {s["server"]: s["flows"] for s in lab.state()["servers"]}
    assert flows == {"10.1.0.1:80": 10, "10.1.0.2:80": 20, "10.1.0.3:80": 30}
    decisions = [d["real_server"] for d in lab.decisions]
    assert replay(lab.scenario()) == decisions
    assert lab.decisions[0]["explain"][0].startswith("wrr: cursor at the head of the list")


def test_session_tcp_close_advance_edit_remove() -> None:
    lab = LabSession()
    lab.service("wlc", proto="tcp")
    lab.add_server("10.1.0.1", 1)
    lab.add_server("10.1.0.2:80", 3, upper=5)
    lab.send("10.2.0.7", 8)
    st = lab.state()
    assert st["held"] == 8
    assert sum(s["active"] for s in st["servers"]) == 8
    lab.close("10.2.0.7")
    assert lab.state()["held"] == 0
    lab.advance(120)
    lab.edit_server("10.1.0.1:80", 0)
    lab.remove_server("10.1.0.2:80")
    lab.send("10.2.0.8", 2, many=True)
    st = lab.state()
    assert st["dropped"] == 2  # the only server left has weight 0
    assert st["removed"][0]["server"] == "10.1.0.2:80"
    assert replay(lab.scenario()) == [d["real_server"] for d in lab.decisions]
    lab.service("sh", flags=["sh-fallback"], proto="tcp")
    assert lab.state()["service"]["scheduler"] == "sh"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda s: s.add_server("10.1.0.9:80"), "create the virtual service first"),
        (lambda s: s.service("nope"), "unknown scheduler 'nope'"),
        (lambda s: s.service("wrr", flags=["sh-port"]), "flag 'sh-port' is not a flag of wrr"),
        (lambda s: (s.service("rr"), s.add_server("10.1.0.1:80"), s.add_server("10.1.0.1:80")),
         "Destination already exists"),
        (lambda s: (s.service("rr"), s.send("10.2.0.1", 0)), "flows: 0 is not between 1 and 10000"),
        (lambda s: (s.service("rr"), s.add_server("host:80")), "not an IPv4 ADDRESS:PORT"),
        (lambda s: (s.service("rr"), s.advance("soon")), "time: 'soon' is not a number"),
        (lambda s: (s.service("rr"), s.remove_server("10.1.0.5:80")), "No such destination"),
    ],
)
def test_session_refuses_bad_input(action, message: str) -> None:  # type: ignore[no-untyped-def]
    lab = LabSession()
    with pytest.raises(LabError, match=re.escape(message)):
        action(lab)
    # nothing failed was recorded: the export still replays
    replay(lab.scenario())


@pytest.fixture
def lab_server() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lvsd.cli", "lab", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"http://[\d.]+:\d+/", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield m.group(0)
    finally:
        terminate(proc)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "api/action", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_api_errors_are_clear(lab_server: str) -> None:
    assert _post(lab_server, b"{")[0] == 400
    code, data = _post(lab_server, b"[1]")
    assert code == 400 and data["error"] == "the body must be a JSON object"
    code, data = _post(lab_server, json.dumps({"op": "fly"}).encode())
    assert code == 400 and data["error"] == "unknown action 'fly'"
    code, data = _post(lab_server, json.dumps({"op": "service", "scheduler": "sh", "flags": ["sh-port"]}).encode())
    assert code == 200 and data["service"]["scheduler"] == "sh"
    code, data = _post(lab_server, json.dumps({"op": "add", "server": "10.1.0.1:80", "weight": -3}).encode())
    assert code == 400 and "weight: -3 is not between 0 and 65535" in data["error"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(lab_server + "static/../lab.py", timeout=30)
    assert err.value.code == 404
    with urllib.request.urlopen(lab_server, timeout=30) as r:
        page = r.read().decode()
    assert "<script src=\"/static/lab.js\">" in page and "http" not in page.split("<body>")[1].replace(
        "http://www.w3.org", ""
    )  # offline: nothing fetched from elsewhere


class DevTools:
    """A minimal DevTools-protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]
        raise AssertionError(f"{method}: no answer")

    def js(self, expr: str) -> object:
        res = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait(self, expr: str, timeout: float = 60) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expr}")

    def close(self) -> None:
        self.ws.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it as root: apt)")
def test_chromium_full_exercise(lab_server: str, tmp_path: Path) -> None:
    pytest.importorskip("websocket", reason="websocket-client (the test extra) drives Chromium")
    assert CHROMIUM is not None
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", "--window-size=1400,1100",
         lab_server],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    devtools = None
    try:
        assert browser.stderr is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = browser.stderr.readline()
            if not line and browser.poll() is not None:
                break
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
        assert port, "chromium did not start its DevTools endpoint"
        page_ws = None
        while page_ws is None and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.loads(r.read()) if t["type"] == "page" and t["url"].startswith(lab_server)]
            page_ws = pages[0]["webSocketDebuggerUrl"] if pages else None
            time.sleep(0.1)
        assert page_ws
        devtools = dt = DevTools(page_ws)
        dt.wait("document.body && document.body.dataset.ready === '1'")

        def set_value(id_: str, value: str) -> None:
            dt.js(f"document.getElementById({id_!r}).value = {value!r}")

        def click(id_: str) -> None:
            dt.js(f"document.getElementById({id_!r}).click()")

        def idle() -> None:
            dt.wait("document.body.dataset.busy === '0'")

        set_value("svc-proto", "udp")
        set_value("svc-sched", "wrr")
        click("svc-apply")
        idle()
        dt.wait("document.getElementById('summary').textContent.includes('scheduler wrr')")
        for k, weight in enumerate((1, 2, 3), 1):
            set_value("rs-addr", f"10.1.0.{k}:80")
            set_value("rs-weight", str(weight))
            click("rs-add")
            idle()
            dt.wait(f"document.querySelectorAll('#servers tbody tr').length === {k}")
        set_value("client", "10.2.0.1")
        set_value("count", "60")
        dt.js("document.getElementById('many').checked = true")
        click("send-burst")
        idle()
        shown = dt.wait(
            "(() => { const c = [...document.querySelectorAll('#servers td.flows')];"
            " const t = c.reduce((a, x) => a + Number(x.textContent), 0);"
            " return t === 60 && Object.fromEntries(c.map((x) => [x.dataset.server, x.textContent])); })()"
        )
        assert shown == {"10.1.0.1:80": "10", "10.1.0.2:80": "20", "10.1.0.3:80": "30"}
        # the chart says the same, and every decision carries its explanation
        chart = dt.js("document.getElementById('chart').textContent")
        assert "10 (16.7%)" in chart and "20 (33.3%)" in chart and "30 (50.0%)" in chart
        page_decisions = dt.js(
            "[...document.querySelectorAll('#decisions li.decision')].reverse().map((x) => x.dataset.server)"
        )
        assert isinstance(page_decisions, list) and len(page_decisions) == 60
        explained = dt.js("document.querySelector('#decisions li.decision pre').textContent")
        assert isinstance(explained, str) and "wrr: cursor at" in explained and "chosen: 10.1.0." in explained
        # export from the page, replay with lvsadm simulate: the same decisions
        scenario = dt.js("fetch('/api/scenario').then((r) => r.text())")
        assert isinstance(scenario, str)
        scn = tmp_path / "lab.scn"
        scn.write_text(scenario)
        proc = subprocess.run([sys.executable, "-m", "lvsd.cli", "simulate", str(scn)], capture_output=True,
                              text=True, timeout=120, check=False, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        replayed = [d["real_server"] for d in map(json.loads, proc.stdout.splitlines()) if "i" in d]
        assert replayed == page_decisions
        # the server-rendered plot has arrived; keep a screenshot
        dt.js("document.querySelector('#decisions details').open = true")
        dt.wait("(() => { const i = document.getElementById('plot'); return i.complete && i.naturalWidth > 0; })()",
                timeout=120)
        shot = dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        out = ARTIFACTS / "lab-wrr-123.png"
        out.write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {out}")
        assert out.read_bytes()[:4] == b"\x89PNG"
        # a link from docs/teaching.md sets a fresh lab up (lab.js preset)
        link = next(x for x in re.findall(r"http://127\.0\.0\.1:8014/\?\S+", DOC) if "sh-fallback" in x)
        dt.js("fetch('/api/action', {method: 'POST', body: JSON.stringify({op: 'reset'})}).then((r) => r.ok)")
        dt.call("Page.navigate", url=lab_server.rstrip("/") + link.removeprefix("http://127.0.0.1:8014"))
        # (the old page also had three rows: wait for the new one's scheduler)
        dt.wait("document.body && document.body.dataset.ready === '1' && document.querySelectorAll("
                "'#servers tbody tr').length === 3 && document.getElementById('summary').textContent"
                ".includes('scheduler sh')")
    finally:
        if devtools is not None:
            devtools.close()
        terminate(browser, timeout=20)
