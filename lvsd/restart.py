"""Hitless restart: a new lvsd takes over the listening sockets of the old
one, which stops accepting and drains its established relays.

The kernel's IPVS never stops serving while ipvsadm or keepalived restarts;
HAProxy reloads by handing its listening sockets to the new process.  lvsd
does the same with inherited descriptors: ``lvsadm --restart`` (or SIGUSR2)
makes the running lvsd write its state file, then start a new lvsd with the
control socket, its lock, every NAT listening socket (TCP and UDP) and a
readiness pipe as inherited descriptors, described in ``LVSD_INHERIT``.  The
new lvsd restores the table from the state file, adopts the VIPs the old one
added, serves on the inherited sockets (never closed, so the kernel's accept
queue keeps every connection that arrives meanwhile) and writes ``ready`` on
the pipe.  Only then does the old lvsd stop accepting; it relays its
established TCP connections until they end (at most ``DRAIN_TIMEOUT``
seconds) and exits without removing VIPs, nftables rules or the socket.

Not carried over: UDP flows of the old process (their next datagram makes a
new flow in the new lvsd, replies to the old flow's upstream socket are
lost), and the old process's connection entries (persistence templates
included), which end with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("lvsd")

ENV = "LVSD_INHERIT"
#: seconds the new lvsd has to say it is ready
READY_TIMEOUT = 60.0
#: seconds the old lvsd keeps relaying its established connections
DRAIN_TIMEOUT = 300.0


@dataclass
class Inheritance:
    """What a new lvsd got from its predecessor."""

    ctl: int
    lock: int | None
    ready: int
    old_pid: int
    #: (protocol, af, host, port) -> socket
    listeners: dict[tuple[int, int, str, int], socket.socket] = field(default_factory=dict)
    vips: list[tuple[int, str]] = field(default_factory=list)


def inherited() -> Inheritance | None:
    """The descriptors a predecessor handed over (``LVSD_INHERIT``), once."""
    raw = os.environ.pop(ENV, None)
    if not raw:
        return None
    obj = json.loads(raw)
    listeners = {}
    for proto, af, host, port, fd in obj.get("listeners", []):
        kind = socket.SOCK_DGRAM if proto == socket.IPPROTO_UDP else socket.SOCK_STREAM
        sock = socket.socket(af, kind, 0, fileno=fd)
        sock.setblocking(False)
        listeners[(proto, af, host, port)] = sock
    return Inheritance(
        ctl=obj["ctl"],
        lock=obj.get("lock"),
        ready=obj["ready"],
        old_pid=obj["old_pid"],
        listeners=listeners,
        vips=[(int(af), str(host)) for af, host in obj.get("vips", [])],
    )


def signal_ready(inh: Inheritance) -> None:
    """Tell the predecessor this lvsd serves; close what nobody took."""
    try:
        os.write(inh.ready, f"ready {os.getpid()}\n".encode())
    except OSError as exc:
        log.warning("could not tell lvsd %d that we are ready: %s", inh.old_pid, exc)
    os.close(inh.ready)
    for key, sock in list(inh.listeners.items()):
        log.info("inherited listener %s/%s:%d is not served any more: closed", key[0], key[2], key[3])
        sock.close()
    inh.listeners.clear()


async def start_successor(argv: list[str], fds: dict[str, Any], timeout: float = READY_TIMEOUT) -> int:
    """Start a new lvsd with ``fds`` (ctl, lock, listeners, vips) inherited;
    return its pid once it is ready, or raise RuntimeError."""
    read_end, write_end = os.pipe()
    passed = [fds["ctl"], write_end] + ([fds["lock"]] if fds.get("lock") is not None else [])
    passed += [entry[4] for entry in fds["listeners"]]
    env = {**os.environ, ENV: json.dumps({**fds, "ready": write_end, "old_pid": os.getpid()})}
    cmd = [sys.executable, "-m", "lvsd.main", *argv, "--started-by", "restart"]
    try:
        proc = subprocess.Popen(
            cmd, pass_fds=passed, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
    finally:
        os.close(write_end)
    loop = asyncio.get_running_loop()
    try:
        line = await asyncio.wait_for(loop.run_in_executor(None, _read_line, read_end), timeout)
    except TimeoutError:
        line = ""
    finally:
        os.close(read_end)
    if not line.startswith("ready "):
        if proc.poll() is None and "--foreground" in argv:
            proc.kill()
        raise RuntimeError(f"the new lvsd (pid {proc.pid}) did not become ready (exit status {proc.poll()})")
    if "--foreground" in argv:
        # reap it if it ever exits while we still run (a daemon thread: the
        # default executor would keep this lvsd from exiting)
        threading.Thread(target=proc.wait, name="lvsd-reap", daemon=True).start()
    else:
        proc.wait()  # the parent of a daemonizing lvsd exits at once
    return int(line.split()[1])


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")
