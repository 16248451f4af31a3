"""``lvsadm``: ipvsadm's command line, talking to this namespace's lvsd.

``lvsadm ARGS`` behaves as ``ipvsadm ARGS`` (same grammar, output and exit
codes): the arguments travel to lvsd, which parses and runs them against its
tables and sends back what ipvsadm would print.  pylvs extras:

* ``lvsadm simulate SCENARIO``: replay an oracle scenario in-process;
* ``lvsadm lab [--listen ADDR:PORT]``: the scheduler lab in the browser;
* ``lvsadm --json [services|conns|timeouts|daemons|sysctl]``: listings as
  JSON, for scripts (services carry their real servers, counters and rates);
* ``lvsadm --proc ip_vs|ip_vs_conn|ip_vs_conn_sync|ip_vs_stats``: the kernel's /proc views;
* ``lvsadm --status`` (with each checked real server's health under
  ``lvsd --keepalived-conf``), ``lvsadm --reload``;
* ``lvsadm --sysctl NAME [VALUE]``: read or set a net.ipv4.vs sysctl of lvsd's table;
* ``lvsadm --drain -t|-u|-f SERVICE -r SERVER [--timeout S]``: weight 0 at
  once, the server deleted when its active connections reach 0 or at the
  timeout, progress printed;
* ``--no-autostart`` (or ``LVSADM_NO_AUTOSTART=1``): never start lvsd.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import TextIO

from .client import Client, DaemonUnavailable, PermissionDenied

INIT_FAILED = (
    "Can't initialize ipvs: {}\nAre you sure that IP Virtual Server is built in the kernel or as module?"
)


def _extras(argv: list[str], client: Client) -> int | None:
    """pylvs's own options; None if argv is plain ipvsadm."""
    if not argv:
        return None
    head = argv[0]
    if head == "--json":
        what = argv[1] if len(argv) > 1 else "services"
        reply = client.call("json", what=what)
        if not reply.get("ok", True):
            print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
            return 2
        print(json.dumps(reply["data"], indent=2))
        return 0
    if head == "--proc":
        reply = client.call("proc", name=argv[1] if len(argv) > 1 else "ip_vs")
        if not reply.get("ok", True):
            print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
            return 2
        sys.stdout.write(reply["text"])
        return 0
    if head == "--status":
        reply = client.call("status")
        data = reply["data"]
        for key in ("pid", "netns", "uptime", "services", "connections"):
            print(f"{key}: {data[key]}")
        for plane in data["planes"]:
            print(f"data plane: {plane}")
        for warning in data["warnings"]:
            print(f"warning: {warning}")
        sync = data.get("sync") or {}
        for state, d in sorted((sync.get("daemons") or {}).items()):
            print(f"sync {state}: {json.dumps(d, sort_keys=True)}")
        if sync.get("counters"):
            print(f"sync counters: {json.dumps(sync['counters'], sort_keys=True)}")
        print_health(data.get("health"))
        return 0
    if head == "--drain":
        return drain(argv[1:], client)
    if head == "--sysctl":
        # lvsadm --sysctl NAME [VALUE]: net.ipv4.vs.NAME of lvsd's table
        if len(argv) < 2:
            print("lvsadm: --sysctl needs a name", file=sys.stderr)
            return 2
        args: dict[str, str] = {"name": argv[1]}
        if len(argv) > 2:
            args["value"] = " ".join(argv[2:])
        reply = client.call("sysctl", **args)
        if not reply.get("ok", True):
            print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
            return 2
        print(reply["value"])
        return 0
    if head == "--reload":
        reply = client.call("reload")
        if not reply.get("ok", True):
            print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
            return 1
        print(f"reloaded: {reply.get('changes')}")
        return 0
    return None


DRAIN_USAGE = "usage: lvsadm --drain -t|-u|-f SERVICE -r SERVER [--timeout SECONDS]"


