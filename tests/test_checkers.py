"""Each checker (checkers/) against real servers failing as servers fail:
killed (RST / ICMP port unreachable), silent (packets dropped in a network
namespace made here), HTTP 500, wrong digest, slower than connect_timeout,
wrong DNS answer, MISC exit codes and a hung script, TLS with a self-signed
certificate.  Then, with lvsd: quorum loss puts the sorry server in and
takes it out again."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkers import Outcome, probe_for
from lvs.ctl import IPVS
from lvs.health import Checker, HealthMonitor
from lvs.keepalived_conf import parse_keepalived
from tests.healthlab import free_port, start_server, stop, table, wait_for
from tests.helpers import can_netns, running_lvsd

UDP = 2


def checker(kind: str, port: int, body: str = "", host: str = "127.0.0.1", proto: str = "TCP") -> Checker:
    conf = f"""
virtual_server 10.0.0.1 80 {{
    protocol {proto}
    real_server {host} {port} {{
        {kind} {{
            connect_timeout 1
            {body}
        }}
    }}
}}
"""
    return HealthMonitor(IPVS(), parse_keepalived(conf, "t.conf").services).checkers[0]


def probe(chk: Checker) -> Outcome:
    return asyncio.run(probe_for(chk.kind)(chk))


# -- TCP_CHECK -----------------------------------------------------------------------------------
def test_tcp_up_then_killed(procs: list) -> None:
    port = free_port()
    procs.append(start_server("http", "127.0.0.1", str(port)))
    chk = checker("TCP_CHECK", port)
    assert probe(chk).ok
    stop(procs[0])
    out = probe(chk)
    assert not out.ok and out.reason == "connection refused"


# -- a silent host: its packets are dropped in a namespace ----------------------------------------
CLONE_NEWNET = 0x40000000


def _in_netns(ns: str, fn: Any) -> Any:
    """Run ``fn()`` in a thread switched into network namespace ``ns``."""
    result: list[Any] = []

    def target() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        result.append(fn())

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    return result[0]


@pytest.fixture(scope="module")
def silent_host() -> Iterator[tuple[str, str]]:
    """Namespace A (the checker's) and B (a host dropping every packet it
    gets, nft), joined by a veth pair; yields (A, B's address)."""
    why = can_netns()
    if why is None and shutil.which("nft") is None:
        why = "needs nft (make netdeps)"
    if why:
        pytest.skip(why)
    tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"
    a, b = f"i12a{tag}", f"i12b{tag}"
    run = lambda *args: subprocess.run(args, check=True, capture_output=True, timeout=20)  # noqa: E731
    try:
        run("ip", "netns", "add", a)
        run("ip", "netns", "add", b)
        run("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        run("ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", "va")
        run("ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", "vb")
        for ns, dev in ((a, "va"), (b, "vb")):
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        rules = (
            "table inet silent {\n chain input {\n type filter hook input priority 0; policy drop;\n }\n}\n"
        )
        subprocess.run(["ip", "netns", "exec", b, "nft", "-f", "-"], input=rules.encode(), check=True,
                       capture_output=True, timeout=20)  # fmt: skip
        yield a, "10.77.0.2"
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.mark.parametrize("kind", ["TCP_CHECK", "PING_CHECK", "HTTP_GET"])
def test_silent_host_times_out(silent_host: tuple[str, str], kind: str) -> None:
    ns, addr = silent_host
    body = "url { path / }" if kind == "HTTP_GET" else ""
    chk = checker(kind, 80, body, host=addr)
    t0 = time.monotonic()
    out = _in_netns(ns, lambda: probe(chk))
    assert not out.ok and ("timeout" in out.reason or "within" in out.reason), out
    assert time.monotonic() - t0 < 5


def test_ping_up() -> None:
    assert probe(checker("PING_CHECK", 0)).ok


# -- HTTP_GET / SSL_GET ----------------------------------------------------------------------------
def test_http_status_digest_regex_slow(procs: list) -> None:
    ok_port, err_port, slow_port = free_port(), free_port(), free_port()
    procs.append(start_server("http", "127.0.0.1", str(ok_port), "--body", "all good"))
    procs.append(start_server("http", "127.0.0.1", str(err_port), "--status", "500"))
    procs.append(start_server("http", "127.0.0.1", str(slow_port), "--delay", "3"))
    good = hashlib.md5(b"all good").hexdigest()
    assert probe(checker("HTTP_GET", ok_port, f"url {{ path /x\n digest {good} }}")).ok
    out = probe(checker("HTTP_GET", ok_port, f"url {{ path /x\n digest {'0' * 32} }}"))
    assert not out.ok and "MD5 digest error" in out.reason
    out = probe(checker("HTTP_GET", err_port, "url { path / }"))
    assert not out.ok and "status code error" in out.reason and "500" in out.reason
    assert probe(checker("HTTP_GET", err_port, "url {\n path /\n status_code 200 500-503\n }")).ok
    assert probe(checker("HTTP_GET", ok_port, 'url {\n path /\n regex "a.l g"\n }')).ok
    assert not probe(checker("HTTP_GET", ok_port, "url {\n path /\n regex_no_match good\n }")).ok
    t0 = time.monotonic()
    out = probe(checker("HTTP_GET", slow_port, "url { path / }"))
    assert not out.ok and "timeout" in out.reason
    assert time.monotonic() - t0 < 2.5


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl (make netdeps)")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "c.pem", d / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=self-signed.test", "-days", "2", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return str(crt), str(key)


def test_ssl_self_signed_and_sni(procs: list, cert: tuple[str, str]) -> None:
    tls_port, plain_port = free_port(), free_port()
    procs.append(start_server("https", "127.0.0.1", str(tls_port), "--cert", cert[0], "--key", cert[1]))
    procs.append(start_server("http", "127.0.0.1", str(plain_port)))
    assert probe(checker("SSL_GET", tls_port, "url { path / }")).ok
    sni_seen = "url {\n path /\n regex sni=www.example.test\n }"
    sni = "enable_sni\n virtualhost www.example.test\n" + sni_seen
    assert probe(checker("SSL_GET", tls_port, sni)).ok
    assert not probe(checker("SSL_GET", tls_port, "virtualhost www.example.test\n" + sni_seen)).ok
    out = probe(checker("SSL_GET", plain_port, "url { path / }"))
    assert not out.ok
    stop(procs[0])
    assert probe(checker("SSL_GET", tls_port, "url { path / }")).reason == "connection refused"


# -- UDP_CHECK, DNS_CHECK --------------------------------------------------------------------------
def test_udp_reply_and_port_closed(procs: list) -> None:
    port = free_port(UDP)
    procs.append(start_server("udp", "127.0.0.1", str(port)))
    assert probe(checker("UDP_CHECK", port, "payload 68656c6c6f\n require_reply 6865", proto="UDP")).ok
    assert not probe(checker("UDP_CHECK", port, "payload 68656c6c6f\n require_reply 7878", proto="UDP")).ok
    stop(procs[0])
    out = probe(checker("UDP_CHECK", port, "payload 00", proto="UDP"))
    assert not out.ok and out.reason == "ICMP port unreachable"


def test_dns_answer_rcode(procs: list) -> None:
    good, bad = free_port(UDP), free_port(UDP)
    procs.append(start_server("dns", "127.0.0.1", str(good)))
    procs.append(start_server("dns", "127.0.0.1", str(bad), "--rcode", "3"))
    assert probe(checker("DNS_CHECK", good, "type A\n name example.test", proto="UDP")).ok
    out = probe(checker("DNS_CHECK", bad, "type A\n name example.test", proto="UDP"))
    assert not out.ok and "rcode = 3" in out.reason
    stop(procs[0])
    assert not probe(checker("DNS_CHECK", good, "", proto="UDP")).ok


# -- MISC_CHECK ------------------------------------------------------------------------------------
def test_misc_exit_codes_and_timeout(tmp_path: Path) -> None:
    for code, ok in ((0, True), (1, False), (2, False), (255, False)):
        out = probe(checker("MISC_CHECK", 80, f"misc_path \"/bin/sh -c 'exit {code}'\""))
        assert out.ok == ok and out.exit_code == code
    as_nobody = "misc_path \"/bin/sh -c 'test $(id -u) = 65534'\""
    assert not probe(checker("MISC_CHECK", 80, as_nobody)).ok
    assert probe(checker("MISC_CHECK", 80, as_nobody + "\n user nobody")).ok
    pidfile = tmp_path / "pid"
    script = f"/bin/sh -c 'echo $$ > {pidfile}; exec sleep 30'"
    t0 = time.monotonic()
    out = probe(checker("MISC_CHECK", 80, f'misc_path "{script}"\n misc_timeout 1'))
    assert not out.ok and "timed out" in out.reason
    assert time.monotonic() - t0 < 4
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- SMTP_CHECK ------------------------------------------------------------------------------------
def test_smtp(procs: list) -> None:
    good, bad = free_port(), free_port()
    procs.append(start_server("smtp", "127.0.0.1", str(good)))
    procs.append(start_server("smtp", "127.0.0.1", str(bad), "--greeting", "554 go away"))
    assert probe(checker("SMTP_CHECK", good, "helo_name me.test")).ok
    out = probe(checker("SMTP_CHECK", bad))
    assert not out.ok and "554" in out.reason
    stop(procs[0])
    assert probe(checker("SMTP_CHECK", good)).reason == "connection refused"


# -- quorum and the sorry server, with lvsd ------------------------------------------------------
def test_quorum_loss_brings_the_sorry_server(tmp_path: Path, procs: list) -> None:
    vport, p1, p2, sorry = free_port(), free_port(), free_port(), free_port()
    for p in (p1, p2, sorry):
        procs.append(start_server("http", "127.0.0.1", str(p)))
    conf = tmp_path / "keepalived.conf"
    events = tmp_path / "events"

    def note(word: str) -> str:
        return f"\"/bin/sh -c 'echo {word} >> {events}'\""

    conf.write_text(
        f"""virtual_server 127.0.0.1 {vport} {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
    quorum 2
    quorum_up {note("quorum-up")}
    quorum_down {note("quorum-down")}
    sorry_server 127.0.0.1 {sorry}
    real_server 127.0.0.1 {p1} {{
        TCP_CHECK {{ connect_timeout 1 }}
    }}
    real_server 127.0.0.1 {p2} {{
        notify_down {note("p2-down")}
        notify_up {note("p2-up")}
        TCP_CHECK {{ connect_timeout 1 }}
    }}
}}
"""
    )
    with running_lvsd("--keepalived-conf", str(conf), "--no-dr") as sock:
        assert f":{sorry}" not in table(sock)
        time.sleep(2.2)
        stop(procs[1])
        wait_for(sock, lambda t: f":{sorry}" in t and f":{p1}" not in t and f":{p2}" not in t, 10)
        procs[1] = start_server("http", "127.0.0.1", str(p2))
        wait_for(sock, lambda t: f":{sorry}" not in t and f":{p1}" in t and f":{p2}" in t, 10)
        deadline = time.monotonic() + 5
        # quorum_up runs at start too (keepalived: "Gained quorum" at start-up); scripts of one
        # transition run side by side, so only the order of the transitions is fixed
        want = [{"quorum-up"}, {"p2-down", "quorum-down"}, {"p2-up", "quorum-up"}]

        def seen() -> list[set[str]]:
            words = events.read_text().split() if events.exists() else []
            return [set(words[0:1]), set(words[1:3]), set(words[3:5])] if len(words) == 5 else []

        while seen() != want and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen() == want, events.read_text()
