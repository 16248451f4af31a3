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
  ``lvsd --keepalived-conf``), ``lvsadm --reload``, ``lvsadm --shutdown``;
* ``lvsadm --sysctl [net.ipv4.vs.NAME[=VALUE]]`` (or ``--sysctl NAME VALUE``):
  IPVS's sysctls of lvsd's table, printed as ``sysctl`` prints them;
* ``lvsadm --drain -t|-u|-f SERVICE -r SERVER [--timeout S]``: weight 0 at
  once, the server deleted when its active connections reach 0 or at the
  timeout, progress printed;
* ``--no-autostart`` (or ``LVSADM_NO_AUTOSTART=1``): never start lvsd.

``-h``/``--help`` and ``-v``/``--version`` need no daemon: ipvsadm's text
(byte for byte), then pylvs's extras or version.  A closed output pipe
(``lvsadm -L -n | head -1``) ends lvsadm quietly, as SIGPIPE ends ipvsadm.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import TextIO

from lvs import __version__

from .client import Client, DaemonUnavailable, Impersonation, PermissionDenied

#: the extras, listed by ``lvsadm --help`` after ipvsadm's own text
EXTRAS_HELP = f"""
pylvs {__version__} extras (lvsadm talks to lvsd, this namespace's userspace IPVS):
  lvsadm simulate SCENARIO [--seed N] [--report]  replay a scenario in-process
  lvsadm --json [services|conns|timeouts|daemons|sysctl]  listings as JSON
  lvsadm --proc [ip_vs|ip_vs_conn|ip_vs_stats]  the kernel's /proc/net views
  lvsadm --status                     lvsd's pid, data planes, warnings, health
  lvsadm --reload                     re-read lvsd's --config/--keepalived-conf (as SIGHUP)
  lvsadm --sysctl [net.ipv4.vs.NAME[=VALUE]]  read or set IPVS's sysctls
  lvsadm --drain -t|-u|-f SERVICE -r SERVER [--timeout S]  drain a real server, then delete it
  lvsadm --shutdown                   stop lvsd (its VIPs and nftables tables go with it)
  lvsadm --restart                    hitless restart: a new lvsd takes the sockets, the old one drains
  --no-autostart                      never start lvsd (also LVSADM_NO_AUTOSTART=1)
lvsd --http ADDR:PORT serves /metrics (node_exporter's IPVS names) and a live status page.
"""

SYSCTL_PREFIX = "net.ipv4.vs."
SHUTDOWN_WAIT = 20.0  # seconds lvsadm --shutdown waits for lvsd to be gone

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
        for key in ("pid", "netns", "uptime", "services", "connections", "log", "state"):
            if key in data:
                print(f"{key}: {data[key]}")
        if data.get("state_problem"):
            print(f"warning: {data['state_problem']}")
        restored = data.get("restored") or {}
        if restored:
            how = "did not stop cleanly" if restored.get("unclean") else "stopped cleanly"
            print(f"restored: {restored['services']} services, {restored['dests']} real servers from "
                  f"{restored['path']} (previous lvsd pid {restored['previous_pid']} {how})")  # fmt: skip
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
        return _sysctl(argv[1:], client)
    if head == "--restart":
        reply = client.call("restart")
        if not reply.get("ok", True):
            print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
            return 1
        print(f"restarted: lvsd {reply['new_pid']} serves; lvsd {reply['old_pid']} drains its connections")
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
            since = rs.get("since_utc") or f"{rs['since']:.1f} s after start"
            line = f"  {rs['server']} {rs['state']} since {since}, weight {rs['weight']}"
            line += f", checkers {'+'.join(rs['checkers']) or 'none'}"
            if rs["state"] == "down" and rs["failed_checker"]:
                line += f", failed: {rs['failed_checker']}: {rs['last_failure']}"
            print(line)


def _sysctl(args: list[str], client: Client) -> int:
    """``lvsadm --sysctl [-w] [net.ipv4.vs.NAME[=VALUE]] ...``: as ``sysctl``
    (procps) reads and writes /proc/sys/net/ipv4/vs: ``NAME = VALUE`` lines,
    every IPVS sysctl without a name, status 255 for an unknown key or a
    value the kernel refuses."""
    words = [a for a in args if a != "-w"]
    if len(words) > 1 and not any("=" in w or w.startswith(SYSCTL_PREFIX) for w in words):
        words = [f"{words[0]}={' '.join(words[1:])}"]  # the older form: --sysctl NAME VALUE
    if not words:
        data = client.call("json", what="sysctl")["data"]
        words = [SYSCTL_PREFIX + name for name in sorted(data)]
    rc = 0
    for word in words:
        key, eq, value = word.partition("=")
        key = key.strip().replace("/", ".")
        name = key[len(SYSCTL_PREFIX) :] if key.startswith(SYSCTL_PREFIX) else key
        full = SYSCTL_PREFIX + name
        reply = client.call("sysctl", name=name)  # an unknown key is "cannot stat", set or read
        if eq and reply.get("ok", True):
            reply = client.call("sysctl", name=name, value=value.strip())
        if reply.get("ok", True):
            print(f"{full} = {reply['text']}")
        elif str(reply.get("error", "")).startswith("unknown sysctl"):
            path = "/proc/sys/" + full.replace(".", "/")
            print(f"sysctl: cannot stat {path}: No such file or directory", file=sys.stderr)
            rc = 255
        else:
            print(f'sysctl: setting key "{full}": Invalid argument', file=sys.stderr)
            rc = 255
    return rc


