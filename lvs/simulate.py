"""``lvsadm simulate``: run an oracle scenario against the emulated kernel.

The scenario format is the kernel oracle's (see tests/data/README or
docs/simulate.md): ``ipvsadm`` lines change the table, ``tcp``/``udp``/
``flows`` send client traffic, ``close`` ends held TCP connections,
``sleep`` advances the virtual clock, ``snapshot`` lists the table.  The
output is one JSON line per step and per flow, like the oracle's traces, so
the two can be compared line by line.

What the virtual network models is what decides a TCP flow's fate on the
oracle's machine: a real server with a ``listen``-er answers (ESTABLISHED),
a local address without one resets (CLOSE), anything else never answers
(the entry stays SYN_RECV).  Flows and closes take no virtual time.
"""

from __future__ import annotations

import io
import ipaddress
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

from .addr import parse_ip
from .constants import (
    AF_INET,
    AF_INET6,
    CONN_F_FWD_MASK,
    CONN_F_MASQ,
    CONN_F_ONE_PACKET,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from .core import DROP, FORWARD, REJECT, Director
from .ctl import IPVS
from .ipvsadm.grammar import Resolver
from .ipvsadm.names import NullResolver
from .model import Flow
from .proto_tcp import ACK, FIN, RST, SYN

# IP packet lengths of the segments the oracle's clients send (for --stats).
LEN_SYN = 60
LEN_SYNACK = 60
LEN_ACK = 52
LEN_FIN = 52
LEN_RST = 40
LEN_UDP = 36  # "ipvslab\n" in a UDP datagram
LEN_ICMP_UNREACH = 64  # ICMP header + the datagram it quotes
#: the client's initial retransmission timeout, and the lab's TCP connect timeout
SYN_RETRY = 1.0
#: a dropped FIN is probed again after FIN_PROBE_BASE * (2**k - 1) s, k = 1..FIN_PROBES
FIN_PROBE_BASE = 0.2
FIN_PROBES = 8


class ScenarioError(ValueError):
    """A scenario line that cannot be understood."""


def parse_endpoint(text: str) -> tuple[int, int, int]:
    """``a.b.c.d:port`` or ``[v6]:port`` -> (af, address, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ScenarioError(f"bad endpoint {text!r}")
    af, value = parse_ip(host)
    return af, value, int(port)


def _kv(args: Iterable[str], key: str, default: str) -> str:
    for a in args:
        if a.startswith(key + "="):
            return a[len(key) + 1 :]
    return default


@dataclass
class VirtualNet:
    """The oracle machine's addressing, as far as it decides TCP outcomes."""

    local: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    listeners: set[tuple[int, int, int]] = field(default_factory=set)

    def is_local(self, af: int, addr: int) -> bool:
        ip = ipaddress.ip_address(addr) if af == AF_INET else ipaddress.IPv6Address(addr)
        return any(ip.version == net.version and ip in net for net in self.local)

    def add_local(self, prefix: str) -> None:
        self.local.append(ipaddress.ip_network(prefix, strict=False))


IpvsadmRunner = Callable[[list[str], IPVS, float, TextIO, TextIO], int]


def _default_runner(resolver: Resolver) -> IpvsadmRunner:
    from .ipvsadm.commands import run

    def runner(argv: list[str], ipvs: IPVS, now: float, out: TextIO, err: TextIO) -> int:
        return run(argv, ipvs, now, out, err, resolver)

    return runner


class Simulation:
    """A scenario run: the director, the virtual clock and the network."""

    def __init__(
        self,
        seed: int = 0,
        runner: IpvsadmRunner | None = None,
        classic: bool = False,
        explain: bool = False,
        all_steps: bool = False,
        resolver: Resolver | None = None,
        svc_hash_salt: int | None = None,
    ) -> None:
        """``resolver`` names hosts and ports in ipvsadm lines (none known if
        not given: the oracle's scenarios are numeric).  ``svc_hash_salt`` is
        the kernel's ``(size_t)netns_ipvs >> 8`` that orders the service hash
        table (``--nosort``, /proc/net/ip_vs, and the input order of
        ipvsadm's sort): it differs from boot to boot on the lab, so a replay
        of a recorded run passes the value that run had (see
        :func:`lvs.ipvsadm.proc.kernel_service_order`)."""
        self.ipvs = IPVS(rng=random.Random(seed), classic=classic)
        if svc_hash_salt is not None:
            self.ipvs.svc_hash_salt = svc_hash_salt
        self.director = Director(self.ipvs)
        self.now = 0.0
        self.net = VirtualNet()
        self.held: dict[str, Flow] = {}
        #: the local socket each held flow was accepted by (see _reached)
        self.peers: dict[str, tuple[int, int, int]] = {}
        #: held flows whose FIN the director dropped, with the virtual time of the close
        self.unsent_fins: list[tuple[Flow, float]] = []
        self.unsent_peers: dict[int, tuple[int, int, int] | None] = {}
        self.index = 0
        self.runner = runner or _default_runner(resolver or NullResolver())
        #: add an "explain" field to every flow line (see lvs.explain)
        self.explain = explain
        self._account: dict | None = None
        self._rules_shown: set[str] = set()
        #: also emit the steps the JSON lines leave out (sleep, sysctl,
        #: local/listen), for --report; the JSON output never sets it
        self.all_steps = all_steps

    # -- ipvsadm -----------------------------------------------------------------
    def ipvsadm(self, argv: list[str]) -> tuple[int, str]:
        buf = io.StringIO()
        rc = self.runner(argv, self.ipvs, self.now, buf, buf)
        return rc, buf.getvalue()

    def command(self, argv: list[str]) -> tuple[int, str, str] | None:
        """``ipvsadm ...`` or ``cat /proc/net/ip_vs[_stats]`` as the lab's
        ``sh``/``capture`` lines run them: (status, stdout, stderr); None for
        any other command."""
        if argv and argv[0] == "ipvsadm":
            out, err = io.StringIO(), io.StringIO()
            rc = self.runner(argv[1:], self.ipvs, self.now, out, err)
            return rc, out.getvalue(), err.getvalue()
        if len(argv) == 2 and argv[0] == "cat":
            from .ipvsadm import proc

            renderers = {
                "/proc/net/ip_vs": proc.proc_ip_vs,
                "/proc/net/ip_vs_stats": proc.proc_ip_vs_stats,
            }
            render = renderers.get(argv[1])
            if render is not None:
                return 0, render(self.ipvs), ""
        return None

    # -- traffic -------------------------------------------------------------------
    def _flow(self, proto: int, src: str, dst: str, mark: int) -> Flow:
        saf, saddr, sport = parse_endpoint(src)
        daf, daddr, dport = parse_endpoint(dst)
        if saf != daf:
            raise ScenarioError(f"address families differ: {src} {dst}")
        return Flow(saf, proto, saddr, sport, daddr, dport, mark)

    def udp(self, src: str, dst: str, mark: int = 0) -> dict:
        flow = self._flow(IPPROTO_UDP, src, dst, mark)
        self._before(flow)
        v = self.director.process_in(flow, self.now, 0, LEN_UDP)
        cp = v.conn if v.action == FORWARD else None
        if cp is not None and self.net.is_local(cp.daf, cp.daddr):
            # a local real server without a UDP socket answers ICMP port
            # unreachable, which passes the director as a related reply
            self.director.count_out(cp, LEN_ICMP_UNREACH)
        if cp is None and v.conn is not None and v.conn.hashed:
            # dropped on an entry whose real server is deleted: the lab reads
            # /proc/net/ip_vs_conn after the send and finds that entry
            cp = v.conn
        return self._report("udp", flow, src, dst, mark, cp)

    def tcp(self, src: str, dst: str, mark: int = 0, hold: bool = True) -> dict:
        flow = self._flow(IPPROTO_TCP, src, dst, mark)
        d = self.director
        self._before(flow)
        v = d.process_in(flow, self.now, SYN, LEN_SYN)
        if v.action != FORWARD or v.conn is None:
            # an entry the SYN was dropped on still shows in /proc/net/ip_vs_conn
            shown = v.conn if v.conn is not None and v.conn.hashed else None
            line = self._report("tcp", flow, src, dst, mark, shown, error="Operation now in progress")
            if v.action in (DROP, REJECT):
                # nothing answers the client (the director's ICMP does not end a local
                # connect): it resends its SYN after 1 s, meets the same answer, and the
                # lab's connect timeout (1 s) gives up
                self.sleep(SYN_RETRY)
            return line
        cp = v.conn
        if not self.net.is_local(cp.daf, cp.daddr):
            # nobody answers: the entry stays SYN_RECV; the client's SYN timer
            # (TCP_TIMEOUT_INIT, 1 s) resends the SYN just before the lab's
            # connect timeout (1 s) gives up, so the director counts two SYNs
            line = self._report("tcp", flow, src, dst, mark, cp, error="Operation now in progress")
            self.sleep(SYN_RETRY)
            d.process_in(flow, self.now, SYN, LEN_SYN)
            return line
        reached = self._reached(flow, cp)
        if reached not in self.net.listeners:
            # a local address with nobody listening answers RST (CLOSE)
            d.process_out(cp, self.now, RST | ACK, LEN_RST)
            return self._report("tcp", flow, src, dst, mark, cp, error="Connection refused")
        d.process_out(cp, self.now, SYN | ACK, LEN_SYNACK)
        d.process_in(flow, self.now, ACK, LEN_ACK)
        line = self._report("tcp", flow, src, dst, mark, cp)
        if hold:
            self.held[src] = flow
            self.peers[src] = reached
        else:
            self._close_flow(flow)
        return line

    @staticmethod
    def _reached(flow: Flow, cp) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
        """The local socket a packet of ``cp`` reaches: the real server's
        address and port under NAT; under direct routing or a tunnel to a
        local server (ip_vs_send_or_cont) the packet goes to the local stack
        unchanged, still addressed to the virtual address and port."""
        if (cp.flags & CONN_F_FWD_MASK) == CONN_F_MASQ:
            return (cp.daf, cp.daddr, cp.dport)
        return (flow.af, flow.vaddr, flow.vport)

    def _close_flow(self, flow: Flow, peer: tuple[int, int, int] | None = None) -> bool:
        """The client closes; the listener sees EOF and closes too.  False when
        the director dropped the client's FIN (its real server is deleted)."""
        d = self.director
        v = d.process_in(flow, self.now, FIN | ACK, LEN_FIN)
        if v.action != FORWARD or v.conn is None:
            return v.action != DROP
        cp = v.conn
        if v.new and self._reached(flow, cp) != peer:
            # the entry went (expire_nodest_conn, expiry) and sloppy_tcp scheduled the
            # FIN as a new connection, to a socket that knows no such connection (RST)
            d.process_out(cp, self.now, RST | ACK, LEN_RST)
            return True
        # the listener closes on EOF at once: its ACK rides on its FIN
        d.process_out(cp, self.now, FIN | ACK, LEN_FIN)
        d.process_in(flow, self.now, ACK, LEN_ACK)
        return True

    def close(self, names: list[str]) -> None:
        if names == ["all"]:
            names = list(self.held)
        for name in names:
            flow = self.held.pop(name, None)
            peer = self.peers.pop(name, None)
            if flow is not None and not self._close_flow(flow, peer):
                self.unsent_fins.append((flow, self.now))
                self.unsent_peers[id(flow)] = peer

    def _retry_fins(self, end: float) -> None:
        """The client's kernel retries a FIN the director dropped: the segment
        waits in the send queue and the zero-window probe timer resends it
        after 0.2 s (TCP_RTO_MIN, the RTO of a loopback connection), then
        after doubling intervals; an orphaned socket gives up after 8
        probes (tcp_orphan_retries 0 means 8).  A probe that finds the real
        server back (added again from the trash) goes through and the
        connection closes as usual.  Runs the director's timers up to each
        probe that is due before ``end``."""
        while self.unsent_fins:
            due = []
            for flow, closed in self.unsent_fins:
                for k in range(1, FIN_PROBES + 1):
                    t = closed + FIN_PROBE_BASE * ((1 << k) - 1)
                    if self.now < t <= end:
                        due.append((t, flow, closed))
                        break
            if not due:
                break
            t, flow, closed = min(due, key=lambda x: x[0])
            self.director.advance(self.now, t)
            self.now = t
            self.unsent_fins.remove((flow, closed))
            if not self._close_flow(flow, self.unsent_peers.get(id(flow))):
                self.unsent_fins.append((flow, closed))
        horizon = FIN_PROBE_BASE * ((1 << FIN_PROBES) - 1)
        self.unsent_fins = [(f, c) for f, c in self.unsent_fins if c + horizon > end]
        live = {id(f) for f, _ in self.unsent_fins}
        self.unsent_peers = {k: v for k, v in self.unsent_peers.items() if k in live}

    def _before(self, flow: Flow) -> None:
        if self.explain:
            from .explain import before_decision

            self._account = before_decision(self.director, flow, self.now)

    def _report(
        self, proto: str, flow: Flow, src: str, dst: str, mark: int, cp, error: str | None = None
    ) -> dict:
        host = src[1:].partition("]")[0] if src.startswith("[") else src.rpartition(":")[0]
        line: dict = {"i": self.index, "proto": proto, "flow": [host, flow.cport], "vip": dst}
        if mark:
            line["mark"] = mark
        self.index += 1
        if cp is not None and cp.flags & CONN_F_ONE_PACKET:
            # a one-packet entry is never hashed: /proc/net/ip_vs_conn, where the
            # oracle looks, never shows it (the decision shows in --stats only)
            line["real_server"] = None
            line["one_packet_server"] = cp.real()
        elif cp is not None:
            line["real_server"] = cp.real()
            line["state"] = cp.state_name()
        else:
            line["real_server"] = None
            if error:
                line["error"] = error
        if self.explain:
            from .explain import render, scheduler_rule

            acc = self._account
            line["explain"] = render(acc)
            line["account"] = acc
            if acc is not None and acc.get("scheduler"):
                svc = self.ipvs.find_service(flow.af, flow.protocol, flow.vaddr, flow.vport, flow.fwmark)
                name = acc["scheduler"]["scheduler"]
                if svc is not None and name not in self._rules_shown:
                    self._rules_shown.add(name)
                    line["rule"] = scheduler_rule(svc)
        return line

    # -- time --------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        end = self.now + seconds
        self._retry_fins(end)
        self.director.advance(self.now, end)
        self.now = end

    # -- the interpreter ---------------------------------------------------------------
    def run(self, lines: Iterable[str], emit: Callable[[dict], None]) -> None:
        for lineno, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0]
            args = line.split()
            if not args:
                continue
            try:
                self._directive(args, emit)
            except ScenarioError as exc:
                raise ScenarioError(f"line {lineno}: {exc}") from None
            except ValueError as exc:
                raise ScenarioError(f"line {lineno}: {exc}") from None

    def _directive(self, args: list[str], emit: Callable[[dict], None]) -> None:
        cmd, rest = args[0], args[1:]
        if cmd == "local":
            for p in rest:
                self.net.add_local(p)
        elif cmd == "addr":
            if rest:
                self.net.add_local(rest[0].split("/")[0])
        elif cmd in ("void", "conns"):
            pass
        elif cmd == "sh":
            # only what the emulated kernel can answer: ipvsadm and the /proc/net/ip_vs files
            result = self.command(rest)
            if result is not None:
                # the lab's sh steps log stdout and stderr together (2>&1)
                rc, out, err = result
                emit(
                    {"step": "sh", "args": " ".join(rest), "rc": rc, "output": (out + err).removesuffix("\n")}
                )
        elif cmd == "listen":
            for ep in rest:
                self.net.listeners.add(parse_endpoint(ep))
        elif cmd == "sysctl":
            for kv in rest:
                name, _, value = kv.partition("=")
                prefix = "net.ipv4.vs."
                if name.startswith(prefix):
                    try:
                        self.ipvs.sysctl.set(name[len(prefix) :], value)
                    except (KeyError, ValueError):
                        raise ScenarioError(f"unknown or bad sysctl {kv!r}") from None
            if self.all_steps:
                emit({"step": "sysctl", "args": " ".join(rest)})
        elif cmd == "ipvsadm":
            rc, out = self.ipvsadm(rest)
            emit({"step": "ipvsadm", "args": " ".join(rest), "rc": rc, "output": out.removesuffix("\n")})
        elif cmd == "capture":
            result = self.command(rest[1:]) if len(rest) >= 2 else None
            if result is not None:
                # the lab keeps a capture's stdout and stderr apart (NAME.txt, NAME.stderr.txt)
                rc, out, err = result
                step = {"step": "capture", "args": " ".join(rest), "rc": rc, "output": out.removesuffix("\n")}
                if err:
                    step["stderr"] = err.removesuffix("\n")
                emit(step)
        elif cmd in ("udp", "tcp"):
            if len(rest) < 2:
                raise ScenarioError(f"{cmd} needs SRC:PORT DST:PORT")
            mark = int(_kv(rest[2:], "mark", "0"))
            if cmd == "udp":
                emit(self.udp(rest[0], rest[1], mark))
            else:
                emit(self.tcp(rest[0], rest[1], mark, _kv(rest[2:], "hold", "1") == "1"))
        elif cmd == "flows":
            self._flows(rest, emit)
        elif cmd == "close":
            self.close(rest)
            emit({"step": "close", "args": " ".join(rest), "rc": 0, "output": ""})
        elif cmd == "sleep":
            if not rest:
                raise ScenarioError("sleep needs seconds")
            self.sleep(float(rest[0]))
            if self.all_steps:
                emit({"step": "sleep", "args": rest[0]})
        elif cmd == "snapshot":
            _, a = self.ipvsadm(["-L", "-n"])
            _, b = self.ipvsadm(["-L", "-n", "--stats"])
            emit({"step": "snapshot", "args": " ".join(rest), "rc": 0, "output": (a + b).removesuffix("\n")})
        else:
            raise ScenarioError(f"unknown directive {cmd!r}")

    def _flows(self, rest: list[str], emit: Callable[[dict], None]) -> None:
        if len(rest) < 2:
            raise ScenarioError("flows needs PROTO COUNT")
        proto, count = rest[0], int(rest[1])
        src = _kv(rest, "src", "")
        dst = _kv(rest, "dst", "")
        saf, sip, sport = parse_endpoint(src)
        daf, dip, dport = parse_endpoint(dst)
        srcstep = int(_kv(rest, "srcstep", "1"))
        srcmod = int(_kv(rest, "srcmod", "0"))
        sportstep = int(_kv(rest, "sportstep", "1"))
        dststep = int(_kv(rest, "dststep", "0"))
        dstmod = int(_kv(rest, "dstmod", "0"))
        mark = int(_kv(rest, "mark", "0"))
        hold = _kv(rest, "hold", "1") == "1"
        for k in range(count):
            si = k * srcstep
            if srcmod > 0:
                si %= srcmod
            di = k * dststep
            if dstmod > 0:
                di %= dstmod
            s = _endpoint_text(saf, sip + si, sport + k * sportstep)
            d = _endpoint_text(daf, dip + di, dport)
            if proto == "udp":
                emit(self.udp(s, d, mark))
            elif proto == "tcp":
                emit(self.tcp(s, d, mark, hold))
            else:
                raise ScenarioError(f"unknown protocol {proto!r}")


