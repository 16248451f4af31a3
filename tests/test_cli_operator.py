"""lvsadm and lvsd as an operator meets them: help and version (ipvsadm's
text byte for byte, then pylvs's), unknown options named, a closed output
pipe, --sysctl as sysctl prints, --shutdown removing VIPs and nftables
tables."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from lvs import __version__

from .helpers import PY, ROOT, can_netns, lvsadm, running_lvsd, unique_socket

pytestmark = pytest.mark.timeout(120)
GOLDEN = ROOT / "tests" / "data" / "golden"


def test_help_and_version_need_no_daemon() -> None:
    nowhere = unique_socket()  # nothing listens there, and nothing may be started
    for word in ("-h", "--help", "-hL"):
        r = lvsadm(nowhere, word)
        assert r.returncode == 0 and r.stderr == "", (word, r.stderr)
        ipvsadm = (GOLDEN / "ipvsadm_--help.txt").read_text()
        assert r.stdout.startswith(ipvsadm), word
        extras = r.stdout[len(ipvsadm) :]
        for extra in ("simulate", "--json", "--proc", "--status", "--reload", "--sysctl", "--shutdown",
                      "--no-autostart", "--http"):  # fmt: skip
            assert extra in extras, extra
    for word in ("-v", "--version"):
        r = lvsadm(nowhere, word)
        line = (GOLDEN / "ipvsadm_--version.txt").read_text().rstrip("\n")
        assert (r.returncode, r.stdout, r.stderr) == (0, f"{line} (pylvs {__version__})\n", "")


def test_unknown_option_is_named() -> None:
    with running_lvsd("--no-nat", "--no-dr") as name:
        r = lvsadm(name, "--bogus")
        assert r.returncode == 255
        assert r.stderr == "lvsadm: unknown option --bogus\nTry `ipvsadm -h' or 'ipvsadm --help' for more information.\n"
        # where ipvsadm names it itself, its words stay as they are
        r = lvsadm(name, "-L", "--nosuchoption")
        assert (r.returncode, r.stderr) == (255, (GOLDEN / "err_unknown_option.stderr.txt").read_text())


def test_closed_pipe_is_quiet_and_sysctl() -> None:
    with running_lvsd("--no-nat", "--no-dr") as name:
        rules = "".join(f"-A -t 10.0.{i // 250}.{i % 250}:80 -s rr\n" for i in range(3000))
        assert lvsadm(name, "-R", stdin=rules).returncode == 0
        env = {**os.environ, "LVSD_SOCKET": name, "LVSADM_NO_AUTOSTART": "1"}
        for argv in (["--json", "conns"], ["--json", "services"], ["-L", "-n"], ["-S", "-n"]) * 2:
            proc = subprocess.Popen(
                [PY, "-m", "lvsd.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT
            )
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.readline()
            proc.stdout.close()  # as `| head -1` does
            err = proc.stderr.read().decode()
            proc.wait(30)
            assert err == "", (argv, err)
            assert proc.returncode in (0, 141), (argv, proc.returncode)

        def sysctl(*args: str) -> tuple[int, str, str]:
            r = lvsadm(name, "--sysctl", *args)
            return r.returncode, r.stdout, r.stderr

        assert sysctl("net.ipv4.vs.conntrack") == (0, "net.ipv4.vs.conntrack = 0\n", "")
        assert sysctl("net.ipv4.vs.conntrack=1") == (0, "net.ipv4.vs.conntrack = 1\n", "")
        assert sysctl("-w", "net.ipv4.vs.sync_threshold=3 10") == (0, "net.ipv4.vs.sync_threshold = 3\t10\n", "")
        assert sysctl("net.ipv4.vs.conntrack") == (0, "net.ipv4.vs.conntrack = 1\n", "")
        rc, out, err = sysctl("net.ipv4.vs.nosuch")
        assert (rc, out) == (255, "")
        assert err == "sysctl: cannot stat /proc/sys/net/ipv4/vs/nosuch: No such file or directory\n"
        rc, out, err = sysctl("net.ipv4.vs.sync_version=7")
        assert (rc, out, err) == (255, "", 'sysctl: setting key "net.ipv4.vs.sync_version": Invalid argument\n')
        rc, out, _ = sysctl()
        lines = out.splitlines()
        assert rc == 0 and lines == sorted(lines) and "net.ipv4.vs.expire_nodest_conn = 0" in lines
        assert all(line.startswith("net.ipv4.vs.") and " = " in line for line in lines)
        # the methods of the sysctl object are not sysctls
        assert sysctl("names")[0] == 255


NETNS_REASON = can_netns()


@pytest.mark.skipif(NETNS_REASON is not None, reason=NETNS_REASON or "")
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (make netdeps)")
def test_shutdown_removes_vips_and_nft_tables(tmp_path: Path) -> None:
    ns = f"pylvs-i13-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        exec_ns = ["ip", "netns", "exec", ns]
        subprocess.run([*exec_ns, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*exec_ns, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"], check=True)
        subprocess.run([*exec_ns, "ip", "link", "set", "d1", "up"], check=True)
        subprocess.run([*exec_ns, "ip", "addr", "add", "192.0.2.1/24", "dev", "d0"], check=True)
        subprocess.run([*exec_ns, "ip", "link", "set", "d0", "up"], check=True)
        name = unique_socket()
        log = open(tmp_path / "lvsd.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [*exec_ns, PY, "-m", "lvsd.main", "--foreground", "--socket", name],
            stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 15
            while lvsadm(name, "-L", "-n", prefix=exec_ns).returncode != 0:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            for argv in (
                ["-A", "-t", "198.51.100.7:80", "-s", "rr"],
                ["-a", "-t", "198.51.100.7:80", "-r", "192.0.2.10:80", "-m"],
                ["-A", "-t", "198.51.100.8:80", "-s", "rr"],
                ["-a", "-t", "198.51.100.8:80", "-r", "192.0.2.11:80", "-g"],
            ):
                r = lvsadm(name, *argv, prefix=exec_ns)
                assert r.returncode == 0, (argv, r.stderr)
            addrs = subprocess.run([*exec_ns, "ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
            tables = subprocess.run([*exec_ns, "nft", "list", "tables"], capture_output=True, text=True).stdout
            assert "198.51.100.7" in addrs, addrs
            assert "pylvs" in tables, tables
            r = lvsadm(name, "--shutdown", prefix=exec_ns)
            assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
            assert proc.wait(5) == 0  # gone when lvsadm returns (a zombie until reaped here)
            addrs = subprocess.run([*exec_ns, "ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
            tables = subprocess.run([*exec_ns, "nft", "list", "tables"], capture_output=True, text=True).stdout
            assert "198.51.100.7" not in addrs, addrs
            assert "pylvs" not in tables, tables
            r = lvsadm(name, "--shutdown", prefix=exec_ns)
            assert r.returncode == 0 and "no lvsd is running" in r.stderr
            assert "Traceback" not in (tmp_path / "lvsd.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            log.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_lvsd_returns_when_serving_and_reports_a_taken_port() -> None:
    """``lvsd --http ...`` (daemonizing) returns once lvsd serves, so the next
    lvsadm finds it (no race with auto-start); a taken --http port is
    reported by the command that started lvsd, with status 1."""
    from .natlab import free_port

    name, other = unique_socket(), unique_socket()
    port = free_port()
    env = {**os.environ, "LVSADM_NO_AUTOSTART": "1"}
    start = [PY, "-m", "lvsd.main", "--no-dr", "--no-nat", "--http", f"127.0.0.1:{port}"]
    try:
        r = subprocess.run([*start, "--socket", name], capture_output=True, text=True, timeout=60, env=env)
        assert (r.returncode, r.stderr) == (0, "")
        assert lvsadm(name, "-L", "-n").returncode == 0  # at once: lvsd was serving when it returned
        r = subprocess.run([*start, "--socket", other], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 1 and "address already in use" in r.stderr, r.stderr
        assert lvsadm(other, "-L", "-n").returncode != 0  # it did not stay behind
    finally:
        lvsadm(name, "--shutdown")
        lvsadm(other, "--shutdown")