def _shutdown() -> int:
    """``lvsadm --shutdown``: ask this namespace's lvsd to stop, then wait
    until its process is gone (it removes its VIPs and nftables tables
    first).  Never starts one."""
    try:
        with Client(autostart=False) as client:
            reply = client.call("shutdown")
    except DaemonUnavailable:
        print("lvsadm: no lvsd is running in this network namespace", file=sys.stderr)
        return 0
    if not reply.get("ok", True):
        print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
        return 1
    pid = int(reply.get("pid", 0))
    deadline = time.monotonic() + SHUTDOWN_WAIT
    while _alive(pid):
        if time.monotonic() > deadline:
            print(f"lvsadm: lvsd (pid {pid}) did not stop within {SHUTDOWN_WAIT:g} s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    return 0


def _alive(pid: int) -> bool:
    """Is process ``pid`` still running (a zombie counts as gone)?"""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _local(argv: list[str]) -> int | None:
    """``-h``/``--help`` and ``-v``/``--version`` (however ipvsadm's grammar
    reaches them, e.g. ``-hL``): answered here, without a daemon: ipvsadm's
    own text, then pylvs's extras or version.  None for anything else."""
    if not argv or not argv[0].startswith("-"):
        return None
    from lvs.ctl import IPVS
    from lvs.ipvsadm.commands import run
    from lvs.ipvsadm.grammar import CMD_HELP, CMD_VERSION, UsageError, parse
    from lvs.ipvsadm.names import FilesResolver

    try:
        kind = parse(list(argv), FilesResolver("", "")).kind
    except (UsageError, ValueError, OSError):
        return None
    if kind not in (CMD_HELP, CMD_VERSION):
        return None
    out, err = io.StringIO(), io.StringIO()
    rc = run(list(argv), IPVS(), 0.0, out, err, FilesResolver("", ""))
    text = out.getvalue()
    if kind == CMD_VERSION:
        text = text.rstrip("\n") + f" (pylvs {__version__})\n"
    _write_raw(sys.stdout, text)
    _write_raw(sys.stderr, err.getvalue())
    if kind == CMD_HELP:
        # ipvsadm prints its usage to stderr or stdout; the extras follow it there
        _write_raw(sys.stdout if text else sys.stderr, EXTRAS_HELP)
    return rc


def _unknown_option(argv: list[str]) -> str | None:
    """The first word, if it is an option neither ipvsadm nor pylvs knows
    (ipvsadm itself only says "Try `ipvsadm -h' ...")."""
    from lvs.ipvsadm import grammar, popt

    if not argv or not argv[0].startswith("-") or argv[0] == "-":
        return None
    words = popt.Popt(grammar.OPTIONS, list(argv))
    try:
        words.next_opt()
    except popt.PoptError as exc:
        if exc.code == popt.ERROR_BADOPT:
            return words.bad_option().split("=", 1)[0]
    except popt.NoWordToTake:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (lvsadm ... | head -1): end quietly, as
        # SIGPIPE ends ipvsadm; stdout goes to /dev/null so the exit flush
        # does not complain
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None = None) -> int:
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
    rc = _local(argv)
    if rc is not None:
        return rc
    if argv and argv[0] == "--shutdown":
        return _shutdown()
    try:
        with Client(autostart=autostart) as client:
            if client.started:
                _tell_started(client)
            rc = _extras(argv, client)
            if rc is not None:
                return rc
            stdin = ""
            if _wants_stdin(argv):
                stdin = sys.stdin.read()
            reply = client.call("ipvsadm", argv=argv, stdin=stdin)
    except Impersonation as exc:
        print(f"lvsadm: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # our output's reader left: not a missing kernel module
    except PermissionDenied as exc:
        print(INIT_FAILED.format(exc), file=sys.stderr)
        return 2
    except (DaemonUnavailable, OSError) as exc:
        print(INIT_FAILED.format(exc), file=sys.stderr)
        return 2
    if not reply.get("ok", True):
        print(f"lvsadm: {reply.get('error')}", file=sys.stderr)
        return 255
    unknown = _unknown_option(argv) if reply.get("rc") == 255 else None
    if unknown is not None:
        print(f"lvsadm: unknown option {unknown}", file=sys.stderr)
    _write_raw(sys.stdout, reply["stdout"])
    _write_raw(sys.stderr, reply["stderr"])
    return int(reply["rc"])


def _tell_started(client: Client) -> None:
    """lvsadm had to start lvsd: say so when a previous one died, and what
    the new one restored."""
    try:
        data = client.call("status").get("data", {})
    except (DaemonUnavailable, OSError, ValueError):
        return
    restored = data.get("restored") or {}
    if restored.get("unclean"):
        print(
            f"lvsadm: lvsd was not running: the previous lvsd (pid {restored.get('previous_pid')}) "
            f"did not stop cleanly; started lvsd {data.get('pid')}, which restored "
            f"{restored.get('services')} services and {restored.get('dests')} real servers "
            f"from {restored.get('path')} (log: {data.get('log')})",
            file=sys.stderr,
        )
        for problem in restored.get("problems", []):
            print(f"lvsadm: restoring: {problem}", file=sys.stderr)
    if data.get("state_problem"):
        print(f"lvsadm: warning: {data['state_problem']}", file=sys.stderr)


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