def _endpoint_text(af: int, value: int, port: int) -> str:
    if af == AF_INET6:
        return f"[{ipaddress.IPv6Address(value)}]:{port}"
    return f"{ipaddress.IPv4Address(value)}:{port}"


def simulate(
    lines: Iterable[str],
    out: TextIO,
    seed: int = 0,
    classic: bool = False,
    explain: bool = False,
    resolver: Resolver | None = None,
    svc_hash_salt: int | None = None,
) -> None:
    """Run a scenario and write its JSON lines to ``out``."""
    sim = Simulation(
        seed=seed, classic=classic, explain=explain, resolver=resolver, svc_hash_salt=svc_hash_salt
    )

    def emit(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")

    sim.run(lines, emit)


def simulate_report(
    lines: Iterable[str],
    out: TextIO,
    seed: int = 0,
    classic: bool = False,
    explain: bool = False,
    resolver: Resolver | None = None,
) -> Simulation:
    """Run a scenario and write the plain-text report (:mod:`lvs.report`) to ``out``."""
    from .report import Report

    sim = Simulation(seed=seed, classic=classic, explain=explain, all_steps=True, resolver=resolver)
    render = None
    if explain:
        from .explain import render_lines

        render = render_lines
    write = out.write
    report = Report(write=lambda line: write(line + "\n"), now=lambda: sim.now, explain=render)
    sim.run(lines, report.feed)
    for line in report.final_table(sim.ipvs):
        write(line + "\n")
    return sim
