"""lvsd and lvsadm as processes: the control socket, bad input, concurrency,
permissions, network namespaces, config reload, state save/restore."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from lvs.ctl import IPVS
from lvs.ipvsadm.commands import run
from lvs.ipvsadm.names import NullResolver
from lvsd.client import Client

from .helpers import PY, ROOT, can_netns, control_exchange, is_root, lvsadm, running_lvsd, unique_socket

NO_NETNS = can_netns()


@pytest.fixture
def daemon() -> str:
    with running_lvsd("--no-nat") as name:
        yield name


def raw_exchange(name: str, payload: bytes, timeout: float = 10) -> list[dict]:
    """Send raw bytes on the control socket; return the JSON replies."""
    return control_exchange(name, payload, timeout)


def test_lvsadm_talks_to_its_daemon(daemon: str) -> None:
    assert lvsadm(daemon, "-A", "-t", "10.0.0.1:80", "-s", "rr").returncode == 0
    r = lvsadm(daemon, "-a", "-t", "10.0.0.1:80", "-r", "10.1.0.1:80", "-m", "-w", "3")
    assert r.returncode == 0, r.stderr
    out = lvsadm(daemon, "-L", "-n").stdout
    assert "TCP  10.0.0.1:80 rr" in out
    assert "  -> 10.1.0.1:80                  Masq    3      0          0         " in out
    dup = lvsadm(daemon, "-A", "-t", "10.0.0.1:80", "-s", "rr")
    assert (dup.returncode, dup.stderr) == (255, "Service already exists\n")


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\x00\xff\xfe garbage\n", "not a JSON message"),
        (b"[1, 2, 3]\n", "a message must be a JSON object"),
        (b'{"op": "format-disk"}\n', "unknown operation"),
        (b'{"op": "ipvsadm", "argv": "-C"}\n', "argv must be a list of strings"),
        (b'{"op": "ipvsadm", "argv": [1, 2]}\n', "argv must be a list of strings"),
        (b'{"op": "ipvsadm", "argv": ["-R"], "stdin": 5}\n', "stdin must be a string"),
        (b'{"op": "ipvsadm", "id": "x", "argv": []}\n', "id must be an integer"),
        (b'{"op": "json", "what": "nonsense"}\n', "unknown view"),
        (b'{"op": "proc", "name": "../../etc/passwd"}\n', "unknown /proc view"),
    ],
)
def test_bad_control_messages_get_an_error_and_change_nothing(daemon: str, payload: bytes, error: str) -> None:
    lvsadm(daemon, "-A", "-u", "10.0.0.2:53", "-s", "rr")
    before = lvsadm(daemon, "-S", "-n").stdout
    replies = raw_exchange(daemon, payload)
    assert len(replies) == 1 and replies[0]["ok"] is False
    assert error in replies[0]["error"]
    assert lvsadm(daemon, "-S", "-n").stdout == before
    assert lvsadm(daemon, "-L", "-n").returncode == 0  # the daemon is still there


def test_oversized_message_is_refused(daemon: str) -> None:
    big = b'{"op": "ipvsadm", "argv": ["' + b"x" * (17 * 1024 * 1024) + b'"]}\n'
    replies = raw_exchange(daemon, big, timeout=30)
    assert replies and replies[0]["ok"] is False and "too large" in replies[0]["error"]
    assert lvsadm(daemon, "-L", "-n").returncode == 0


def test_a_connection_survives_a_bad_line(daemon: str) -> None:
    replies = raw_exchange(daemon, b"nonsense\n" + json.dumps({"id": 7, "op": "ping"}).encode() + b"\n")
    assert [r["ok"] for r in replies] == [False, True]
    assert replies[1]["id"] == 7


def _random_command(rng: random.Random) -> list[str]:
    vip = f"10.0.{rng.randrange(4)}.1:80"
    rip = f"10.1.0.{rng.randrange(1, 6)}:80"
    choice = rng.randrange(7)
    if choice == 0:
        return ["-A", "-t", vip, "-s", rng.choice(["rr", "wlc", "sh", "mh"])]
    if choice == 1:
        return ["-E", "-t", vip, "-s", rng.choice(["rr", "wrr", "lc"])]
    if choice == 2:
        return ["-D", "-t", vip]
    if choice == 3:
        return ["-a", "-t", vip, "-r", rip, "-m", "-w", str(rng.randrange(0, 5))]
    if choice == 4:
        return ["-e", "-t", vip, "-r", rip, "-m", "-w", str(rng.randrange(0, 5))]
    if choice == 5:
        return ["-d", "-t", vip, "-r", rip]
    return ["-Z"]


def test_concurrent_clients_equal_serial_replay(daemon: str) -> None:
    """8 clients x 1000 mixed commands at once leave the table that replaying
    them one by one in the daemon's acknowledgement order gives."""
    acked: list[tuple[int, list[str], int, str]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with Client(autostart=False, name=daemon) as client:
                for _ in range(1000):
                    argv = _random_command(rng)
                    reply = client.call("ipvsadm", argv=argv, stdin="")
                    with lock:
                        acked.append((reply["seq"], argv, reply["rc"], reply["stderr"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors
    assert len(acked) == 8000
    acked.sort()
    assert [a[0] for a in acked] == list(range(acked[0][0], acked[0][0] + 8000))
    ipvs = IPVS()
    for _, argv, rc, stderr in acked:
        out, err = io.StringIO(), io.StringIO()
        assert run(argv, ipvs, 0.0, out, err, NullResolver()) == rc
        assert err.getvalue() == stderr
    serial = io.StringIO()
    run(["-S", "-n"], ipvs, 0.0, serial, io.StringIO(), NullResolver())
    assert lvsadm(daemon, "-S", "-n").stdout == serial.getvalue()


def test_no_daemon_and_no_autostart_is_a_clear_error() -> None:
    r = lvsadm(unique_socket(), "-L", "-n")
    assert r.returncode == 2
    assert r.stderr.startswith("Can't initialize ipvs: ")
    assert "Traceback" not in r.stderr


def test_autostart_starts_a_daemon() -> None:
    name = unique_socket()
    env = {**os.environ, "LVSD_SOCKET": name, "LVSD_ARGS": "--no-nat"}
    env.pop("LVSADM_NO_AUTOSTART", None)
    r = subprocess.run([PY, "-m", "lvsd.cli", "-L", "-n"], env=env, capture_output=True, text=True, timeout=30,
                       check=False, cwd=ROOT)  # fmt: skip
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("IP Virtual Server version 1.2.1 (size=4096)")
    finally:
        with Client(autostart=False, name=name) as c:
            pid = c.call("status")["data"]["pid"]
        os.kill(pid, signal.SIGTERM)


@pytest.mark.skipif(not is_root(), reason="needs root to switch to an unprivileged user")
def test_unprivileged_user_is_refused(daemon: str) -> None:
    """lvsadm run as nobody (in a forked child: nobody may not exec root's
    interpreter) gets ipvsadm's permission error and changes nothing."""
    import pwd

    from lvsd import cli

    nobody = pwd.getpwnam("nobody")
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(rfd)
            sys.stderr = open(wfd, "w", closefd=False)  # noqa: SIM115 - the child's stderr
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.environ.update(LVSD_SOCKET=daemon, LVSADM_NO_AUTOSTART="1")
            code = cli.main(["-A", "-t", "10.9.9.9:80"])
            sys.stderr.flush()
        except BaseException:
            code = 99
        os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as fh:
        stderr = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2, stderr
    assert stderr == (
        "Can't initialize ipvs: Permission denied (you must be root)\n"
        "Are you sure that IP Virtual Server is built in the kernel or as module?\n"
    )
    assert "10.9.9.9" not in lvsadm(daemon, "-L", "-n").stdout


@pytest.mark.skipif(NO_NETNS is not None, reason=str(NO_NETNS))
def test_each_network_namespace_has_its_own_table() -> None:
    names = [f"pylvs-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        sock = "pylvs-ns-test"  # the same abstract name in both: namespaces keep them apart
        with running_lvsd("--no-nat", prefix=["ip", "netns", "exec", names[0]], socket_name=sock), \
                running_lvsd("--no-nat", prefix=["ip", "netns", "exec", names[1]], socket_name=sock):  # fmt: skip
            p0 = ["ip", "netns", "exec", names[0]]
            p1 = ["ip", "netns", "exec", names[1]]
            assert lvsadm(sock, "-A", "-t", "10.0.0.1:80", "-s", "rr", prefix=p0).returncode == 0
            assert lvsadm(sock, "-A", "-u", "10.0.0.2:53", "-s", "sh", prefix=p1).returncode == 0
            out0 = lvsadm(sock, "-L", "-n", prefix=p0).stdout
            out1 = lvsadm(sock, "-L", "-n", prefix=p1).stdout
            assert "10.0.0.1:80" in out0 and "10.0.0.2:53" not in out0
            assert "10.0.0.2:53" in out1 and "10.0.0.1:80" not in out1
            # and the host's namespace sees neither daemon
            assert lvsadm(sock, "-L", "-n").returncode == 2
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False)


def test_sighup_reloads_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "lvsd.yaml"
    cfg.write_text("services:\n  - tcp: 10.0.0.1:80\n    scheduler: rr\n")
    with running_lvsd("--no-nat", "--config", str(cfg)) as name:
        assert "TCP  10.0.0.1:80 rr" in lvsadm(name, "-L", "-n").stdout
        cfg.write_text("services:\n  - tcp: 10.0.0.1:80\n    scheduler: wrr\n  - udp: 10.0.0.2:53\n")
        with Client(autostart=False, name=name) as c:
            pid = c.call("status")["data"]["pid"]
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "wrr" not in lvsadm(name, "-L", "-n").stdout and time.monotonic() < deadline:
            time.sleep(0.05)
        out = lvsadm(name, "-L", "-n").stdout
        assert "TCP  10.0.0.1:80 wrr" in out and "UDP  10.0.0.2:53 wlc" in out
        cfg.write_text("services:\n  - tcp: 10.0.0.1:80\n    schedular: rr\n")
        r = lvsadm(name, "--reload")
        assert r.returncode == 1 and "lvsd.yaml:3: services[0]: unknown field 'schedular'" in r.stderr
        assert "TCP  10.0.0.1:80 wrr" in lvsadm(name, "-L", "-n").stdout


def test_state_is_saved_on_exit_and_restored_on_start(tmp_path: Path) -> None:
    state = tmp_path / "table.rules"
    with running_lvsd("--no-nat", "--state", str(state)) as name:
        lvsadm(name, "-A", "-t", "10.0.0.1:80", "-s", "sh", "-b", "sh-port")
        lvsadm(name, "-a", "-t", "10.0.0.1:80", "-r", "10.1.0.1:80", "-w", "4")
        saved = lvsadm(name, "-S", "-n").stdout
    assert json.loads(state.read_text())["rules"] == saved
    with running_lvsd("--no-nat", "--state", str(state)) as name:
        assert lvsadm(name, "-S", "-n").stdout == saved
    # an ipvsadm -S file given as --state is read as such
    state.write_text(saved)
    with running_lvsd("--no-nat", "--state", str(state)) as name:
        assert lvsadm(name, "-S", "-n").stdout == saved


def test_restore_reads_ipvsadm_save_files(daemon: str) -> None:
    """-R takes ipvsadm-save output, with or without the leading ``ipvsadm``."""
    rules = "ipvsadm -A -t 10.0.0.1:80 -s wlc\n-a -t 10.0.0.1:80 -r 10.1.0.2:80 -m -w 2\n\n"
    r = lvsadm(daemon, "-R", stdin=rules)
    assert r.returncode == 0, r.stderr
    assert lvsadm(daemon, "-S", "-n").stdout == "-A -t 10.0.0.1:80 -s wlc\n-a -t 10.0.0.1:80 -r 10.1.0.2:80 -m -w 2\n"


def test_restore_treats_comments_as_ipvsadm_does(daemon: str) -> None:
    """ipvsadm -R does not skip comments (config_stream.c's check never fires);
    lvsadm-restore strips ``^#`` lines first, as ipvsadm-restore does."""
    rules = "# saved by ipvsadm-save\n-A -u 10.0.0.2:53 -s rr\n"
    r = lvsadm(daemon, "-R", stdin=rules)
    assert r.returncode == 255
    assert "10.0.0.2:53" not in lvsadm(daemon, "-L", "-n").stdout
    env = {**os.environ, "LVSD_SOCKET": daemon, "LVSADM_NO_AUTOSTART": "1"}
    code = "import sys; from lvsd.cli import restore_main; sys.exit(restore_main())"
    r = subprocess.run([PY, "-c", code], input=rules, env=env, capture_output=True, text=True, timeout=30,
                       check=False, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert lvsadm(daemon, "-S", "-n").stdout == "-A -u 10.0.0.2:53 -s rr\n"


def test_proxy_protocol_option_reaches_the_nat_plane() -> None:
    """lvsd --proxy-protocol RIP:PORT=v1: the real server learns the client."""
    import socket as _socket

    backend = _socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(4)
    backend.settimeout(10)
    rport = backend.getsockname()[1]
    probe = _socket.socket()
    probe.bind(("127.0.0.1", 0))
    vport = probe.getsockname()[1]
    probe.close()
    with running_lvsd("--no-vip", "--proxy-protocol", f"127.0.0.1:{rport}=v1") as name:
        assert lvsadm(name, "-A", "-t", f"127.0.0.1:{vport}", "-s", "rr").returncode == 0
        assert lvsadm(name, "-a", "-t", f"127.0.0.1:{vport}", "-r", f"127.0.0.1:{rport}", "-m").returncode == 0
        client = _socket.create_connection(("127.0.0.1", vport), timeout=10)
        cport = client.getsockname()[1]
        client.sendall(b"hello")
        conn, _ = backend.accept()
        conn.settimeout(10)
        data = b""
        while b"hello" not in data:
            chunk = conn.recv(4096)
            assert chunk
            data += chunk
        assert data.startswith(f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {vport}\r\n".encode())
        client.close()
        conn.close()
    backend.close()


def test_bad_proxy_protocol_option_is_a_usage_error() -> None:
    r = subprocess.run([PY, "-m", "lvsd.main", "--foreground", "--proxy-protocol", "nonsense"],
                       capture_output=True, text=True, timeout=30, check=False, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2
    assert "bad PROXY protocol spec 'nonsense'" in r.stderr
    assert "Traceback" not in r.stderr


def test_json_views_for_scripts(daemon: str) -> None:
    lvsadm(daemon, "-A", "-u", "10.0.0.2:53", "-s", "rr")
    lvsadm(daemon, "-a", "-u", "10.0.0.2:53", "-r", "10.1.0.1:53", "-m", "-w", "3")
    lvsadm(daemon, "--set", "901", "121", "301")
    lvsadm(daemon, "--start-daemon", "master", "--syncid", "5")
    services = json.loads(lvsadm(daemon, "--json", "services").stdout)
    [svc] = services["services"]
    assert (svc["protocol"], svc["port"], svc["scheduler"]) == ("udp", 53, "rr")
    assert svc["destinations"][0]["weight"] == 3
    assert json.loads(lvsadm(daemon, "--json", "timeouts").stdout) == {"tcp": 901, "tcpfin": 121, "udp": 301}
    [master] = json.loads(lvsadm(daemon, "--json", "daemons").stdout)
    assert (master["state"], master["syncid"]) == ("master", 5)
    assert json.loads(lvsadm(daemon, "--json", "sysctl").stdout)["conn_reuse_mode"] == 1
    assert json.loads(lvsadm(daemon, "--json", "conns").stdout) == []
    bad = lvsadm(daemon, "--json", "nonsense")
    assert bad.returncode == 2 and "unknown view 'nonsense'" in bad.stderr
