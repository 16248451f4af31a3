#!/usr/bin/env python3
"""lvsd as a ``custom@lvsd:`` target of the peer benchmark harness (../shared/bench).

Starts ``lvsd --foreground`` on a fresh control socket, loads one virtual
service with its real servers (masquerading) in a single ``lvsadm -R`` so the
listener never serves without them, then stays in the foreground until the
harness stops it (SIGTERM is passed on to lvsd).

    custom@lvsd:$PYLVS/.venv/bin/python $PYLVS/benchmarks/lvsd_target.py \
        --listen {listen} --backends {backends} --proto {proto}

(absolute paths: the harness runs targets from its own directory).

Extra options: ``--scheduler`` (rr), ``--lvsd-arg`` (repeatable, passed to lvsd).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsd.client import Client, DaemonUnavailable  # noqa: E402


def endpoint(text: str) -> str:
    """``host:port`` as ipvsadm wants it (IPv6 in brackets)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def rules(listen: str, backends: list[str], proto: str, scheduler: str) -> str:
    flag = "-u" if proto == "udp" else "-t"
    vip = endpoint(listen)
    lines = [f"-A {flag} {vip} -s {scheduler}"]
    # ipvsadm links a new real server at the head of the list: add them in
    # reverse so that rr walks them in the order given
    lines += [f"-a {flag} {vip} -r {endpoint(b)} -m -w 1" for b in reversed(backends)]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--backends", required=True)
    ap.add_argument("--proto", default="tcp", choices=["tcp", "udp"])
    ap.add_argument("--scheduler", default="rr")
    ap.add_argument("--lvsd-arg", action="append", default=[])
    a = ap.parse_args()
    name = f"pylvs-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lvsd.main", "--foreground", "--socket", name, *a.lvsd_arg],
        cwd=ROOT,
    )

    def stop(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    table = rules(a.listen, a.backends.split(","), a.proto, a.scheduler)
    deadline = time.monotonic() + 15
    while True:
        try:
            with Client(autostart=False, name=name) as c:
                reply = c.call("ipvsadm", argv=["-R"], stdin=table)
            break
        except (DaemonUnavailable, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                print("lvsd_target: lvsd did not start", file=sys.stderr)
                stop(0, None)
                return 1
            time.sleep(0.05)
    if reply.get("rc") != 0:
        print(f"lvsd_target: configuration failed: {reply}", file=sys.stderr)
        stop(0, None)
        return 1
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
