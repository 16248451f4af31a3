"""UDP on the NAT plane, kernel rules checked end to end:

* no real server for a datagram: ICMP port unreachable from the VIP
  (``ip_vs_leave``), so a connected client socket gets ECONNREFUSED;
  rate-limited per client like ``icmp_ratelimit``;
* one-packet scheduling (``-o``): every datagram its own entry, dropped at
  once; the real server's replies find no entry, so they are not counted.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest

from forwarding.icmp import QUOTE4, QUOTE6, RateLimit, port_unreachable_v4, port_unreachable_v6
from forwarding.packet import checksum

from .helpers import can_netns, is_root, lvsadm, running_lvsd
from .natlab import Adm, Backends, free_port, udp_ask, wait_until

pytestmark = pytest.mark.timeout(120)


needs_root = pytest.mark.skipif(not is_root(), reason="raw ICMP sockets need CAP_NET_RAW")


def ipv6_loopback() -> bool:
    try:
        free_port(socket.SOCK_DGRAM, "::1")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------
# the messages and the rate limit, without sockets
# ----------------------------------------------------------------------------
def test_port_unreachable_v4_quotes_the_datagram() -> None:
    msg = port_unreachable_v4("192.0.2.7", 40000, "198.51.100.1", 53, b"query")
    assert msg[:2] == bytes([3, 3]) and checksum(msg) == 0  # type, code, valid checksum
    inner = msg[8:]
    assert inner[0] == 0x45 and inner[9] == socket.IPPROTO_UDP and checksum(inner[:20]) == 0
    assert socket.inet_ntoa(inner[12:16]) == "192.0.2.7" and socket.inet_ntoa(inner[16:20]) == "198.51.100.1"
    sport, dport, length, _ = struct.unpack("!HHHH", inner[20:28])
    assert (sport, dport, length) == (40000, 53, 8 + 5) and inner[28:] == b"query"
    big = port_unreachable_v4("192.0.2.7", 1, "198.51.100.1", 2, b"x" * 2000)
    assert len(big) == 8 + QUOTE4 == 576 - 20  # icmp_send: the whole error fits in 576 bytes


def test_port_unreachable_v6_quotes_the_datagram() -> None:
    msg = port_unreachable_v6("2001:db8::7", 40000, "2001:db8::1", 53, b"query")
    assert msg[:2] == bytes([1, 4])
    inner = msg[8:]
    assert inner[0] >> 4 == 6 and inner[6] == socket.IPPROTO_UDP
    assert inner[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    assert inner[24:40] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert struct.unpack("!HH", inner[40:44]) == (40000, 53) and inner[48:] == b"query"
    big = port_unreachable_v6("2001:db8::7", 1, "2001:db8::1", 2, b"x" * 4000)
    assert len(big) == 8 + QUOTE6 == 1280 - 40


def test_rate_limit_per_client_like_icmp_ratelimit() -> None:
    rl = RateLimit()
    # a new peer has a full bucket: 6 messages, then one per second
    assert [rl.allow("192.0.2.1", 0.0) for _ in range(8)] == [True] * 6 + [False] * 2
    assert rl.allow("192.0.2.1", 0.5) is False
    assert rl.allow("192.0.2.1", 1.0) is True
    assert rl.allow("192.0.2.1", 1.5) is False
    # another client has its own bucket
    assert rl.allow("192.0.2.2", 1.5) is True
    # the bucket refills up to the burst, no further
    assert [rl.allow("192.0.2.1", 100.0) for _ in range(7)] == [True] * 6 + [False]
    # loopback clients are never limited (the kernel skips routes through lo)
    assert all(rl.allow("127.0.0.1", 100.0) for _ in range(100))
    assert all(rl.allow("::1", 100.0) for _ in range(100))


def test_rate_limit_global_bucket() -> None:
    rl = RateLimit()
    got = [rl.allow(f"10.0.{i // 256}.{i % 256}", 0.0) for i in range(60)]
    assert got == [True] * 50 + [False] * 10  # icmp_msgs_burst
    assert sum(rl.allow(f"10.1.0.{i}", 0.01) for i in range(20)) == 10  # 1000/s refill


def test_rate_limit_forgets_the_oldest_peer_first() -> None:
    rl = RateLimit(max_peers=3)
    for peer in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        rl.allow(peer, 0.0)
    assert list(rl.peers) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]


# ----------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------
def _refused(sock: socket.socket) -> bool:
    try:
        sock.recv(100)
    except ConnectionRefusedError:
        return True
    except TimeoutError:
        return False
    return False


@needs_root
@pytest.mark.parametrize("workers", ["1", "2"])
def test_udp_without_real_server_gets_icmp_port_unreachable_from_the_vip(workers: str) -> None:
    vip = "127.0.0.2"  # the client is 127.0.0.1: the ICMP source must be the VIP
    vport = free_port(socket.SOCK_DGRAM, vip)
    cap = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    cap.settimeout(0.2)
    try:
        with running_lvsd("--workers", workers) as name:
            adm = Adm(name)
            adm("-A", "-u", f"{vip}:{vport}", "-s", "wlc")
            if workers != "1":
                wait_until(lambda: " ".join(adm.status()["planes"]).count("1 UDP services served") == 2, 10)
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind(("127.0.0.1", 0))
            c.settimeout(3)
            c.connect((vip, vport))
            cport = c.getsockname()[1]
            for i in range(3):
                c.send(b"anyone there %d?" % i)
                assert _refused(c), i
            # ... and the next datagram is refused again (a real server of
            # weight 0 is no server either)
            adm("-a", "-u", f"{vip}:{vport}", "-r", "127.0.0.1:9", "-m", "-w", "0")
            time.sleep(0.3)
            c.send(b"weight zero")
            assert _refused(c)
            c.close()
            planes = " ".join(adm.status()["planes"])
            assert sum(int(x) for x in re.findall(r"ICMP unreachable (\d+)", planes)) == 4, planes
            assert adm("-L", "-c", "-n").count("\n") == 2  # no entry was made
    finally:
        found = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(found) < 4:
            try:
                pkt = cap.recv(2048)
            except TimeoutError:
                continue
            ihl = (pkt[0] & 15) * 4
            icmp = pkt[ihl:]
            inner = icmp[8:]
            if icmp[:2] != bytes([3, 3]) or len(inner) < 28 or inner[9] != socket.IPPROTO_UDP:
                continue
            if struct.unpack("!HH", inner[20:24]) != (cport, vport):
                continue
            found.append((socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20]), icmp, inner))
        cap.close()
    assert len(found) == 4, found
    for src, dst, icmp, inner in found:
        assert (src, dst) == (vip, "127.0.0.1")
        assert checksum(icmp) == 0
        assert socket.inet_ntoa(inner[12:16]) == "127.0.0.1" and socket.inet_ntoa(inner[16:20]) == vip
    assert [f[3][28:] for f in found] == [
        b"anyone there 0?",
        b"anyone there 1?",
        b"anyone there 2?",
        b"weight zero",
    ]


@needs_root
def test_udp6_without_real_server_gets_icmpv6_port_unreachable() -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    vport = free_port(socket.SOCK_DGRAM, "::1")
    with running_lvsd() as name:
        adm = Adm(name)
        adm("-A", "-u", f"[::1]:{vport}", "-s", "rr")
        c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        c.settimeout(3)
        c.connect(("::1", vport))
        c.send(b"hello?")
        assert _refused(c)
        c.close()


def test_udp_with_a_real_server_gets_no_icmp(backends: Backends) -> None:
    echo = backends.udp_echo()
    vport = free_port(socket.SOCK_DGRAM)
    with running_lvsd() as name:
        adm = Adm(name)
        adm("-A", "-u", f"127.0.0.1:{vport}", "-s", "rr")
        adm("-a", "-u", f"127.0.0.1:{vport}", "-r", f"127.0.0.1:{echo}", "-m")
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.connect(("127.0.0.1", vport))
        assert udp_ask("127.0.0.1", vport, b"hi", c).endswith(b"hi")
        c.close()
        assert "ICMP unreachable 0" in " ".join(adm.status()["planes"])


# ----------------------------------------------------------------------------
# one-packet scheduling
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
def test_one_packet_entries_and_counters_follow_the_kernel(backends: Backends, workers: str) -> None:
    """``-o``: each datagram is scheduled (rr alternates for one client
    socket), counted as one connection and one incoming packet, and its entry
    is gone after it: nothing in -L -c, ActiveConn and InActConn stay 0.  The
    replies are relayed but not counted: the kernel never hashes one-packet
    entries, so ip_vs_out finds none for them (OutPkts/OutBytes 0)."""
    a, b = backends.udp_echo(), backends.udp_echo()
    vport = free_port(socket.SOCK_DGRAM)
    vip = f"127.0.0.1:{vport}"
    with running_lvsd("--workers", workers) as name:
        adm = Adm(name)
        adm("-A", "-u", vip, "-s", "rr", "-o")
        adm("-a", "-u", vip, "-r", f"127.0.0.1:{a}", "-m")
        adm("-a", "-u", vip, "-r", f"127.0.0.1:{b}", "-m")
        if workers != "1":
            wait_until(lambda: " ".join(adm.status()["planes"]).count("1 UDP services served") == 2, 10)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        got = [udp_ask("127.0.0.1", vport, b"abc", s) for _ in range(6)]
        s.close()
        ports = [g.split(b":")[0] for g in got]
        assert ports[0] != ports[1] and ports[::2] == [ports[0]] * 3 and ports[1::2] == [ports[1]] * 3
        time.sleep(0.7)  # past a counter sweep (0.5 s) of the plane
        out = adm("-L", "-n", "--stats", "--exact")
        m = re.search(rf"UDP  {re.escape(vip)}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out)
        assert m, out
        assert [int(x) for x in m.groups()] == [6, 6, 0, 18, 0], out
        assert adm("-L", "-c", "-n").count("\n") == 2
        listing = adm("-L", "-n")
        rows = re.findall(r"->\s+127\.0\.0\.1:\d+\s+Masq\s+1\s+(\d+)\s+(\d+)", listing)
        assert rows == [("0", "0"), ("0", "0")], listing


# ----------------------------------------------------------------------------
# the rate limit on a real path: client and director in their own namespaces
# ----------------------------------------------------------------------------
_CLIENT_PROG = r"""
import socket, struct, sys, time
vip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cap = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
cap.settimeout(0.3)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.monotonic()
for i in range(n):
    s.sendto(b"x%d" % i, (vip, port))
    time.sleep(0.01)