def drain(args: list[str], client: Client) -> int:
    """``--drain``: weight 0 at once, the server deleted when its active
    connections reach 0 or at the timeout (default 300 s); lvsd does the
    work (it goes on if lvsadm is interrupted), lvsadm prints the progress."""
    import time

    service: list[str] = []
    server = ""
    timeout: float | None = None
    i = 0
    while i < len(args):
        opt = args[i]
        val = args[i + 1] if i + 1 < len(args) else None
        if val is None:
            print(DRAIN_USAGE, file=sys.stderr)
            return 2
        if opt in ("-t", "-u", "-f", "--tcp-service", "--udp-service", "--fwmark-service", "--sctp-service"):
            service = [opt, val]
        elif opt in ("-r", "--real-server"):
            server = val
        elif opt == "--timeout":
            try:
                timeout = float(val)
            except ValueError:
                print(f"lvsadm: --timeout {val}: not a number of seconds", file=sys.stderr)
                return 2
        else:
            print(DRAIN_USAGE, file=sys.stderr)
            return 2
        i += 2
    if not service or not server:
        print(DRAIN_USAGE, file=sys.stderr)
        return 2
    extra = {} if timeout is None else {"timeout": timeout}
    reply = client.call("drain", service=service, server=server, **extra)
    if not reply.get("ok", True):
        print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
        return 1
    last = None
    while True:
        p = reply["progress"]
        line = (
            f"{server}: {p['state']}, weight 0, {p['active']} active / {p['inactive']} inactive connections,"
            f" {p['elapsed']:g} s elapsed, {p['left']:g} s left"
        )
        if p["state"] != "draining":
            done = {
                "deleted": "deleted: no active connections left",
                "timeout": f"deleted at the timeout with {p['active']} active connections",
                "gone": "already gone from the table",
            }[p["state"]]
            print(f"{server}: {done} after {p['elapsed']:g} s", flush=True)
            return 0
        key = (p["active"], p["inactive"], int(p["left"]) // 10)
        if key != last:
            print(line, flush=True)
            last = key
        time.sleep(0.5)
        reply = client.call("drain", service=service, server=server, status=True)
        if not reply.get("ok", True):
            print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
            return 1


def print_health(health: list[dict] | None) -> None:
    """``--status``: one line per checked real server (keepalived.conf)."""
    if not health:
        return
    for vs in health:
        quorum = "up" if vs["quorum_up"] else "DOWN"
        print(f"virtual server {vs['virtual_server']} (quorum {quorum}):")
        for rs in vs["real_servers"]:
            line = f"  {rs['server']} {rs['state']} since {rs['since']:.1f}s, weight {rs['weight']}"
            line += f", checkers {'+'.join(rs['checkers']) or 'none'}"
            if rs["state"] == "down" and rs["failed_checker"]:
                line += f", failed: {rs['failed_checker']}: {rs['last_failure']}"
            print(line)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulate":
        from .simulate import main as simulate_main

        return simulate_main(argv[1:])
    if argv and argv[0] == "lab":
        from teaching.lab import main as lab_main

        return lab_main(argv[1:])
    autostart = os.environ.get("LVSADM_NO_AUTOSTART", "") not in ("1", "yes", "true")
    if "--no-autostart" in argv:
        argv.remove("--no-autostart")
        autostart = False
    try:
        with Client(autostart=autostart) as client:
            rc = _extras(argv, client)
            if rc is not None:
                return rc
            stdin = ""
            if _wants_stdin(argv):
                stdin = sys.stdin.read()
            reply = client.call("ipvsadm", argv=argv, stdin=stdin)
    except PermissionDenied as exc:
        print(INIT_FAILED.format(exc), file=sys.stderr)
        return 2
    except (DaemonUnavailable, OSError) as exc:
        print(INIT_FAILED.format(exc), file=sys.stderr)
        return 2
    if not reply.get("ok", True):
        print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
        return 255
    _write_raw(sys.stdout, reply["stdout"])
    _write_raw(sys.stderr, reply["stderr"])
    return int(reply["rc"])


def _write_raw(stream: TextIO, text: str) -> None:
    """Write as ipvsadm would: arguments that were not UTF-8 travel as
    surrogate escapes and go out as the bytes they were."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text)
        return
    stream.flush()
    buffer.write(text.encode("utf-8", "surrogateescape"))
    buffer.flush()


def _wants_stdin(argv: list[str]) -> bool:
    """-R / --restore read rules from standard input."""
    for arg in argv:
        if arg in ("-R", "--restore"):
            return True
        if arg.startswith("-") and not arg.startswith("--") and "R" in arg[1:]:
            return True
    return False


def save_main(argv: list[str] | None = None) -> int:
    """``lvsadm-save [-n]``: ipvsadm-save, i.e. ``lvsadm -S [-n]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return main(["-S", *args])


def restore_main(argv: list[str] | None = None) -> int:
    """``lvsadm-restore``: as ipvsadm-restore, drop ``#`` comment lines, clear
    the table, then ``-R`` the rest from standard input."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print("usage: lvsadm-restore < rules", file=sys.stderr)
        return 2
    rules = "".join(line for line in sys.stdin.read().splitlines(keepends=True) if not line.startswith("#"))
    rc = main(["-C"])
    if rc != 0:
        return rc
    sys.stdin = io.StringIO(rules)
    return main(["-R"])


if __name__ == "__main__":
    raise SystemExit(main())
