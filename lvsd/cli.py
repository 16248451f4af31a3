"""``lvsadm``: ipvsadm's command line, talking to this namespace's lvsd.

``lvsadm ARGS`` behaves as ``ipvsadm ARGS`` (same grammar, output and exit
codes): the arguments travel to lvsd, which parses and runs them against its
tables and sends back what ipvsadm would print.  pylvs extras:

* ``lvsadm simulate SCENARIO``: replay an oracle scenario in-process;
* ``lvsadm --json [services|conns|timeouts|daemons|sysctl]``: listings as
  JSON, for scripts (services carry their real servers, counters and rates);
* ``lvsadm --proc ip_vs|ip_vs_conn|ip_vs_stats``: the kernel's /proc views;
* ``lvsadm --status``, ``lvsadm --reload``;
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
        print_health(data.get("health"))
        return 0
    if head == "--reload":
        reply = client.call("reload")
        if not reply.get("ok", True):
            print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
            return 1
        print(f"reloaded: {reply.get('changes')}")
        return 0
    return None


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