got = []
deadline = time.monotonic() + 1.5
while time.monotonic() < deadline:
    try:
        pkt = cap.recv(2048)
    except TimeoutError:
        continue
    icmp = pkt[(pkt[0] & 15) * 4 :]
    if icmp[:2] == bytes([3, 3]):
        got.append(socket.inet_ntoa(pkt[12:16]) + " " + icmp[36:].decode())
print("\n".join(got))
print("elapsed", round(time.monotonic() - t0, 2))
"""


@needs_root
def test_icmp_rate_limit_per_client_across_namespaces() -> None:
    why = can_netns()
    if why:
        pytest.skip(why)
    tag = uuid.uuid4().hex[:6]
    cns, dns = f"lvuc{tag}", f"lvud{tag}"

    def sh(*args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, timeout=20)

    try:
        sh("ip", "netns", "add", cns)
        sh("ip", "netns", "add", dns)
        sh(
            "ip",
            "link",
            "add",
            f"c{tag}",
            "netns",
            cns,
            "type",
            "veth",
            "peer",
            "name",
            f"d{tag}",
            "netns",
            dns,
        )
        for ns, dev, addr in ((cns, f"c{tag}", "10.9.0.2/24"), (dns, f"d{tag}", "10.9.0.1/24")):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        prefix = ["ip", "netns", "exec", dns]
        with running_lvsd("--no-dr", prefix=prefix) as name:
            r = lvsadm(name, "-A", "-u", "10.9.0.1:5353", "-s", "rr", prefix=prefix)
            assert r.returncode == 0, r.stderr
            run = [*("ip", "netns", "exec", cns), sys.executable, "-c", _CLIENT_PROG, "10.9.0.1", "5353"]
            out = subprocess.run([*run, "10"], capture_output=True, text=True, timeout=30, check=True).stdout
            got = out.split()[:-2]
            # a burst of 6 for a new client (XRLIM_BURST_FACTOR), then nothing
            # within the same second; every answer from the VIP
            assert got[0::2] == ["10.9.0.1"] * 6, out
            assert got[1::2] == [f"x{i}" for i in range(6)], out
            time.sleep(1.1)
            out = subprocess.run([*run, "8"], capture_output=True, text=True, timeout=30, check=True).stdout
            # a token per second since (the first run's collection and this
            # run's start included: 2-4 s), still not all 8 unless the sending
            # itself took seconds (a loaded machine), which refills a token a second
            *got, _, elapsed = out.split()
            answered = [int(x[1:]) for x in got[1::2]]
            assert got[0::2] == ["10.9.0.1"] * len(answered), out
            assert answered == sorted(set(answered)) and answered[:1] == [0], out
            assert 1 <= len(answered) <= 5 + int(float(elapsed)), out
    finally:
        for ns in (cns, dns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)
