"""``lvsadm lab [--listen ADDR:PORT]``: the scheduler lab in the browser.

A small HTTP server (standard library, one thread per request, one lab
session behind a lock) serving a static page (``teaching/static``, no CDN:
it works offline) and a JSON API over :class:`teaching.labsession.LabSession`:

* ``GET /api/state``: the session (service, real servers with their
  counters and flows, the last decisions with their explanations);
* ``POST /api/action`` with ``{"op": ..., ...}``: ``service``, ``add``,
  ``edit``, ``remove``, ``send``, ``close``, ``advance``, ``reset``;
  answers the new state, or 400 ``{"error": ...}`` (ipvsadm's words for
  ipvsadm's errors);
* ``GET /api/scenario``: the session as a scenario file (``lvsadm simulate``
  replays it to the same decisions);
* ``GET /api/plot.svg``: the session drawn by :mod:`teaching.plots`.

Every decision is the core's (``lvs/`` and ``schedulers/``): the page never
computes one.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .labsession import LabError, LabSession

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
MAX_BODY = 1 << 20


class Lab:
    """The session and the lock that serialises requests on it."""

    def __init__(self, seed: int = 0, classic: bool = False) -> None:
        self.seed = seed
        self.classic = classic
        self.lock = threading.Lock()
        self.session = LabSession(seed=seed, classic=classic)

    def act(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        s = self.session
        if op == "reset":
            self.session = LabSession(seed=self.seed, classic=self.classic)
        elif op == "service":
            s.service(str(req.get("scheduler", "")), req.get("flags") or [], str(req.get("proto", "udp")),
                      str(req.get("vip") or "10.0.0.1:80"), req.get("persistent") or 0,
                      bool(req.get("one_packet")))
        elif op == "add":
            s.add_server(str(req.get("server", "")), req.get("weight", 1), req.get("upper", 0),
                         req.get("lower", 0))
        elif op == "edit":
            s.edit_server(str(req.get("server", "")), req.get("weight", 1), req.get("upper", 0),
                          req.get("lower", 0))
        elif op == "remove":
            s.remove_server(str(req.get("server", "")))
        elif op == "send":
            s.send(str(req.get("client", "10.2.0.1")), req.get("count", 1), bool(req.get("many")),
                   req.get("hold", True) is not False)
        elif op == "close":
            s.close(str(req.get("client", "all")))
        elif op == "advance":
            s.advance(req.get("seconds", 1))
        else:
            raise LabError(f"unknown action {op!r}")
        return self.session.state()

    def plot_svg(self) -> bytes:
        import io

        from . import plots, series

        s = series.collect(self.session.lines, "lab session", seed=self.seed, classic=self.classic)
        if not s.x:
            s.title = "lab session: no flows yet"
        buf = io.BytesIO()
        fig = plots.scenario_figure(s)
        fig.savefig(buf, format="svg")
        plots.plt.close(fig)
        return buf.getvalue()


def make_handler(lab: Lab) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pylvs-lab"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                path = "/static/lab.html"
            if path.startswith("/static/"):
                name = path.removeprefix("/static/")
                f = STATIC / name
                if "/" in name or ".." in name or not f.is_file():
                    self._json(404, {"error": f"no such file: {path}"})
                    return
                self._send(200, f.read_bytes(), TYPES.get(f.suffix, "application/octet-stream"))
                return
            with lab.lock:
                if path == "/api/state":
                    self._json(200, lab.session.state())
                elif path == "/api/scenario":
                    self._send(200, lab.session.scenario().encode(), "text/plain; charset=utf-8",
                               {"Content-Disposition": 'attachment; filename="lab.scn"'})
                elif path == "/api/plot.svg":
                    try:
                        body = lab.plot_svg()
                    except ImportError as exc:
                        self._json(501, {"error": f"plots need matplotlib (the teach extra): {exc}"})
                        return
                    self._send(200, body, "image/svg+xml")
                else:
                    self._json(404, {"error": f"no such resource: {path}"})

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path != "/api/action":
                self._json(404, {"error": f"no such resource: {path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                self._json(400, {"error": "a JSON body of at most 1 MiB is needed"})
                return
            try:
                req = json.loads(self.rfile.read(length))
            except (ValueError, UnicodeDecodeError) as exc:
                self._json(400, {"error": f"bad JSON: {exc}"})
                return
            if not isinstance(req, dict):
                self._json(400, {"error": "the body must be a JSON object"})
                return
            with lab.lock:
                try:
                    self._json(200, lab.act(req))
                except LabError as exc:
                    self._json(400, {"error": str(exc), "state": lab.session.state()})

    return Handler


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen wants ADDR:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="lvsadm lab", description="The scheduler lab in the browser.")
    ap.add_argument("--listen", default="127.0.0.1:8014", metavar="ADDR:PORT",
                    help="where to serve the page (default 127.0.0.1:8014; port 0 picks a free one)")
    ap.add_argument("--seed", type=int, default=0, help="seed for twos")
    ap.add_argument("--classic", action="store_true", help="pre-2025 kernel rules")
    ns = ap.parse_args(argv)
    try:
        host, port = parse_listen(ns.listen)
        server = ThreadingHTTPServer((host, port), make_handler(Lab(ns.seed, ns.classic)))
    except (ValueError, OSError) as exc:
        print(f"lvsadm lab: {exc}", file=sys.stderr)
        return 2
    server.daemon_threads = True
    h, p = server.server_address[:2]
    shown = f"[{h}]" if ":" in str(h) else h
    print(f"pylvs scheduler lab: http://{shown}:{p}/  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
