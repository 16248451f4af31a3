#!/usr/bin/env python3
"""Write the example scenarios into scenarios/ (deterministic; re-run to regenerate).

Address plan used by every example (all inside the VM, which has no NIC):
  VIPs            10.0.0.0/24   (made local automatically by `ipvsadm -A`)
  real servers    10.1.0.0/24   (local + TCP listeners for TCP scenarios;
                                 for UDP they stay non-local: DNATed packets vanish in dummy0)
  clients         10.2.0.0/16   (local, AnyIP)
  fwmark targets  10.3.0.0/16   (local; flows carry SO_MARK so fwmark services match)
"""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "scenarios")
os.makedirs(OUT, exist_ok=True)

VIP_T = "10.0.0.1:80"
VIP_U = "10.0.0.2:53"


class S:
    def __init__(self, name, desc):
        self.name, self.lines, self.nflows = name, [f"# {name}: {desc}"], 0
        self.held = []          # open TCP connections (src:sport), oldest first
        self.cidx = 0           # next client number

    def add(self, line):
        self.lines.append(line)

    def client(self, ip_mod=None):
        """next distinct client tuple: 10.2.X.Y:(20000+n)"""
        n = self.cidx if ip_mod is None else self.cidx % ip_mod
        self.cidx += 1
        return f"10.2.{1 + n // 250}.{1 + n % 250}:{20000 + self.cidx}"

    def flow(self, proto, dst, src=None, mark=None, hold=True):
        src = src or self.client()
        extra = f" mark={mark}" if mark else ""
        if proto == "tcp" and not hold:
            extra += " hold=0"
        self.add(f"{proto} {src} {dst}{extra}")
        if proto == "tcp" and hold:
            self.held.append(src)
        self.nflows += 1
        return src

    def flows(self, proto, n, dst, **kw):
        for _ in range(n):
            self.flow(proto, dst, **kw)

    def close(self, srcs):
        if srcs:
            self.add("close " + " ".join(srcs))
            for s in srcs:
                self.held.remove(s)

    def write(self):
        assert 50 <= self.nflows <= 200, (self.name, self.nflows)
        with open(os.path.join(OUT, self.name + ".scn"), "w") as f:
            f.write("\n".join(self.lines) + "\n")
        print(f"{self.name}: {self.nflows} flows")


def service(s, proto, vip, sched, flags="", rs=(), mode="-m", tcp_listen=False, extra=""):
    p = "-t" if proto == "tcp" else ("-u" if proto == "udp" else "-f")
    s.add("local 10.2.0.0/16" + (" 10.1.0.0/24" if tcp_listen else ""))
    if tcp_listen:
        s.add("listen " + " ".join(r for r, _ in rs))
    b = f" -b {flags}" if flags else ""
    s.add(f"ipvsadm -A {p} {vip} -s {sched}{b}{extra}")
    for r, w in rs:
        s.add(f"ipvsadm -a {p} {vip} -r {r} {mode} -w {w}")
    s.add("snapshot")


RS4 = [("10.1.0.1:80", 1), ("10.1.0.2:80", 2), ("10.1.0.3:80", 3), ("10.1.0.4:80", 5)]
RS4U = [(r.replace(":80", ":53"), w) for r, w in RS4]


# ---- rr / wrr: weights, edit, quiesce (weight 0), delete, add ------------------
def rr_like(sched, proto):
    s = S(f"{sched}-{proto}", f"{sched} over {proto}, 4 servers w=1,2,3,5; then -e weight, weight 0, -d, -a")
    vip, rs = (VIP_T, RS4) if proto == "tcp" else (VIP_U, RS4U)
    p = "-t" if proto == "tcp" else "-u"
    port = vip.split(":")[1]
    service(s, proto, vip, sched, rs=rs, tcp_listen=proto == "tcp")
    s.flows(proto, 40, vip)
    s.add(f"ipvsadm -e {p} {vip} -r 10.1.0.2:{port} -m -w 4")
    s.flows(proto, 30, vip)
    s.add(f"ipvsadm -e {p} {vip} -r 10.1.0.4:{port} -m -w 0")
    s.flows(proto, 30, vip)
    s.add(f"ipvsadm -d {p} {vip} -r 10.1.0.3:{port}")
    s.flows(proto, 20, vip)
    if proto == "tcp":
        s.add("listen 10.1.0.5:80")
    s.add(f"ipvsadm -a {p} {vip} -r 10.1.0.5:{port} -m -w 2")
    s.flows(proto, 30, vip)
    s.add("snapshot")
    s.write()


