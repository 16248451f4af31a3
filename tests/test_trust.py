"""lvsd as a skeptical operator tries it: nobody can impersonate it, a crash
does not lose the table, and every change leaves a line in the log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsd.client import Client
from lvsd.names import socket_address

from .helpers import PY, ROOT, is_root, lvsadm, running_lvsd, unique_socket

NOBODY = 65534
SYSTEM_PY = shutil.which("python3", path="/usr/bin:/bin")

# a squatter run as nobody: it takes every name it can (the abstract name an
# older lvsd used, the filesystem path if it may) and records what it gets
SQUATTER = r"""
import json, os, socket, sys, time
path, abstract, log, ready = sys.argv[1:5]
took = []
socks = []
for label, addr in (("abstract", "\0" + abstract), ("path", path)):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(addr); s.listen(8); s.setblocking(False); socks.append(s); took.append(label)
    except OSError as exc:
        took.append(f"{label}: {exc.strerror}")
open(ready, "w").write(json.dumps(took))
got = b""
deadline = time.time() + float(sys.argv[5])
while time.time() < deadline:
    # keep trying to replace lvsd's socket, as a squatter would
    if "path" not in took:
        try:
            os.unlink(path)
            took.append("unlinked lvsd's socket")
        except OSError:
            pass
    for s in socks:
        try:
            c, _ = s.accept()
        except BlockingIOError:
            continue
        c.settimeout(1)
        try:
            c.sendall(b'{"id":1,"ok":true,"rc":0,"stdout":"FAKE TABLE\\n","stderr":"","seq":1}\n')
            got += c.recv(65536)
        except OSError:
            pass
        c.close()
    time.sleep(0.005)
open(log, "w").write(json.dumps({"took": took, "got": got.decode(errors="replace")}))
"""


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory nobody can write in (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix=f"pylvs-trust-{os.getpid()}-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


needs_root = pytest.mark.skipif(not is_root() or SYSTEM_PY is None, reason="needs root and /usr/bin/python3")


def _squat(path: str, abstract: str, seconds: float, tmp: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    log, ready = tmp / "squatter.json", tmp / "ready.json"
    assert SYSTEM_PY is not None
    proc = subprocess.Popen(
        [SYSTEM_PY, "-c", SQUATTER, path, abstract, str(log), str(ready), str(seconds)],
        preexec_fn=_as_nobody, cwd="/",
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline, "the squatter did not start"
        time.sleep(0.02)
    return proc, log, ready


@needs_root
def test_nobody_cannot_take_lvsds_name_before_or_after_it_starts(open_tmp: Path) -> None:
    """Test point 1: a nobody process holding lvsd's old abstract name and
    trying for its socket path, before and while lvsd runs, gets none of
    root's commands and answers none; lvsd still starts."""
    name = unique_socket()
    path = socket_address(name)
    proc, log, ready = _squat(path, name + ".ctl", 6, open_tmp)
    took = json.loads(ready.read_text())
    assert took[0] == "abstract"  # it holds the name an abstract-socket lvsd used
    assert took[1].startswith("path: ")  # but not lvsd's socket path
    with running_lvsd("--no-nat", "--no-dr", socket_name=name):
        r = lvsadm(name, "-A", "-t", "10.0.0.1:80", "-s", "rr")
        assert r.returncode == 0, r.stderr
        with Client(autostart=False, name=name) as c:
            lvsd_pid = c.call("status")["data"]["pid"]
            assert c.call("ipvsadm", argv=["-L", "-n"], stdin="")["stdout"].count("TCP  10.0.0.1:80 rr") == 1
        proc.wait(timeout=20)
        result = json.loads(log.read_text())
        assert "unlinked lvsd's socket" not in result["took"]
        assert result["got"] == ""  # root's commands never reached it
        assert "FAKE TABLE" not in lvsadm(name, "-L", "-n").stdout
        with Client(autostart=False, name=name) as c:
            assert c.call("status")["data"]["pid"] == lvsd_pid
        # nobody itself is told no, in ipvsadm's words
        r = subprocess.run(
            [SYSTEM_PY or "", "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
             "print(s.recv(4096).decode())", path],
            preexec_fn=_as_nobody, capture_output=True, text=True, timeout=30, check=False, cwd="/",
        )  # fmt: skip
        assert "Permission denied (you must be root)" in r.stdout


@needs_root
def test_lvsadm_refuses_a_socket_held_by_another_user(open_tmp: Path) -> None:
    """A control socket (an explicit path) answered by nobody's process:
    lvsadm checks SO_PEERCRED first, sends nothing and says why."""
    path = str(open_tmp / "lvsd.ctl")
    proc, log, _ = _squat(path, unique_socket(), 3, open_tmp)
    r = lvsadm(path, "-A", "-t", "10.0.0.1:80", "-s", "rr")
    proc.wait(timeout=20)
    assert r.returncode == 2
    assert "SECURITY" in r.stderr and "uid 65534 (nobody)" in r.stderr and "nothing was sent" in r.stderr
    assert json.loads(log.read_text())["got"] == ""
    assert "FAKE TABLE" not in r.stdout


def test_a_second_lvsd_is_refused_and_the_first_keeps_its_socket() -> None:
    with running_lvsd("--no-nat", "--no-dr") as name:
        r = subprocess.run(
            [PY, "-m", "lvsd.main", "--foreground", "--no-nat", "--no-dr", "--socket", name],
            capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
        )  # fmt: skip
        assert r.returncode == 1 and "another lvsd (pid" in r.stderr, r.stderr
        assert lvsadm(name, "-L", "-n").returncode == 0
