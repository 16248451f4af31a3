"""Frame capture for the DR/TUN planes: AF_PACKET, a kernel BPF filter for the
served virtual services, and a TPACKET_V3 receive ring.

Only frames for a served (address, protocol, port) reach Python: the classic
BPF program below is compiled here from the service set (the same job
``tcpdump -ddd`` does for an expression) and attached with SO_ATTACH_FILTER;
it is recompiled and swapped atomically when services change.  Frames land
in a memory-mapped TPACKET_V3 ring of blocks, so one wake-up (one poll) hands
over a whole block of packets: no system call per packet on receive.

The filter accepts, for each virtual address:

* IPv4 and IPv6 (no extension headers) TCP/UDP/SCTP segments whose
  destination port is served (any port for a port-0 service);
* IPv4 later fragments (no ports) and IPv6 packets with extension headers of
  a served protocol's address: Python parses those (slow path);
* ICMP errors to a served address (IPv4 destination unreachable, source
  quench, time exceeded; every ICMPv6 error type): those about a DR/TUN
  connection are forwarded to its real server (``ip_vs_in_icmp``, see
  :mod:`forwarding.icmp_related`);
* only frames addressed to this host (``PACKET_HOST``), never our own
  transmissions (``PACKET_IGNORE_OUTGOING``).

Firewall-mark services cannot be selected here: the mark is set by netfilter
after AF_PACKET has seen the frame.  See :mod:`forwarding.netfilter`.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import cbpf
from .cbpf import Insn

# -- socket options (linux/if_packet.h, asm-generic/socket.h) ---------------------
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SO_RCVBUF = 8
ETH_P_ALL = 0x0003

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_COPY = 1 << 1
TP_STATUS_LOSING = 1 << 2
TP_STATUS_CSUMNOTREADY = 1 << 3

PACKET_HOST = 0

# -- classic BPF opcodes (linux/filter.h) -----------------------------------------
BPF_LD_W_ABS = 0x20
BPF_LD_H_ABS = 0x28
BPF_LD_B_ABS = 0x30
BPF_LD_H_IND = 0x48
BPF_LD_B_IND = 0x50
BPF_LDX_B_MSH = 0xB1
BPF_JEQ_K = 0x15
BPF_JSET_K = 0x45
BPF_JA = 0x05
BPF_RET_K = 0x06
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8
#: lo is interface 1 in every network namespace
LOOPBACK_IFINDEX = 1
BPF_MAXINSNS = 4096
SNAP_ALL = 0x40000

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
#: the ICMPv4 types ip_vs_in_icmp relates to connections
ICMP_ERROR_TYPES_V4 = (3, 4, 11)
#: ICMPv6 informational types have this bit; every other type is an error
ICMPV6_INFOMSG_MASK = 0x80
#: IPv6 next headers sent to the slow path (hop-by-hop, routing, fragment, dest opts)
V6_EXT_HEADERS = (0, 43, 44, 60)


@dataclass(frozen=True)
class Target:
    """One captured (family, address, protocol, port); port 0 means any port."""

    af: int
    addr: int
    protocol: int
    port: int


class FilterTooLarge(ValueError):
    pass


class _Asm:
    """A tiny assembler: instructions with symbolic jump labels."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def new(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def op(self, code: int, k: int = 0, jt: object = 0, jf: object = 0) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def assemble(self) -> list[Insn]:
        out: list[Insn] = []
        for i, (code, jt, jf, k) in enumerate(self.code):

            def rel(target: object, i: int = i) -> int:
                if isinstance(target, int):
                    return target
                off = self.labels[str(target)] - (i + 1)
                if off < 0:
                    raise FilterTooLarge("backward jump")
                return off

            if code == BPF_JA:
                out.append((code, 0, 0, rel(jt)))
                continue
            t, f = rel(jt), rel(jf)
            if t > 255 or f > 255:
                raise FilterTooLarge("conditional jump too far")
            out.append((code, t, f, k))
        if len(out) > BPF_MAXINSNS:
            raise FilterTooLarge("too many instructions")
        return out