# ---- connection-count schedulers over TCP with held / closed connections -------
def conn_sched_tcp(sched, weights=(1, 2, 3, 5), close_every=3, extra_rs_flags=""):
    rs = [(f"10.1.0.{i + 1}:80", w) for i, w in enumerate(weights)]
    s = S(f"{sched}-tcp", f"{sched} over TCP with ESTABLISHED connections held open, "
          f"every {close_every}rd round closes the oldest 2 (-> FIN_WAIT/inactive), then -e weight, weight 0")
    service(s, "tcp", VIP_T, sched, rs=rs, tcp_listen=True)
    rnd = random.Random(sched)
    for k in range(1, 61):
        s.flow("tcp", VIP_T)
        if k % close_every == 0:
            s.close(s.held[:2])
        if k == 30:
            s.add("snapshot")
    s.add("ipvsadm -e -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 6")
    for k in range(20):
        s.flow("tcp", VIP_T)
        if k % 4 == 3:
            s.close(rnd.sample(s.held, 2))
    s.add("ipvsadm -e -t 10.0.0.1:80 -r 10.1.0.4:80 -m -w 0")
    s.flows("tcp", 20, VIP_T)
    s.add("snapshot")
    s.write()


def conn_sched_udp(sched):
    s = S(f"{sched}-udp", f"{sched} over UDP (UDP entries count as InActConn), 4 servers w=1,2,3,5, then weight 0 + -d")
    service(s, "udp", VIP_U, sched, rs=RS4U)
    s.flows("udp", 60, VIP_U)
    s.add("ipvsadm -e -u 10.0.0.2:53 -r 10.1.0.4:53 -m -w 0")
    s.flows("udp", 20, VIP_U)
    s.add("ipvsadm -d -u 10.0.0.2:53 -r 10.1.0.1:53")
    s.flows("udp", 20, VIP_U)
    s.add("snapshot")
    s.write()


def fo_tcp():
    s = S("fo-tcp", "fo (weighted failover): highest weight wins; -e weights, weight 0, -d, upper threshold -x")
    rs = [("10.1.0.1:80", 3), ("10.1.0.2:80", 5), ("10.1.0.3:80", 4), ("10.1.0.4:80", 5)]
    service(s, "tcp", VIP_T, "fo", rs=rs, tcp_listen=True)
    s.flows("tcp", 15, VIP_T)
    s.add("ipvsadm -e -t 10.0.0.1:80 -r 10.1.0.4:80 -m -w 0")
    s.flows("tcp", 15, VIP_T)
    s.add("ipvsadm -e -t 10.0.0.1:80 -r 10.1.0.2:80 -m -w 2")
    s.flows("tcp", 15, VIP_T)
    s.add("ipvsadm -e -t 10.0.0.1:80 -r 10.1.0.3:80 -m -w 4 -x 20")
    s.flows("tcp", 15, VIP_T)
    s.add("ipvsadm -d -t 10.0.0.1:80 -r 10.1.0.3:80")
    s.flows("tcp", 10, VIP_T)
    s.add("snapshot")
    s.write()


def ovf_tcp():
    s = S("ovf-tcp", "ovf (overflow): highest weight whose ActiveConn <= weight; held TCP connections fill servers, closes free them")
    rs = [("10.1.0.1:80", 4), ("10.1.0.2:80", 10), ("10.1.0.3:80", 6), ("10.1.0.4:80", 2)]
    service(s, "tcp", VIP_T, "ovf", rs=rs, tcp_listen=True)
    rnd = random.Random("ovf")
    for k in range(1, 31):
        s.flow("tcp", VIP_T)
    s.add("snapshot")
    s.close(s.held[:6])
    s.flows("tcp", 10, VIP_T)
    s.close(rnd.sample(s.held, 8))
    s.add("ipvsadm -e -t 10.0.0.1:80 -r 10.1.0.2:80 -m -w 0")
    s.flows("tcp", 12, VIP_T)
    s.close(s.held[:10])
    s.flows("tcp", 10, VIP_T)
    s.add("snapshot")
    s.write()


