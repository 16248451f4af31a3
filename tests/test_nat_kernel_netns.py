"""The kernel NAT engine (``lvsd --nat-engine kernel``, forwarding/nat_kernel.py)
end to end across network namespaces (issue 16, first part).

Topology (tests/nsnet.py with ``nat=True``): a client namespace, the
director (forwarding), two real servers whose only way back to the client is
their default route through the director.  lvsd decides each new flow's
first packet (NFQUEUE) and netfilter's NAT moves the rest: the real servers
see the client's own address.  Then: a clean stop leaves no table; a
SIGKILLed lvsd's established flow keeps working and the next lvsd replaces
the table.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from forwarding.nat_kernel import KernelNatUnavailable, check_possible, elements_script, ruleset

from .helpers import PY, ROOT, lvsadm, running_lvsd, unique_socket, wait_ready
from .nsnet import CLIENT, VIP, Topology, dr_netns_reason, rip

_why = dr_netns_reason()
if _why is None and not os.path.exists("/proc/net/netfilter/nfnetlink_queue"):
    _why = "kernel without nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE)"

PORT = 8080


def test_ruleset_and_elements_text() -> None:
    """The table's text: queue rules for new, not yet NATed flows at
    prerouting and output; DNAT by mark map; the element transaction."""
    text = ruleset("t1")
    assert text.startswith("add table inet t1\ndelete table inet t1\n")
    for hook in ("prerouting", "output"):
        assert f"type filter hook {hook} priority mangle + 10" in text
        assert f"type nat hook {hook} priority -100" in text
    assert text.count("ct state new ct status & dnat == 0") == 4
    assert "dnat ip to meta mark map @dst4" in text and "dnat ip6 to meta mark map @dst6" in text
    ip = int.from_bytes(socket.inet_aton("10.1.2.3"), "big")
    script = elements_script(
        "t1",
        [(socket.AF_INET, 6, ip, 80), (socket.AF_INET, 17, ip, 53)],
        {(socket.AF_INET, ip + 1, 8080): 0x4C560001},
    )
    assert "add element inet t1 svc4 { 10.1.2.3 . tcp . 80, 10.1.2.3 . udp . 53 }" in script
    assert "add element inet t1 dst4 { 0x4c560001 : 10.1.2.4 . 8080 }" in script
    assert "flush map inet t1 dst6" in script


def test_cannot_start_without_nft() -> None:
    """A missing nft (or no root) is refused before anything changes."""
    with pytest.raises(KernelNatUnavailable, match=r"nft|root"):
        check_possible(nft="nft-not-installed-here")


def _start_lvsd(t: Topology, sock: str, state: str, log: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [*t.prefix(t.director), PY, "-m", "lvsd.main", "--foreground", "--socket", sock, "--state", state,
             "--nat-engine", "kernel", "--no-dr"],
            stdout=subprocess.DEVNULL, stderr=fh, cwd=ROOT,
        )  # fmt: skip
    wait_ready(sock, t.prefix(t.director))
    return proc


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _nft_tables(t: Topology) -> str:
    return t.ns(t.director, "nft", "list", "tables").stdout


def _clients(t: Topology, kind: str, n: int) -> list[dict[str, str]]:
    r = t.ns(t.client, PY, "-m", "tests.natk_prog", kind, VIP, str(PORT), str(n), timeout=60)
    return json.loads(r.stdout)


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.skipif(_why is not None, reason=_why or "")
def test_kernel_engine_netns(tmp_path: Path) -> None:
    tmp = str(tmp_path)
    state, log = f"{tmp}/state.json", f"{tmp}/lvsd.log"
    sock = unique_socket()
    with Topology(2, nat=True) as t:
        for k in (1, 2):
            p = t.spawn(t.rs[k - 1], PY, "-m", "tests.natk_prog", "server", str(PORT), f"rs{k}")
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        pre = t.prefix(t.director)

        def adm(*args: str) -> str:
            r = lvsadm(sock, *args, prefix=pre)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
            return r.stdout

        lvsd = _start_lvsd(t, sock, state, log)
        try:
            for proto in ("-t", "-u"):
                adm("-A", proto, f"{VIP}:{PORT}", "-s", "rr")
                for k in (1, 2):
                    adm("-a", proto, f"{VIP}:{PORT}", "-r", f"{rip(k)}:{PORT}", "-m")
            table = _nft_tables(t)
            assert "pylvs_nat" in table, (table, _read(log))

            # TCP: rr across both, every real server sees the client's address
            tcp = _clients(t, "tcp", 6)
            assert all("error" not in r for r in tcp), (tcp, _read(log))
            assert Counter(r["server"] for r in tcp) == {"rs1": 3, "rs2": 3}, tcp
            assert {r["peer"] for r in tcp} == {CLIENT}
            # UDP likewise (a fresh source port per datagram: a new flow each)
            udp = _clients(t, "udp", 4)
            assert all("error" not in r for r in udp), (udp, _read(log))
            assert Counter(r["server"] for r in udp) == {"rs1": 2, "rs2": 2}, udp
            assert {r["peer"] for r in udp} == {CLIENT}

            # a local client (the director itself): queued at output, DNAT there
            r = t.ns(t.director, PY, "-m", "tests.natk_prog", "tcp", VIP, str(PORT), "2", timeout=60)
            local = json.loads(r.stdout)
            assert sorted(x.get("server", "?") for x in local) == ["rs1", "rs2"], (local, _read(log))

            # conntrack's events move the entries: the short connections are
            # over (TIME_WAIT, inactive); UDP entries are inactive
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                conns = adm("-L", "-n", "-c")
                if conns.count("TIME_WAIT") == 8:
                    break
                time.sleep(0.2)
            assert conns.count("TIME_WAIT") == 8 and conns.count("\nUDP ") == 4, (conns, adm("--status"))
            assert f"{CLIENT}:" in conns
            listing = adm("-L", "-n")
            rows = [line.split() for line in listing.splitlines() if line.strip().startswith("->")]
            rows = [r for r in rows if r[1].startswith("172.16.")]
            assert [(r[-2], r[-1]) for r in rows] == [("0", "4")] * 2 + [("0", "2")] * 2, listing

            # a flow held open across a SIGKILL of lvsd
            hold = subprocess.Popen(
                [*t.prefix(t.client), PY, "-m", "tests.natk_prog", "hold", VIP, str(PORT)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            )  # fmt: skip
            t.procs.append(hold)  # type: ignore[arg-type]
            assert hold.stdin is not None and hold.stdout is not None
            assert hold.stdout.readline().strip() == "connected"
            hold.stdin.write("before\n")
            hold.stdin.flush()
            before = hold.stdout.readline().strip()
            assert before.endswith(f"|{CLIENT}|before"), before
            held = before.split("|")[0]
            deadline = time.monotonic() + 10
            while "ESTABLISHED" not in adm("-L", "-n", "-c") and time.monotonic() < deadline:
                time.sleep(0.2)
            conns = adm("-L", "-n", "-c")
            assert conns.count("ESTABLISHED") == 1, conns
            rows = [line.split() for line in adm("-L", "-n", "-t", f"{VIP}:{PORT}").splitlines()]
            active = {r[1].split(":")[0]: r[-2] for r in rows if r and r[0] == "->" and r[1][0].isdigit()}
            assert active[rip(int(held[2:]))] == "1", (held, active)
            lvsd.send_signal(signal.SIGKILL)
            lvsd.wait(timeout=10)
            hold.stdin.write("after-kill\n")
            hold.stdin.flush()
            after = hold.stdout.readline().strip()
            assert after == before.replace("before", "after-kill"), (before, after)
            assert "pylvs_nat" in _nft_tables(t)  # left behind by the kill

            # the next lvsd (same state file: the table comes back) replaces it
            lvsd = _start_lvsd(t, sock, state, log)
            assert _nft_tables(t).count("pylvs_nat") == 1
            hold.stdin.write("after-restart\n")
            hold.stdin.flush()
            again = hold.stdout.readline().strip()
            assert again == before.replace("before", "after-restart"), (before, again)
            tcp = _clients(t, "tcp", 2)
            assert sorted(r.get("server", "?") for r in tcp) == ["rs1", "rs2"], (tcp, _read(log))
            assert "replaced the nftables table" in _read(log)
            hold.stdin.close()
            hold.wait(timeout=10)

            # a real server deleted: its established flow ends (the kernel's
            # IPVS drops the packets of an entry whose dest is gone)
            hold = subprocess.Popen(
                [*t.prefix(t.client), PY, "-m", "tests.natk_prog", "hold", VIP, str(PORT)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            )  # fmt: skip
            t.procs.append(hold)  # type: ignore[arg-type]
            assert hold.stdin is not None and hold.stdout is not None
            assert hold.stdout.readline().strip() == "connected"
            hold.stdin.write("one\n")
            hold.stdin.flush()
            name = hold.stdout.readline().split("|")[0]
            adm("-d", "-t", f"{VIP}:{PORT}", "-r", f"{rip(int(name[2:]))}:{PORT}")
            hold.stdin.write("two\n")
            hold.stdin.flush()
            answer = hold.stdout.readline()
            assert answer.startswith("error"), (answer, _read(log))
            # the held flow and the short connection of the restart check there
            assert "no longer available: 2 of 2 conntrack entries deleted" in _read(log), _read(log)
            hold.stdin.close()
            hold.wait(timeout=10)

            # a clean stop leaves no table, hence no queue rule
            lvsd.terminate()
            assert lvsd.wait(timeout=15) == 0, _read(log)
            assert "pylvs_nat" not in _nft_tables(t)
        finally:
            if lvsd.poll() is None:
                lvsd.kill()
                lvsd.wait(timeout=10)


def test_conntrack_event_parsing() -> None:
    """A ctnetlink DESTROY message as the kernel builds it (ctnetlink_conntrack_event):
    original tuple, TCP state, both directions' counters."""
    import struct

    from forwarding.ct_events import DESTROY, parse_event
    from forwarding.nfqueue import NLA_F_NESTED, iter_msgs, nla, nlmsg

    def nest(kind: int, payload: bytes) -> bytes:
        return nla(kind | NLA_F_NESTED, payload)

    ip = nest(1, nla(1, socket.inet_aton("10.0.0.2")) + nla(2, socket.inet_aton("207.175.44.110")))
    proto = nest(2, nla(1, bytes([6])) + nla(2, struct.pack("!H", 40000)) + nla(3, struct.pack("!H", 8080)))
    body = (
        nest(1, ip + proto)
        + nest(4, nest(1, nla(1, bytes([7]))))
        + nest(9, nla(1, struct.pack("!Q", 6)) + nla(2, struct.pack("!Q", 400)))
        + nest(10, nla(1, struct.pack("!Q", 5)) + nla(2, struct.pack("!Q", 900)))
    )
    msg = nlmsg((1 << 8) | 2, 0, 1, socket.AF_INET, 0, body)
    view = memoryview(msg)
    (mtype, flags, start, end), = list(iter_msgs(view, 0, len(msg)))
    ev = parse_event(view, mtype, flags, start, end)
    assert ev is not None and ev.kind == DESTROY
    assert (ev.protocol, ev.sport, ev.dport, ev.tcp_state) == (6, 40000, 8080, 7)
    assert ev.saddr == int.from_bytes(socket.inet_aton("10.0.0.2"), "big")
    assert (ev.orig_packets, ev.orig_bytes, ev.reply_packets, ev.reply_bytes) == (6, 400, 5, 900)


def test_falls_back_to_proxy_with_a_message() -> None:
    """lvsd --nat-engine kernel where the engine cannot start (here: no nft
    on PATH) says why in --status and serves with the proxy engine."""
    with running_lvsd("--nat-engine", "kernel", "--no-dr", "--no-vip", env={"PATH": "/nonexistent"}) as sock:
        status = lvsadm(sock, "--status").stdout
        assert "--nat-engine kernel cannot start" in status and "proxy NAT engine serves instead" in status, status
        assert "nat: " in status, status  # the proxy plane's own line