def _emit_protocol_ports(
    a: _Asm, protos: dict[int, set[int]], prefix: str, load_port: tuple[tuple[int, int], ...]
) -> None:
    """With the protocol number in A: jump per served protocol to a check of
    the destination port (loaded by ``load_port``'s instructions) against its
    ports; port 0 (a port-0 service) accepts any; anything else is dropped."""
    labels = []
    for proto in sorted(protos):
        label = a.new(prefix)
        labels.append((label, protos[proto]))
        a.op(BPF_JEQ_K, proto, label, 0)
    a.op(BPF_RET_K, 0)
    for label, ports in labels:
        a.label(label)
        if 0 in ports:
            a.op(BPF_RET_K, SNAP_ALL)
            continue
        for code, k in load_port:
            a.op(code, k)
        for port in sorted(ports):
            a.op(BPF_JEQ_K, port, "accept", 0)
        a.op(BPF_RET_K, 0)


def _emit_icmp_errors(a: _Asm, proto: int, load_type: tuple[tuple[int, int], ...]) -> None:
    """With the protocol number in A: an ICMP (``proto`` 1) or ICMPv6 (58)
    packet whose type (loaded by ``load_type``) is an error IPVS relates to
    connections is accepted, any other ICMP packet dropped; other protocols
    fall through with A unchanged."""
    skip = a.new("ni_")
    ok = a.new("ie_")
    a.op(BPF_JEQ_K, proto, 0, skip)
    for code, k in load_type:
        a.op(code, k)
    if proto == IPPROTO_ICMPV6:
        no = a.new("ii_")
        a.op(BPF_JSET_K, ICMPV6_INFOMSG_MASK, no, ok)
        a.label(no)
        a.op(BPF_RET_K, 0)
    else:
        for t in ICMP_ERROR_TYPES_V4:
            a.op(BPF_JEQ_K, t, ok, 0)
        a.op(BPF_RET_K, 0)
    a.label(ok)
    a.op(BPF_RET_K, SNAP_ALL)
    a.label(skip)