# ---- locality schedulers: fwmark service, many destination addresses -----------
def locality_tcp(sched):
    s = S(f"{sched}-fwmark-tcp", f"{sched} on a fwmark service (mark 1), TCP to 12 destinations 10.3.0.1-12, "
          "held connections so that overload (ActiveConn > weight) triggers, then weight 0 and -d")
    rs = [("10.1.0.1:80", 1), ("10.1.0.2:80", 4), ("10.1.0.3:80", 8), ("10.1.0.4:80", 16)]
    s.add("local 10.2.0.0/16 10.1.0.0/24 10.3.0.0/16")
    s.add("listen " + " ".join(r for r, _ in rs))
    s.add(f"ipvsadm -A -f 1 -s {sched}")
    for r, w in rs:
        s.add(f"ipvsadm -a -f 1 -r {r} -m -w {w}")
    rnd = random.Random(sched)
    for k in range(90):
        d = f"10.3.0.{1 + (k * 7) % 12}:80"
        s.flow("tcp", d, mark=1)
        if k % 10 == 9:
            s.close(rnd.sample(s.held, 3))
        if k == 60:
            s.add("ipvsadm -e -f 1 -r 10.1.0.3:80 -m -w 0")
        if k == 75:
            s.add("ipvsadm -d -f 1 -r 10.1.0.2:80")
    s.add("snapshot")
    s.write()


def dh_fwmark_udp():
    s = S("dh-fwmark-udp", "dh on a fwmark service, UDP to 60 destinations 10.3.0.x (some repeated), then weight 0, -d, -a")
    rs = [("10.1.0.1:53", 1), ("10.1.0.2:53", 2), ("10.1.0.3:53", 3), ("10.1.0.4:53", 5)]
    s.add("local 10.2.0.0/16 10.3.0.0/16")
    s.add("ipvsadm -A -f 2 -s dh")
    for r, w in rs:
        s.add(f"ipvsadm -a -f 2 -r {r} -m -w {w}")
    dsts = [f"10.3.{(k * 37) // 250}.{1 + (k * 37) % 250}:53" for k in range(60)]
    for d in dsts:
        s.flow("udp", d, mark=2)
    s.add("ipvsadm -e -f 2 -r 10.1.0.2:53 -m -w 0")
    for d in dsts[:30]:
        s.flow("udp", d, mark=2)
    s.add("ipvsadm -d -f 2 -r 10.1.0.3:53")
    s.add("ipvsadm -a -f 2 -r 10.1.0.5:53 -m -w 2")
    for d in dsts[:40]:
        s.flow("udp", d, mark=2)
    s.add("snapshot")
    s.write()


def dh_udp_single_vip():
    s = S("dh-udp", "dh on a normal UDP VIP: every flow has the same destination address")
    service(s, "udp", VIP_U, "dh", rs=RS4U)
    s.flows("udp", 30, VIP_U)
    s.add("ipvsadm -d -u 10.0.0.2:53 -r 10.1.0.3:53")
    s.flows("udp", 30, VIP_U)
    s.write()


# ---- source hashing / maglev -------------------------------------------------
def hash_sched(sched, flags, name, desc, port_mode=False):
    s = S(name, desc)
    rs = [("10.1.0.1:53", 1), ("10.1.0.2:53", 2), ("10.1.0.3:53", 3), ("10.1.0.4:53", 5), ("10.1.0.5:53", 4)]
    service(s, "udp", VIP_U, sched, flags=flags, rs=rs)

    def src(k):
        if port_mode:   # 6 client addresses, many ports
            return f"10.2.0.{1 + k % 6}:{30000 + k * 13}"
        return f"10.2.{(k * 53) // 250}.{1 + (k * 53) % 250}:{30000 + k}"
    k = 0
    for _ in range(60):
        s.flow("udp", VIP_U, src=src(k)); k += 1
    s.add("ipvsadm -e -u 10.0.0.2:53 -r 10.1.0.4:53 -m -w 0")
    for _ in range(30):
        s.flow("udp", VIP_U, src=src(k)); k += 1
    s.add("ipvsadm -d -u 10.0.0.2:53 -r 10.1.0.2:53")
    for _ in range(30):
        s.flow("udp", VIP_U, src=src(k)); k += 1
    s.add("ipvsadm -e -u 10.0.0.2:53 -r 10.1.0.4:53 -m -w 5")
    s.add("ipvsadm -e -u 10.0.0.2:53 -r 10.1.0.1:53 -m -w 7")
    for _ in range(30):
        s.flow("udp", VIP_U, src=src(k)); k += 1
    s.add("snapshot")
    s.write()


