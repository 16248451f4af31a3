"""Shared helpers for tests that run real lvsd processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from lvs.addr import parse_ip
from lvsd.names import socket_address

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def is_root() -> bool:
    return os.geteuid() == 0


def can_netns() -> str | None:
    """None if network namespaces can be made here, else the reason."""
    if not is_root():
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    name = f"pylvs-probe-{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False)
    return None


def unique_socket() -> str:
    return f"pylvs-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def lvsadm(
    socket_name: str,
    *args: str,
    stdin: str | None = None,
    prefix: list[str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LVSD_SOCKET": socket_name, "LVSADM_NO_AUTOSTART": "1"}
    return subprocess.run(
        [*(prefix or []), PY, "-m", "lvsd.cli", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=ROOT,
    )  # fmt: skip


def wait_ready(socket_name: str, prefix: list[str] | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lvsadm(socket_name, "-L", "-n", prefix=prefix).returncode == 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"lvsd on {socket_name} did not answer")


@contextmanager
def running_lvsd(
    *extra: str,
    prefix: list[str] | None = None,
    socket_name: str | None = None,
    stderr: int | IO[Any] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start ``lvsd --foreground`` on a fresh control socket (``stderr`` where
    its log goes, default a temporary file: lvsd logs every table change, and
    an undrained pipe would block it); yield the socket name."""
    name = socket_name or unique_socket()
    own_log = tempfile.TemporaryFile() if stderr is None else None  # noqa: SIM115 - closed below
    stderr = own_log if own_log is not None else stderr
    proc = subprocess.Popen(
        [*(prefix or []), PY, "-m", "lvsd.main", "--foreground", "--socket", name, *extra],
        stdout=subprocess.DEVNULL, stderr=stderr, text=True, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        wait_ready(name, prefix)
        yield name
    finally:
        terminate(proc)
        if own_log is not None:
            own_log.close()


def terminate(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def control_exchange(name: str, payload: bytes, timeout: float) -> list[dict[str, Any]]:
    """Send raw bytes on lvsd's control socket, half-close, and return every
    JSON reply line until lvsd hangs up."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(socket_address(name))
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # lvsd may answer and hang up before reading everything
    data = b""
    while True:
        try:
            chunk = s.recv(1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    s.close()
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def ip(text: str) -> int:
    """The core's integer for an address literal (IPv4 or IPv6)."""
    return parse_ip(text)[1]