def compile_filter(targets: Iterable[Target]) -> list[Insn]:
    """Compile the classic BPF program that accepts the frames of ``targets``.

    Layout: packet type must be HOST; dispatch on the ethertype; then on the
    destination address (IPv4: one word; IPv6: four words); then, per
    address, fragments and extension headers go up whole, ICMP errors
    (``_emit_icmp_errors``) too, and TCP/UDP/SCTP segments are matched on
    their destination port.  An empty set compiles to "drop everything".
    """
    by_addr: dict[tuple[int, int], dict[int, set[int]]] = {}
    for t in targets:
        by_addr.setdefault((t.af, t.addr), {}).setdefault(t.protocol, set()).add(t.port)
    a = _Asm()
    if not by_addr:
        a.op(BPF_RET_K, 0)
        return a.assemble()
    a.op(BPF_LD_W_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
    a.op(BPF_JEQ_K, PACKET_HOST, 0, "drop")
    a.op(BPF_LD_W_ABS, SKF_AD_OFF + SKF_AD_IFINDEX)
    a.op(BPF_JEQ_K, LOOPBACK_IFINDEX, "drop", 0)
    a.op(BPF_LD_H_ABS, 12)
    a.op(BPF_JEQ_K, 0x0800, "v4", 0)
    a.op(BPF_JEQ_K, 0x86DD, "v6", "drop")
    v4 = [(addr, protos) for (af, addr), protos in by_addr.items() if af == socket.AF_INET]
    v6 = [(addr, protos) for (af, addr), protos in by_addr.items() if af == socket.AF_INET6]

    # IPv4: daddr at 30, proto at 23, flags/offset at 20, ports at 14+ihl+2
    a.label("v4")
    bodies4: list[tuple[str, dict[int, set[int]]]] = []
    if v4:
        a.op(BPF_LD_W_ABS, 30)
        for addr, protos in v4:
            lab = a.new("a4_")
            bodies4.append((lab, protos))
            a.op(BPF_JEQ_K, addr, lab, 0)
    a.op(BPF_RET_K, 0)
    for lab, protos in bodies4:
        a.label(lab)
        later = a.new("f4_")
        a.op(BPF_LD_H_ABS, 20)
        a.op(BPF_JSET_K, 0x1FFF, later, 0)
        a.op(BPF_LD_B_ABS, 23)
        _emit_icmp_errors(a, IPPROTO_ICMP, ((BPF_LDX_B_MSH, 14), (BPF_LD_B_IND, 14)))
        _emit_protocol_ports(a, protos, "p4_", ((BPF_LDX_B_MSH, 14), (BPF_LD_H_IND, 16)))
        a.label(later)
        a.op(BPF_LD_B_ABS, 23)
        for proto in sorted(protos):
            a.op(BPF_JEQ_K, proto, "accept", 0)
        a.op(BPF_RET_K, 0)

    # IPv6: daddr words at 38/42/46/50, next header at 20, ports at 54+2
    a.label("v6")
    for addr, protos in v6:
        nxt = a.new("n6_")
        body = a.new("a6_")
        for i, off in enumerate((38, 42, 46, 50)):
            word = (addr >> (96 - 32 * i)) & 0xFFFFFFFF
            a.op(BPF_LD_W_ABS, off)
            a.op(BPF_JEQ_K, word, body if i == 3 else 0, nxt)
        a.label(body)
        a.op(BPF_LD_B_ABS, 20)
        for eh in V6_EXT_HEADERS:
            a.op(BPF_JEQ_K, eh, "accept", 0)
        _emit_icmp_errors(a, IPPROTO_ICMPV6, ((BPF_LD_B_ABS, 54),))
        _emit_protocol_ports(a, protos, "p6_", ((BPF_LD_H_ABS, 56),))
        a.label(nxt)
    a.op(BPF_RET_K, 0)
    a.label("accept")
    a.op(BPF_RET_K, SNAP_ALL)
    a.label("drop")
    a.op(BPF_RET_K, 0)
    return a.assemble()


def compile_addr_filter(targets: Iterable[Target]) -> list[Insn]:
    """The coarse fallback when the exact program is too large: every IPv4 /
    IPv6 frame for this host (Python then matches services itself)."""
    del targets
    a = _Asm()
    a.op(BPF_LD_W_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
    a.op(BPF_JEQ_K, PACKET_HOST, 0, "drop")
    a.op(BPF_LD_H_ABS, 12)
    a.op(BPF_JEQ_K, 0x0800, "accept", 0)
    a.op(BPF_JEQ_K, 0x86DD, "accept", "drop")
    a.label("accept")
    a.op(BPF_RET_K, SNAP_ALL)
    a.label("drop")
    a.op(BPF_RET_K, 0)
    return a.assemble()


def run_filter(prog: list[Insn], frame: bytes, pkttype: int = PACKET_HOST, ifindex: int = 2) -> int:
    """Interpret ``prog`` on ``frame`` in Python (for tests: the same verdict
    the kernel's interpreter gives).  Returns the accepted length (0: drop)."""
    acc = x = 0
    pc = 0
    n = len(frame)

    def load(off: int, size: int) -> int | None:
        if off == SKF_AD_OFF + SKF_AD_PKTTYPE:
            return pkttype
        if off == SKF_AD_OFF + SKF_AD_IFINDEX:
            return ifindex
        if off < 0 or off + size > n:
            return None
        return int.from_bytes(frame[off : off + size], "big")

    while pc < len(prog):
        code, jt, jf, k = prog[pc]
        pc += 1
        if code in (BPF_LD_W_ABS, BPF_LD_H_ABS, BPF_LD_B_ABS):
            size = {BPF_LD_W_ABS: 4, BPF_LD_H_ABS: 2, BPF_LD_B_ABS: 1}[code]
            off = k - (1 << 32) if k & 0x80000000 else k
            v = load(off, size)
            if v is None:
                return 0
            acc = v
        elif code in (BPF_LD_H_IND, BPF_LD_B_IND):
            v = load(x + k, 2 if code == BPF_LD_H_IND else 1)
            if v is None:
                return 0
            acc = v
        elif code == BPF_LDX_B_MSH:
            v = load(k, 1)
            if v is None:
                return 0
            x = (v & 0x0F) << 2
        elif code == BPF_JEQ_K:
            pc += jt if acc == k else jf
        elif code == BPF_JSET_K:
            pc += jt if acc & k else jf
        elif code == BPF_JA:
            pc += k
        elif code == BPF_RET_K:
            return k
        else:  # pragma: no cover
            raise ValueError(f"opcode {code:#x}")
    return 0


def attach_filter(sock: socket.socket, prog: list[Insn]) -> None:
    """SO_ATTACH_FILTER: the new program replaces the old one atomically."""
    cbpf.attach(sock, SO_ATTACH_FILTER, prog)


DROP_ALL: list[Insn] = [(BPF_RET_K, 0, 0, 0)]

# tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
# block_status, num_pkts, offset_to_first_pkt, blk_len, seq_num (u64) ...
_BLOCK = struct.Struct("<III")
# tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac, net
_PKT = struct.Struct("<IIIIIIHH")
_SLL_IFINDEX = struct.Struct("<i")
_SLL_OFF = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
#: the fields of tpacket3_hdr a frame loop needs: next_offset, snaplen, len, status, mac
PKT3 = struct.Struct("<I8xIIIH")
#: where sockaddr_ll's ifindex sits from the start of a tpacket3_hdr
SLL_IFINDEX_OFF = _SLL_OFF + 4
_U32 = struct.Struct("<I")

#: handler(buffer, start, end, ifindex, status, wire_len)
FrameHandler = Callable[[memoryview, int, int, int, int, int], None]


class RxRing:
    """An AF_PACKET socket with a TPACKET_V3 receive ring.

    ``drain(handler)`` hands every frame of every block the kernel has
    released to ``handler`` and gives the blocks back.  A block is released
    when full or after ``timeout_ms`` (the latency bound at low rates).
    """

    def __init__(
        self,
        ifname: str | None = None,
        block_size: int = 1 << 20,
        block_nr: int = 16,
        timeout_ms: int = 1,
    ) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            attach_filter(self.sock, DROP_ALL)
            self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_size = 1 << 11
            req = struct.pack(
                "IIIIIII",
                block_size,
                block_nr,
                frame_size,
                (block_size // frame_size) * block_nr,
                timeout_ms,
                0,
                0,
            )
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.size = block_size * block_nr
            self.block_size = block_size
            self.block_nr = block_nr
            self.mm = mmap.mmap(
                self.sock.fileno(), self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            self.mv = memoryview(self.mm)
            if ifname:
                self.sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            self.sock.close()
            raise
        self.cur = 0
        self.packets = 0
        self.blocks = 0
        self.drops_seen = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_filter(self, prog: list[Insn]) -> None:
        attach_filter(self.sock, prog)

    def flush(self) -> None:
        """Give every released block back unread (after a filter swap at start)."""
        self.drain(lambda *a: None)

    def next_block(self) -> tuple[int, int] | None:
        """The next block the kernel has released: (offset of its first
        frame, number of frames), or None.  Hand it back with :meth:`release`
        once its frames are processed (the kernel fills blocks in ring order,
        so the caller must release before asking for the next)."""
        base = self.cur * self.block_size
        status, num, first = _BLOCK.unpack_from(self.mm, base + 8)
        if not status & TP_STATUS_USER:
            return None
        if status & TP_STATUS_LOSING:
            self.drops_seen += 1
        self.packets += num
        return base + first, num

    def release(self) -> None:
        """Give the current block back to the kernel and move to the next."""
        _U32.pack_into(self.mm, self.cur * self.block_size + 8, TP_STATUS_KERNEL)
        self.cur = (self.cur + 1) % self.block_nr
        self.blocks += 1

    def drain(self, handler: FrameHandler, max_blocks: int = 0) -> int:
        """Process the released blocks in ring order; returns frames handled."""
        mm = self.mm
        mv = self.mv
        bs = self.block_size
        nr = self.block_nr
        count = 0
        blocks = 0
        unpack_block = _BLOCK.unpack_from
        unpack_pkt = _PKT.unpack_from
        unpack_ifx = _SLL_IFINDEX.unpack_from
        while True:
            base = self.cur * bs
            status, num, first = unpack_block(mm, base + 8)
            if not status & TP_STATUS_USER:
                break
            if status & TP_STATUS_LOSING:
                self.drops_seen += 1
            off = base + first
            try:
                for _ in range(num):
                    nxt, _s, _ns, snap, wire, st, mac, _net = unpack_pkt(mm, off)
                    ifindex = unpack_ifx(mm, off + _SLL_OFF + 4)[0]
                    start = off + mac
                    handler(mv, start, start + snap, ifindex, st, wire)
                    off += nxt
            finally:
                # a handler that raises must not leave the block with us
                # (the ring would stall on it for good)
                _U32.pack_into(mm, base + 8, TP_STATUS_KERNEL)
                self.cur = (self.cur + 1) % nr
            count += num
            blocks += 1
            if max_blocks and blocks >= max_blocks:
                break
        self.packets += count
        self.blocks += blocks
        return count

    def stats(self) -> tuple[int, int]:
        """PACKET_STATISTICS (tpacket_stats_v3): (packets, drops) since the last call."""
        raw = self.sock.getsockopt(SOL_PACKET, 6, 12)
        pk, dr, _fr = struct.unpack("III", raw)
        return pk, dr

    def close(self) -> None:
        try:
            self.mv.release()
            self.mm.close()
        except (BufferError, ValueError):
            pass
        self.sock.close()


def layout_frames(frames: Iterable[tuple[bytes, int, int]]) -> bytes:
    """The frames of one block as the kernel lays them out in a TPACKET_V3
    ring (tpacket3_hdr, sockaddr_ll, the frame at ``tp_mac``, 16-byte
    alignment), from ``(frame, status, ifindex)``; offset 0 is the first
    frame.  For tests and benchmarks of code that walks ring blocks."""
    out = bytearray()
    netoff = (_SLL_OFF + 20 + 16 + 15) & ~15  # TPACKET_ALIGN(hdrlen + max(maclen, 16))
    mac = netoff - 14
    for frame, status, ifindex in frames:
        n = len(frame)
        nxt = (mac + n + 15) & ~15
        rec = bytearray(nxt)
        _PKT.pack_into(rec, 0, nxt, 0, 0, n, n, status | TP_STATUS_USER, mac, netoff)
        struct.pack_into("<HHi", rec, _SLL_OFF, socket.AF_PACKET, 0x0008, ifindex)
        rec[mac : mac + n] = frame
        out += rec
    return bytes(out)


class TxSockets:
    """One AF_PACKET socket per egress interface, bound to it (protocol 0, so
    they receive nothing); ``send(ifindex, frame)`` is one ``send`` call."""

    def __init__(self) -> None:
        self._socks: dict[int, socket.socket] = {}
        self.sent = 0
        self.errors = 0

    def get(self, ifindex: int) -> socket.socket:
        s = self._socks.get(ifindex)
        if s is None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.bind((socket.if_indextoname(ifindex), 0))
            s.setblocking(False)
            self._socks[ifindex] = s
        return s

    def sender(self, ifindex: int) -> Callable[[bytes], object]:
        """The bound ``send`` of ``ifindex``'s socket, for a loop that sends
        many frames (it counts them itself with :meth:`count`)."""
        return (self._socks.get(ifindex) or self.get(ifindex)).send

    def count(self, sent: int, errors: int = 0) -> None:
        self.sent += sent
        self.errors += errors

    def send(self, ifindex: int, frame: bytes | bytearray) -> bool:
        try:
            s = self._socks.get(ifindex) or self.get(ifindex)
            s.send(frame)
        except OSError:
            self.errors += 1
            return False
        self.sent += 1
        return True

    def forget(self, ifindex: int) -> None:
        s = self._socks.pop(ifindex, None)
        if s is not None:
            s.close()

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


def netns_inode() -> str:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:  # pragma: no cover
        return "?"


__all__ = [
    "DROP_ALL",
    "PKT3",
    "SLL_IFINDEX_OFF",
    "FilterTooLarge",
    "RxRing",
    "Target",
    "TxSockets",
    "attach_filter",
    "compile_addr_filter",
    "compile_filter",
    "layout_frames",
    "run_filter",
]