# ---- persistence -----------------------------------------------------------
def persistence():
    s = S("wrr-persistent-udp", "wrr with -p 120: 12 client addresses, each sends several flows (new ports); "
          "templates pin clients; then weight 0 on a pinned server (templates still used) and -d")
    service(s, "udp", VIP_U, "wrr", rs=RS4U, extra=" -p 120")
    for k in range(60):
        s.flow("udp", VIP_U, src=f"10.2.0.{1 + (k * 5) % 12}:{40000 + k}")
    s.add("conns")
    s.add("ipvsadm -e -u 10.0.0.2:53 -r 10.1.0.4:53 -m -w 0")
    for k in range(60, 90):
        s.flow("udp", VIP_U, src=f"10.2.0.{1 + (k * 5) % 16}:{40000 + k}")
    s.add("ipvsadm -d -u 10.0.0.2:53 -r 10.1.0.3:53")
    for k in range(90, 120):
        s.flow("udp", VIP_U, src=f"10.2.0.{1 + (k * 5) % 16}:{40000 + k}")
    s.add("conns")
    s.write()


def persistence_netmask():
    s = S("rr-persistent-netmask-tcp", "rr with -p 300 -M 255.255.255.0 over TCP: clients in 8 /24s, several addresses each")
    rs = RS4
    service(s, "tcp", VIP_T, "rr", rs=rs, tcp_listen=True, extra=" -p 300 -M 255.255.255.0")
    for k in range(80):
        net, host = (k * 3) % 8, 1 + (k * 7) % 40
        s.flow("tcp", VIP_T, src=f"10.2.{net}.{host}:{41000 + k}")
    s.add("conns")
    s.write()


def sched_change():
    s = S("sched-change-udp", "-E switches the scheduler of a live service: rr -> wrr -> sh -> wlc")
    service(s, "udp", VIP_U, "rr", rs=RS4U)
    s.flows("udp", 20, VIP_U)
    s.add("ipvsadm -E -u 10.0.0.2:53 -s wrr")
    s.flows("udp", 20, VIP_U)
    s.add("ipvsadm -E -u 10.0.0.2:53 -s sh")
    s.flows("udp", 20, VIP_U)
    s.add("ipvsadm -E -u 10.0.0.2:53 -s wlc")
    s.flows("udp", 20, VIP_U)
    s.add("snapshot")
    s.write()


def thresholds():
    s = S("wlc-thresholds-tcp", "wlc over TCP with upper/lower connection thresholds (-x/-y) on two servers")
    rs = RS4
    service(s, "tcp", VIP_T, "wlc", rs=rs, tcp_listen=True)
    s.add("ipvsadm -e -t 10.0.0.1:80 -r 10.1.0.4:80 -m -w 5 -x 6 -y 3")
    s.add("ipvsadm -e -t 10.0.0.1:80 -r 10.1.0.3:80 -m -w 3 -x 4")
    for k in range(40):
        s.flow("tcp", VIP_T)
        if k == 20:
            s.add("snapshot")
    s.close(s.held[:20])
    s.add("snapshot")
    s.flows("tcp", 20, VIP_T)
    s.add("snapshot")
    s.write()


def twos():
    # twos draws two random weighted candidates (prandom_u32_max): a trace is ONE sample;
    # compare distributions / invariants (never picks weight 0 or overloaded servers), not sequences
    conn_sched_udp("twos")
    conn_sched_tcp("twos")


if __name__ == "__main__":
    for sch in ("rr", "wrr"):
        rr_like(sch, "udp")
    rr_like("wrr", "tcp")
    for sch in ("lc", "wlc", "sed", "nq"):
        conn_sched_tcp(sch)
        conn_sched_udp(sch)
    fo_tcp()
    ovf_tcp()
    for sch in ("lblc", "lblcr"):
        locality_tcp(sch)
    dh_fwmark_udp()
    dh_udp_single_vip()
    hash_sched("sh", "", "sh-udp", "sh: 120 distinct client addresses, then weight 0, -d, weights changed")
    hash_sched("sh", "sh-port", "sh-port-udp", "sh -b sh-port: 6 client addresses x many ports", port_mode=True)
    hash_sched("sh", "sh-fallback", "sh-fallback-udp", "sh -b sh-fallback: weight-0 server's clients fall back")
    hash_sched("mh", "", "mh-udp", "mh (maglev): 120 distinct client addresses, then weight 0, -d, weights changed")
    hash_sched("mh", "mh-port", "mh-port-udp", "mh -b mh-port: 6 client addresses x many ports", port_mode=True)
    hash_sched("mh", "mh-fallback", "mh-fallback-udp", "mh -b mh-fallback")
    persistence()
    persistence_netmask()
    sched_change()
    thresholds()
    twos()
