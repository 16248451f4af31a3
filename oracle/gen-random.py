#!/usr/bin/env python3
"""gen-random.py SEED COUNT OUTDIR [--kind mixed|trash|wide]: seeded random scenarios for the lab.

Writes OUTDIR/rnd-<kind>-<SEED+k>.scn for k in 0..COUNT-1.  The same seed always gives the
same files (Python's ``random.Random(seed)``, no other input).  Every scenario is built so
that the kernel's answer does not depend on wall-clock timing inside the VM:

* TCP real servers are local listeners (ESTABLISHED; a local direct-routing or tunnel
  server finds a listener on the virtual address), never silent non-local ones;
  no local address without a listener for TCP (its CLOSE entry lives 10 s, shorter than
  a run);
* persistence timeouts and entry timeouts are far longer than a run, except in an
  explicit expiry phase that shortens them with ``--set`` and sleeps well past them;
* a held connection is never closed while one of its service's real servers is deleted
  and later added back (the client's FIN is dropped while the server is in the trash and
  its retransmission after the re-add depends on timing); see oracle/README.md;
* every snapshot is preceded by ``sleep 3`` so that the rate estimator (2 s) has copied
  the counters that ``--stats`` shows.

Kinds: ``quick`` (``mixed`` with fewer flows and operations, for a loaded lab), ``batch``
(``quick`` in address ranges of its own, for run-batch.sh; ``trashb`` the same for
``trash``), ``mixed`` (every scheduler
and flag, add/edit/delete/re-add of real servers while connections are open, thresholds,
sysctls, -E, one-packet services, persistence with netmask and expiry), ``trash`` (real
servers deleted with connections and added back: the kernel's destination trash),
``wide`` (tables spread over the address space, listed with every ipvsadm view,
``--nosort`` and ``/proc/net/ip_vs``).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SCHEDULERS = ["rr", "wrr", "lc", "wlc", "fo", "ovf", "lblc", "lblcr", "dh", "sh", "mh", "sed", "nq", "twos"]
METHODS = ["-m", "-g", "-i"]
NONLOCAL_TCP_MAX = 0
#: kinds made for run-batch.sh (address ranges and marks of their own, by the seed)
BATCHED = ("batch", "trashb")
SYSCTLS = {
    "expire_nodest_conn": [0, 0, 1],
    "expire_quiescent_template": [0, 0, 1],
    "conn_reuse_mode": [0, 1, 2, 3],
    "sloppy_tcp": [0, 0, 1],
}


class Service:
    """What the generator knows of one virtual service."""

    def __init__(self, kind: str, vip: str, port: int, mark: int) -> None:
        self.kind = kind  # tcp | udp | fwm
        self.vip = vip
        self.port = port
        self.mark = mark
        self.sched = "wlc"
        self.dests: dict[str, dict] = {}  # "ip:port" -> {"w":, "m":, "alive": bool}
        self.deleted: set[str] = set()
        self.no_readd: set[str] = set()
        self.persistent = False
        self.onepacket = False
        self.next_src = 0

    @property
    def opt(self) -> str:
        if self.kind == "fwm":
            return f"-f {self.mark}"
        return f"-{self.kind[0]} {self.vip}:{self.port}"

    @property
    def proto(self) -> str:
        return "udp" if self.kind == "udp" else "tcp"


def sched_flags(rng: random.Random, sched: str) -> str:
    if sched == "sh" and rng.random() < 0.6:
        return " -b " + ",".join(rng.sample(["sh-fallback", "sh-port"], rng.randint(1, 2)))
    if sched == "mh" and rng.random() < 0.6:
        return " -b " + ",".join(rng.sample(["mh-fallback", "mh-port"], rng.randint(1, 2)))
    return ""


def service_opts(rng: random.Random, svc: Service, sched: str, persist_p: float = 0.3) -> str:
    svc.sched = sched
    opts = f"-s {sched}{sched_flags(rng, sched)}"
    svc.persistent = rng.random() < persist_p
    if svc.persistent:
        opts += f" -p {rng.choice([60, 120, 300, 900])}"
        if rng.random() < 0.5:
            opts += " -M " + rng.choice(["255.255.255.0", "255.255.0.0", "255.255.255.252", "255.0.255.0"])
    svc.onepacket = svc.kind == "udp" and rng.random() < 0.25
    if svc.onepacket:
        opts += " -o"
    return opts


class Gen:
    def __init__(self, seed: int, kind: str) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.kind = kind
        self.lines: list[str] = []
        self.services: list[Service] = []
        self.held: list[tuple[Service, str]] = []
        self.src_base = 0
        self.nonlocal_tcp = 0
        #: fewer flows per operation (quick scenarios)
        self.flow_scale = 1.0
        #: clients live in 10.<client_net>.0.0/16: 2, or for ``batch`` scenarios, which
        #: run-batch.sh records several to a VM boot, one of 16..23 by the seed, so
        #: that neighbours never reuse a client address and port
        self.client_net = 16 + seed % 8 if kind in BATCHED else 2
        #: virtual addresses in 10.<vip_net>.0.0/24 and 10.<vip_net>.9.0/24, marks from
        #: mark_base + 1: 0 and 0, or 32..39 and 1000..8000 by the seed for ``batch``, so
        #: that a scenario never meets its predecessor's trashed servers (the trash is
        #: found by virtual address and port, or by mark)
        self.vip_net = 32 + seed % 8 if kind in BATCHED else 0
        self.mark_base = 1000 * (1 + seed % 8) if kind in BATCHED else 0

    def out(self, line: str) -> None:
        self.lines.append(line)

    # -- pieces ------------------------------------------------------------------------
    def new_dest(self, svc: Service) -> str:
        rng = self.rng
        while True:
            if svc.kind == "udp":
                host = f"10.{rng.choice([1, 3])}.0.{rng.randint(1, 60)}"
                port = rng.choice([53, 5353, svc.port])
            else:
                # TCP and fwmark (TCP flows): local listeners.  (A silent non-local server
                # keeps its entries in SYN_RECV for 60 s and each flow to it holds the
                # lab's client for its 1 s connect timeout, so a long run sees them expire
                # at times that depend on the VM's speed: none in random scenarios.)
                if rng.random() < 0.08 and self.nonlocal_tcp < NONLOCAL_TCP_MAX:
                    host = f"10.3.0.{rng.randint(1, 60)}"
                    self.nonlocal_tcp += 1
                else:
                    host = f"10.1.0.{rng.randint(1, 60)}"
                port = 80 if svc.kind == "fwm" else svc.port
            ep = f"{host}:{port}"
            if ep not in svc.dests:
                return ep

    def dest_opts(self, svc: Service, ep: str) -> str:
        rng = self.rng
        method = rng.choice(METHODS)
        if svc.kind != "udp" and method != "-m" and svc.kind != "fwm":
            pass
        weight = rng.choice([0, 1, 1, 2, 3, 5]) if rng.random() < 0.9 else rng.randint(6, 100)
        opts = f"{method} -w {weight}"
        if rng.random() < 0.2:
            u = rng.randint(1, 8)
            opts += f" -x {u}"
            if rng.random() < 0.5:
                opts += f" -y {rng.randint(0, u)}"
        svc.dests[ep] = {"opts": opts}
        return opts

    def flows(self, svc: Service, count: int, hold: int, ip_group: int | None = None) -> None:
        rng = self.rng
        self.src_base += 1
        a, b = divmod(self.src_base if ip_group is None else ip_group, 200)
        # every group has its own 100 client ports: no two flows share a client address and port
        src = f"10.{self.client_net}.{a}.{b + 1}:{10000 + 100 * self.src_base}"
        srcstep = rng.choice([1, 1, 3, 7, 256])
        srcmod = rng.choice([0, 0, 4, 16])
        dst = f"{svc.vip}:{svc.port}" if svc.kind != "fwm" else f"{svc.vip}:{rng.choice([80, 443])}"
        mark = f" mark={svc.mark}" if svc.kind == "fwm" else ""
        holdopt = "" if svc.proto == "udp" else f" hold={hold}"
        self.out(
            f"flows {svc.proto} {count} src={src} dst={dst} srcstep={srcstep} srcmod={srcmod}{mark}{holdopt}"
        )
        if svc.proto == "tcp" and hold:
            host, port = src.rsplit(":", 1)
            ip = [int(x) for x in host.split(".")]
            base = (ip[0] << 24) | (ip[1] << 16) | (ip[2] << 8) | ip[3]
            for k in range(count):
                si = k * srcstep
                if srcmod:
                    si %= srcmod
                v = base + si
                h = f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}:{int(port) + k}"
                self.held.append((svc, h))

    def udp_repeat(self, svc: Service) -> None:
        """UDP datagrams from the client ports of earlier flows (the existing entry path)."""
        if svc.kind != "udp" or not self.rng.random() < 0.5:
            return
        self.out(f"udp 10.{self.client_net}.0.{self.rng.randint(1, 3)}:4242 {svc.vip}:{svc.port}")

    def snapshot(self, label: str) -> None:
        self.out("sleep 3")
        self.out(f"snapshot {label}")

    def close_some(self) -> None:
        rng = self.rng
        if not self.held:
            return
        # a service with deleted real servers keeps its connections open: a client FIN to a
        # server in the trash is dropped, and what its retransmission meets depends on timing
        pick = [(svc, h) for svc, h in self.held if not svc.deleted and rng.random() < 0.4]
        ok = []
        for svc, h in pick:
            ok.append(h)
            self.held.remove((svc, h))
        if ok:
            self.out("close " + " ".join(ok))

    # -- scenario kinds ------------------------------------------------------------------------
    def header(self) -> None:
        rng = self.rng
        self.out(f"# pylvs random scenario: kind={self.kind} seed={self.seed} (oracle/gen-random.py)")
        v = self.vip_net
        self.out(f"local 10.{self.client_net}.0.0/16 10.1.0.0/24 10.{v}.9.0/24 10.{v}.0.0/24")
        # real servers listen on their own address (NAT) and on the virtual addresses: a
        # direct-routing or tunnel server that is local gets the packet unchanged, addressed
        # to the virtual address (nobody listening there would answer RST: CLOSE, 10 s)
        self.out("listen " + " ".join(f"10.1.0.{i}:{p}" for i in range(1, 61) for p in (80, 443)))
        vips = [f"10.{self.vip_net}.{n}.{i}:{p}" for n in (0, 9) for i in range(1, 4) for p in (80, 443)]
        self.out("listen " + " ".join(vips))
        sysctls = [f"net.ipv4.vs.{k}={rng.choice(v)}" for k, v in SYSCTLS.items() if rng.random() < 0.6]
        if sysctls:
            self.out("sysctl " + " ".join(sysctls))

    def make_services(self, n: int, persist_p: float = 0.3) -> None:
        rng = self.rng
        used_marks: set[int] = set()
        for i in range(n):
            kind = rng.choice(["tcp", "tcp", "udp", "udp", "fwm"])
            if kind == "fwm":
                mark = self.mark_base + rng.randint(1, 50)
                while mark in used_marks:
                    mark += 1
                used_marks.add(mark)
                svc = Service(kind, f"10.{self.vip_net}.9.{i + 1}", 0, mark)
            else:
                svc = Service(kind, f"10.{self.vip_net}.0.{i + 1}", 80 if kind == "tcp" else 53, 0)
            sched = rng.choice(SCHEDULERS[:-1]) if rng.random() < 0.95 else "twos"
            self.out(f"ipvsadm -A {svc.opt} {service_opts(rng, svc, sched, persist_p)}")
            for _ in range(rng.randint(2, 5)):
                ep = self.new_dest(svc)
                self.out(f"ipvsadm -a {svc.opt} -r {ep} {self.dest_opts(svc, ep)}")
            self.services.append(svc)

    def op(self, svc: Service, snapshots: bool = True) -> None:
        rng = self.rng
        r = rng.random()
        alive = [ep for ep in svc.dests if ep not in svc.deleted]
        if r < 0.35:
            self.flows(svc, max(1, int(rng.randint(2, 12) * self.flow_scale)), rng.choice([1, 1, 0]))
            self.udp_repeat(svc)
        elif r < 0.47 and alive:
            ep = rng.choice(alive)
            self.out(f"ipvsadm -e {svc.opt} -r {ep} {self.dest_opts(svc, ep)}")
        elif r < 0.6 and len(alive) > 1:
            ep = rng.choice(alive)
            self.out(f"ipvsadm -d {svc.opt} -r {ep}")
            svc.deleted.add(ep)
        elif r < 0.75 and svc.deleted - svc.no_readd:
            ep = rng.choice(sorted(svc.deleted - svc.no_readd))
            self.out(f"ipvsadm -a {svc.opt} -r {ep} {self.dest_opts(svc, ep)}")
            svc.deleted.discard(ep)
        elif r < 0.8:
            ep = self.new_dest(svc)
            self.out(f"ipvsadm -a {svc.opt} -r {ep} {self.dest_opts(svc, ep)}")
        elif r < 0.87:
            sched = rng.choice(SCHEDULERS[:-1])
            self.out(f"ipvsadm -E {svc.opt} {service_opts(rng, svc, sched)}")
        elif r < 0.92:
            self.close_some()
        elif r < 0.95:
            k = rng.choice(list(SYSCTLS))
            self.out(f"sysctl net.ipv4.vs.{k}={rng.choice(SYSCTLS[k])}")
        elif r < 0.97:
            # -Z takes the counters as the estimator last copied them: let it run first
            self.out("sleep 3")
            self.out(f"ipvsadm -Z {svc.opt}" if rng.random() < 0.5 else "ipvsadm -Z")
        elif snapshots:
            self.snapshot("mid")

    def quick(self) -> None:
        """``mixed`` made cheap for a loaded lab: 1-2 services, few flows, 4-9 operations,
        one snapshot at the end (the flows, ipvsadm steps and that snapshot are compared)."""
        rng = self.rng
        self.header()
        self.make_services(rng.randint(1, 2))
        self.flow_scale = 0.5
        for svc in self.services:
            self.flows(svc, rng.randint(2, 6), 1)
        for _ in range(rng.randint(4, 9)):
            self.op(rng.choice(self.services), snapshots=False)
        self.snapshot("end")

    def batch(self) -> None:
        """``quick`` for run-batch.sh (several scenarios to one VM boot)."""
        self.quick()

    def trashb(self) -> None:
        """``trash`` for run-batch.sh."""
        self.trash()

    def mixed(self) -> None:
        rng = self.rng
        self.header()
        self.make_services(rng.randint(1, 3))
        for svc in self.services:
            self.flows(svc, rng.randint(3, 10), 1)
        for _ in range(rng.randint(8, 18)):
            self.op(rng.choice(self.services))
        self.snapshot("before-expiry" if rng.random() < 0.2 else "end")
        if self.lines[-1].endswith("before-expiry"):
            # persistence and entry expiry: new entries get short timeouts (--set) and new
            # templates a short -p; after the sleep they are gone and the same clients are
            # scheduled again
            self.out("ipvsadm --set 4 2 3")
            for svc in self.services:
                if svc.persistent:
                    sched = rng.choice(SCHEDULERS[:-1])
                    mask = " -M 255.255.255.0" if rng.random() < 0.5 else ""
                    self.out(f"ipvsadm -E {svc.opt} -s {sched}{sched_flags(rng, sched)} -p 5{mask}")
            groups = []
            for svc in self.services:
                self.flows(svc, rng.randint(2, 6), 1)
                groups.append(self.src_base)
            self.held = []
            self.out("sleep 9")
            for svc, group in zip(self.services, groups):
                self.flows(svc, rng.randint(2, 6), 1, ip_group=group)
            # well past the short timeouts again: a flow to a silent or missing server
            # holds the lab's client up to 1 s, so a snapshot close to an expiry would
            # depend on how many of them came before it
            self.out("sleep 9")
            self.snapshot("end")

    def trash(self) -> None:
        rng = self.rng
        self.header()
        self.make_services(rng.randint(1, 2), persist_p=0.2)
        for svc in self.services:
            self.flows(svc, rng.randint(4, 12), 1)
        for _ in range(rng.randint(3, 6)):
            svc = rng.choice(self.services)
            alive = [ep for ep in svc.dests if ep not in svc.deleted]
            if len(alive) > 1:
                ep = rng.choice(alive)
                self.out(f"ipvsadm -d {svc.opt} -r {ep}")
                svc.deleted.add(ep)
            self.flows(svc, rng.randint(2, 8), rng.choice([1, 1, 0]))
            if rng.random() < 0.3:
                self.snapshot("deleted")
            # now and then delete the whole service and make it again: trashed servers come
            # back into a new service object (their stats start again)
            if rng.random() < 0.4 and svc.deleted and rng.random() < 0.25:
                # A deleted dest's estimator stops: its --stats base stays at the last 2 s
                # tick, and a new service zeroes the stats from that base.  Bring the
                # deleted ones back and let the estimator run before the service goes.
                for ep in sorted(svc.deleted - svc.no_readd):
                    self.out(f"ipvsadm -a {svc.opt} -r {ep} {self.dest_opts(svc, ep)}")
                    svc.deleted.discard(ep)
                self.out("sleep 3")
                self.out(f"ipvsadm -D {svc.opt}")
                self.out(f"ipvsadm -A {svc.opt} {service_opts(rng, svc, rng.choice(SCHEDULERS[:-1]))}")
                svc.deleted |= set(svc.dests)
            for ep in sorted(svc.deleted - svc.no_readd):
                if rng.random() < 0.7:
                    self.out(f"ipvsadm -a {svc.opt} -r {ep} {self.dest_opts(svc, ep)}")
                    svc.deleted.discard(ep)
            if not any(ep not in svc.deleted for ep in svc.dests):
                ep = self.new_dest(svc)
                self.out(f"ipvsadm -a {svc.opt} -r {ep} {self.dest_opts(svc, ep)}")
            self.flows(svc, rng.randint(4, 14), rng.choice([1, 1, 0]))
            if rng.random() < 0.4:
                self.close_some()
        self.snapshot("end")

    def wide(self) -> None:
        rng = self.rng
        self.out(f"# pylvs random scenario: kind=wide seed={self.seed} (oracle/gen-random.py)")
        prefixes = [
            (1, 0, 8),
            (9, 0, 8),
            (100, 64, 10),
            (126, 0, 8),
            (127, 0, 8),
            (128, 0, 8),
            (172, 16, 12),
            (192, 0, 8),
            (200, 0, 8),
            (203, 0, 8),
            (223, 0, 8),
            (10, 0, 8),
            (64, 0, 8),
            (191, 255, 16),
            (130, 0, 8),
            (60, 0, 8),
        ]
        seen: set[str] = set()
        n = rng.randint(6, 24)
        for _ in range(n):
            kind = rng.choice(["t", "t", "u", "f", "6", "s"])
            if kind == "f":
                mark = rng.choice(
                    [rng.randint(1, 100), rng.randint(1, 2**32 - 1), rng.randint(2**31, 2**32 - 1)]
                )
                opt = f"-f {mark}" + (" -6" if rng.random() < 0.2 else "")
            elif kind == "6":
                words = [
                    rng.choice([0x2001, 0xFD00, 0x0, 0x3FFF, 0x8000, 0xFC00, 0x2A02]),
                    rng.randint(0, 0xFFFF),
                ]
                opt = f"-t [{words[0]:x}:{words[1]:x}::{rng.randint(1, 0xFFFF):x}]:{rng.choice([80, 443, 0])}"
            else:
                a, b, bits = rng.choice(prefixes)
                if bits == 8:
                    b = rng.randint(0, 255)
                elif bits == 10:
                    b = rng.randint(64, 127)
                elif bits == 12:
                    b = rng.randint(16, 31)
                ip = f"{a}.{b}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
                proto = {"t": "-t", "u": "-u", "s": "--sctp-service"}[kind]
                opt = f"{proto} {ip}:{rng.choice([80, 443, 53, 22, 0, 65535, 8080, 25])}"
            if opt in seen:
                continue
            seen.add(opt)
            sched = rng.choice(SCHEDULERS[:-1])
            extra = ""
            if opt.endswith(":0"):
                extra = f" -p {rng.choice([60, 300])}"
            elif rng.random() < 0.3:
                extra = f" -p {rng.choice([60, 300, 3600])}"
                if rng.random() < 0.5 and "[" not in opt and "-6" not in opt:
                    extra += " -M 255.255.255.0"
            self.out(f"ipvsadm -A {opt} -s {sched}{sched_flags(rng, sched)}{extra}")
            six = "[" in opt or " -6" in opt
            for _ in range(rng.randint(0, 4)):
                if six:
                    w0 = rng.choice([0x2001, 0xFD00, 0x3FFF, 0xA000, 0x1])
                    w1 = rng.randint(0, 0xFFFF)
                    rs = f"[{w0:x}:{w1:x}::{rng.randint(1, 99):x}]"
                else:
                    o1 = rng.choice([1, 10, 127, 128, 172, 192, 200, 223, 99, 150])
                    o2 = rng.randint(0, 255)
                    o3 = rng.randint(0, 255)
                    rs = f"{o1}.{o2}.{o3}.{rng.randint(1, 254)}"
                port = (
                    ""
                    if opt.endswith(":0") or opt.startswith("-f")
                    else f":{rng.choice([80, 8080, 443, 53])}"
                )
                method = rng.choice(METHODS)
                thr = f" -x {rng.randint(1, 1000)} -y {rng.randint(0, 1)}" if rng.random() < 0.3 else ""
                tun = ""
                if method == "-i" and rng.random() < 0.4:
                    tun = rng.choice(
                        [
                            " --tun-type gue --tun-port 6080",
                            " --tun-type gre",
                            " --tun-type gue --tun-port 5555 --tun-nocsum",
                            " --tun-type gre --tun-csum",
                        ]
                    )
                self.out(f"ipvsadm -a {opt} -r {rs}{port} {method} -w {rng.randint(0, 9)}{thr}{tun}")
        views = [
            "-L -n",
            "-L",
            "-L -n --sort",
            "-L -n --stats",
            "-L -n --rate",
            "-L -n --thresholds",
            "-L -n --persistent-conn",
            "-L -n --tun-info",
            "-S",
            "-S -n",
            "-L -n --nosort",
            "-L --nosort",
            "-S -n --nosort",
            "-L -n --exact --stats",
        ]
        for v in views:
            self.out(f"sh ipvsadm {v}")
        self.out("sh cat /proc/net/ip_vs")

    def build(self) -> str:
        getattr(self, self.kind)()
        return "\n".join(self.lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--kind", choices=["mixed", "quick", "batch", "trash", "trashb", "wide"], default="mixed")
    ns = ap.parse_args()
    ns.outdir.mkdir(parents=True, exist_ok=True)
    for k in range(ns.count):
        seed = ns.seed + k
        (ns.outdir / f"rnd-{ns.kind}-{seed}.scn").write_text(Gen(seed, ns.kind).build())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
