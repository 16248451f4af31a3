"""Connection synchronisation (net/netfilter/ipvs/ip_vs_sync.c): the wire
codec of the sync daemon's datagrams, the master's rules of what is sent
when, and its send buffers.  Pure: no socket, no clock; ``now`` is passed in
and datagrams are handed to the caller (lvsd/syncd.py sends and receives them).

Wire format (all fields big-endian):

* version 0 header (4 bytes): nr_conns u8, syncid u8, size u16 (the whole
  datagram); records of 24 bytes (reserved, protocol, cport, vport, dport,
  caddr, vaddr, daddr, flags u16, state u16), 48 with sequence data
  (flags & 0x0600).  IPv4 only; no timeout, no fwmark.
* version 1 header (8 bytes): reserved u8 = 0, syncid u8, size u16,
  nr_conns u8, version s8 = 1, spare u16 = 0.  A record: type u8 (bit 0 =
  IPv6), protocol u8, ver_size u16 (version in the top 4 bits, always 0;
  the record's length with options, without padding, in the low 12), flags
  u32, state u16, cport, vport, dport u16, fwmark u32, timeout u32 (s),
  caddr, vaddr, daddr (4 or 16 bytes each); options {type, len != 0, data}
  (1 sequence data of 24 bytes, 2 PE data <= 255, 3 PE name <= 16; type |
  0x40 marks an option a receiver may skip).  Each record but the last is
  followed by zero padding to 4 bytes.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .constants import (
    AF_INET,
    AF_INET6,
    CONN_F_FWD_MASK,
    CONN_F_HASHED,
    CONN_F_INACTIVE,
    CONN_F_NO_CPORT,
    CONN_F_NOOUTPUT,
    CONN_F_ONE_PACKET,
    CONN_F_SEQ_MASK,
    CONN_F_SYNC,
    CONN_F_TEMPLATE,
    IP_VS_PENAME_MAXLEN,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

if TYPE_CHECKING:
    from .conn import Conn

SYNC_GROUP = "224.0.0.81"
SYNC_PORT = 8848
SYNC_TTL = 1
SYNC_PROTO_VER = 1
#: IPVS_SYNC_FLUSH_TIME: no entry waits longer than 2 s in a buffer
SYNC_FLUSH_TIME = 2.0
#: the kernel's tick; the refresh arithmetic runs in jiffies as there
HZ = 250
#: an IPv4 header and a UDP header: the payload is at most MTU - 28
IPV4_UDP_HEADERS = 28
IPV6_UDP_HEADERS = 48
#: the master's sync_maxlen when none is given: it assumes an MTU of 1500
DEFAULT_MAXLEN = 1500 - IPV4_UDP_HEADERS

HDR_V0 = struct.Struct("!BBH")
HDR_V1 = struct.Struct("!BBHBbH")
REC_V0 = struct.Struct("!BBHHHIIIHH")
#: the fixed part of a v1 record up to (not including) the addresses
REC_V1 = struct.Struct("!BBHIHHHHII")
SEQ = struct.Struct("!IIIIII")
V0_SIMPLE = REC_V0.size  # 24
V0_FULL = V0_SIMPLE + SEQ.size  # 48
V1_V4 = REC_V1.size + 12  # 36
V1_V6 = REC_V1.size + 48  # 72

STYPE_F_INET6 = 1
SVER_SHIFT = 12
SVER_MASK = 0x0FFF

OPT_SEQ_DATA = 1
OPT_PE_DATA = 2
OPT_PE_NAME = 3
OPT_F_PARAM = 0x40  # IPVS_OPT_F_PARAM: an option the receiver may ignore
PEDATA_MAXLEN = 255

#: IP_VS_CONN_F_BACKUP_MASK: the flag bits a v1 receiver keeps
BACKUP_MASK = (
    CONN_F_FWD_MASK | CONN_F_NOOUTPUT | CONN_F_INACTIVE | CONN_F_SEQ_MASK | CONN_F_NO_CPORT | CONN_F_TEMPLATE
)
#: IP_VS_CONN_F_BACKUP_UPD_MASK: the bits an update may change on an entry
BACKUP_UPD_MASK = CONN_F_INACTIVE | CONN_F_SEQ_MASK

#: protocols the receiver knows (ip_vs_proto_get), with their number of states
PROTO_STATES = {IPPROTO_TCP: 11, IPPROTO_UDP: 1, IPPROTO_SCTP: 14, 51: 1, 50: 1}
CTPL_S_LAST = 2

# TCP / SCTP states in which a connection is worth syncing (ip_vs_sync_conn_needed)
_TCP_SYNC_STATES = frozenset({1, 4, 5, 6, 7})  # ESTABLISHED FIN_WAIT TIME_WAIT CLOSE CLOSE_WAIT
_TCP_ESTABLISHED = 1
_SCTP_SYNC_STATES = frozenset({8, 9, 10, 11, 13})
_SCTP_ESTABLISHED = 8


@dataclass(frozen=True, slots=True)
class SyncEntry:
    """One connection (or template) as a sync record carries it.  Addresses
    are integers as in :mod:`lvs.addr`; ``timeout`` is in seconds (0 in v0:
    the receiver then uses its own protocol timeouts); ``seq`` holds
    in_seq and out_seq (init_seq, delta, previous_delta each) when the
    flags carry sequence data."""

    af: int
    protocol: int
    flags: int
    state: int
    caddr: int
    cport: int
    vaddr: int
    vport: int
    daddr: int
    dport: int
    fwmark: int = 0
    timeout: int = 0
    seq: tuple[int, int, int, int, int, int] | None = None
    pe_name: str = ""
    pe_data: bytes = b""

    @property
    def is_template(self) -> bool:
        return bool(self.flags & CONN_F_TEMPLATE)


def entry_from_conn(cp: Conn) -> SyncEntry:
    """What the master puts on the wire for ``cp``: its flags without HASHED,
    its timeout in whole seconds (``cp->timeout / HZ``)."""
    return SyncEntry(
        af=cp.af,
        protocol=cp.protocol,
        flags=cp.flags & ~CONN_F_HASHED & 0xFFFFFFFF,
        state=cp.state,
        caddr=cp.caddr,
        cport=cp.cport,
        vaddr=cp.vaddr,
        vport=cp.vport,
        daddr=cp.daddr,
        dport=cp.dport,
        fwmark=cp.fwmark,
        timeout=int(cp.timeout),
        seq=(0, 0, 0, 0, 0, 0) if cp.flags & CONN_F_SEQ_MASK else None,
        pe_name=cp.pe_name if cp.pe_data else "",
        pe_data=cp.pe_data,
    )


# ---------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------
def _addr(af: int, value: int) -> bytes:
    return value.to_bytes(16 if af == AF_INET6 else 4, "big")


def record_v1(e: SyncEntry) -> bytes:
    """One version-1 record, without padding (``ip_vs_sync_conn``)."""
    fixed = V1_V6 if e.af == AF_INET6 else V1_V4
    opts = bytearray()
    if e.flags & CONN_F_SEQ_MASK:
        opts += bytes((OPT_SEQ_DATA, SEQ.size)) + SEQ.pack(*(e.seq or (0,) * 6))
    if e.pe_data:
        name = e.pe_name.encode("latin-1")[:IP_VS_PENAME_MAXLEN]
        opts += bytes((OPT_PE_DATA, len(e.pe_data))) + e.pe_data
        if name:
            opts += bytes((OPT_PE_NAME, len(name))) + name
    size = fixed + len(opts)
    head = REC_V1.pack(
        STYPE_F_INET6 if e.af == AF_INET6 else 0,
        e.protocol,
        size & SVER_MASK,
        e.flags & 0xFFFFFFFF,
        e.state,
        e.cport,
        e.vport,
        e.dport,
        e.fwmark & 0xFFFFFFFF,
        e.timeout & 0xFFFFFFFF,
    )
    return head + _addr(e.af, e.caddr) + _addr(e.af, e.vaddr) + _addr(e.af, e.daddr) + bytes(opts)


def record_v0(e: SyncEntry) -> bytes:
    """One version-0 record (``ip_vs_sync_conn_v0``): IPv4 only, 16-bit flags."""
    body = REC_V0.pack(
        0, e.protocol, e.cport, e.vport, e.dport, e.caddr, e.vaddr, e.daddr,
        e.flags & ~CONN_F_HASHED & 0xFFFF, e.state,
    )  # fmt: skip
    if e.flags & CONN_F_SEQ_MASK:
        body += SEQ.pack(*(e.seq or (0,) * 6))
    return body


class SyncBuffer:
    """A message being filled (``struct ip_vs_sync_buff``): header, records,
    padding between v1 records, ``firstuse`` the time it was created."""

    __slots__ = ("data", "end", "firstuse", "nr_conns", "version")

    def __init__(self, version: int, syncid: int, maxlen: int, first_len: int, now: float) -> None:
        self.version = version
        hdr = HDR_V1.size if version else HDR_V0.size
        self.end = max(first_len + hdr, maxlen)
        self.data = bytearray(hdr)
        self.data[1] = syncid & 0xFF
        if version:
            self.data[5] = SYNC_PROTO_VER
        self.nr_conns = 0
        self.firstuse = now

    def fits(self, record_len: int) -> bool:
        pad = (-len(self.data)) & 3 if self.version else 0
        return len(self.data) + pad + record_len <= self.end and self.nr_conns < 255

    def add(self, record: bytes) -> None:
        if self.version:
            self.data += bytes((-len(self.data)) & 3)
        self.data += record
        self.nr_conns += 1

    def message(self) -> bytes:
        """The datagram: header filled in with count and size."""
        struct.pack_into("!H", self.data, 2, len(self.data))
        self.data[4 if self.version else 0] = self.nr_conns
        return bytes(self.data)


def encode_messages(entries: Iterable[SyncEntry], version: int = 1, syncid: int = 0,
                    maxlen: int = DEFAULT_MAXLEN) -> list[bytes]:
    """Pack entries into as many datagrams as the kernel's buffers would
    make (v0 skips IPv6 entries, as ``ip_vs_sync_conn_v0`` does)."""
    out: list[bytes] = []
    buf: SyncBuffer | None = None
    for e in entries:
        if version == 0 and e.af != AF_INET:
            continue
        rec = record_v1(e) if version else record_v0(e)
        if buf is not None and not buf.fits(len(rec)):
            out.append(buf.message())
            buf = None
        if buf is None:
            buf = SyncBuffer(version, syncid, maxlen, len(rec), 0.0)
        buf.add(rec)
    if buf is not None:
        out.append(buf.message())
    return out


# ---------------------------------------------------------------------------
# decoding (ip_vs_process_message): defensive, never raises
# ---------------------------------------------------------------------------
@dataclass
class Decoded:
    """What one datagram gave: the entries a backup applies, in order, and
    why the rest was dropped.  ``dropped`` names the reason the datagram (or
    what remained of it) was thrown away, '' when all of it was read;
    ``skipped`` counts single records dropped by reason."""

    entries: list[SyncEntry] = field(default_factory=list)
    version: int = -1
    dropped: str = ""
    skipped: Counter[str] = field(default_factory=Counter)


def decode_message(buf: bytes | bytearray | memoryview, syncid: int = 0) -> Decoded:
    """Read one datagram as a kernel backup with ``syncid`` (0 = any) does.

    Whole-datagram drops: shorter than 4 bytes ("short"), length other than
    the header's size ("size"), another syncid ("syncid").  A v1 datagram is
    read record by record; a record that runs past the datagram, carries a
    record version other than 0, has an unknown type, or has a malformed
    option ends the datagram there ("truncated", "record-version", "type",
    "option"); earlier records stay applied, as in the kernel.  A record with
    an unknown mandatory option, an unknown protocol, a state out of range,
    or PE data without a known engine is skipped alone."""
    data = bytes(buf)
    out = Decoded()
    n = len(data)
    if n < HDR_V0.size:
        out.dropped = "short"
        return out
    if n != (data[2] << 8 | data[3]):
        out.dropped = "size"
        return out
    if syncid and data[1] != syncid:
        out.dropped = "syncid"
        return out
    if n >= HDR_V1.size and data[0] == 0 and data[5] == SYNC_PROTO_VER and data[6] == 0 and data[7] == 0:
        out.version = 1
        _decode_v1(data, out)
    else:
        out.version = 0
        _decode_v0(data, out)
    return out


def _state_ok(out: Decoded, protocol: int, flags: int, state: int) -> bool:
    if flags & CONN_F_TEMPLATE:
        return True  # the kernel only logs a template state out of range
    states = PROTO_STATES.get(protocol)
    if states is None:
        out.skipped["protocol"] += 1
        return False
    if state >= states:
        out.skipped["state"] += 1
        return False
    return True


def _decode_v0(data: bytes, out: Decoded) -> None:
    p = HDR_V0.size
    n = len(data)
    for _ in range(data[0]):
        if p + V0_SIMPLE > n:
            out.dropped = "truncated"
            return
        _, protocol, cport, vport, dport, caddr, vaddr, daddr, flags, state = REC_V0.unpack_from(data, p)
        flags = (flags | CONN_F_SYNC) & ~CONN_F_HASHED
        seq = None
        if flags & CONN_F_SEQ_MASK:
            if p + V0_FULL > n:
                out.dropped = "truncated"
                return
            seq = SEQ.unpack_from(data, p + V0_SIMPLE)
            p += V0_FULL
        else:
            p += V0_SIMPLE
        if not _state_ok(out, protocol, flags, state):
            continue
        out.entries.append(
            SyncEntry(AF_INET, protocol, flags, state, caddr, cport, vaddr, vport, daddr, dport, seq=seq)
        )


def _decode_v1(data: bytes, out: Decoded) -> None:
    n = len(data)
    rec_end = HDR_V1.size
    for _ in range(data[4]):
        p = rec_end
        if p + V1_V4 > n:
            out.dropped = "truncated"
            return
        ver_size = data[p + 2] << 8 | data[p + 3]
        size = ver_size & SVER_MASK
        rec_end = p + size
        if rec_end > n:
            out.dropped = "truncated"
            return
        if ver_size >> SVER_SHIFT:
            out.dropped = "record-version"
            return
        why = _decode_v1_record(data, p, rec_end, out)
        if why:
            out.dropped = why
            return
        rec_end = p + ((size + 3) & ~3)


def _decode_v1_record(data: bytes, p: int, end: int, out: Decoded) -> str:
    """``ip_vs_proc_sync_conn``: '' when the record was taken or skipped,
    else the reason the rest of the datagram is dropped."""
    rtype, protocol, _, flags, state, cport, vport, dport, fwmark, timeout = REC_V1.unpack_from(data, p)
    if rtype & STYPE_F_INET6:
        af, alen = AF_INET6, 16
    elif rtype == 0:
        af, alen = AF_INET, 4
    else:
        return "type"
    a = p + REC_V1.size
    q = a + 3 * alen
    if q > end:
        return "truncated"
    caddr = int.from_bytes(data[a : a + alen], "big")
    vaddr = int.from_bytes(data[a + alen : a + 2 * alen], "big")
    daddr = int.from_bytes(data[a + 2 * alen : q], "big")
    seq = None
    pe_data: bytes | None = None
    pe_name: bytes | None = None
    unknown_mandatory = False
    while q < end:
        if q + 2 > end:
            return "option"
        ptype, plen = data[q], data[q + 1]
        q += 2
        if not plen or q + plen > end:
            return "option"
        kind = ptype & ~OPT_F_PARAM
        if kind == OPT_SEQ_DATA:
            if plen != SEQ.size or seq is not None:
                return "option"
            seq = SEQ.unpack_from(data, q)
        elif kind == OPT_PE_DATA:
            if plen > PEDATA_MAXLEN or pe_data is not None:
                return "option"
            pe_data = data[q : q + plen]
        elif kind == OPT_PE_NAME:
            if plen > IP_VS_PENAME_MAXLEN or pe_name is not None:
                return "option"
            pe_name = data[q : q + plen]
        elif not ptype & OPT_F_PARAM:
            # the kernel stops reading this record at once and skips it
            unknown_mandatory = True
            break
        q += plen
    if unknown_mandatory:
        out.skipped["option"] += 1
        return ""
    flags = (flags & BACKUP_MASK) | CONN_F_SYNC
    if not _state_ok(out, protocol, flags, state):
        return ""
    name = ""
    if pe_data:
        # ip_vs_conn_fill_param_sync: PE data needs the name of a known engine
        name = (pe_name or b"").decode("latin-1")
        if name != "sip":
            out.skipped["pe"] += 1
            return ""
    out.entries.append(
        SyncEntry(af, protocol, flags, state, caddr, cport, vaddr, vport, daddr, dport, fwmark, timeout,
                  seq, name, pe_data or b"")
    )  # fmt: skip
    return ""


# ---------------------------------------------------------------------------
# the master: what is sent when (ip_vs_sync_conn_needed), and its buffers
# ---------------------------------------------------------------------------
@dataclass
class SyncParams:
    """The sysctls that decide sending (net.ipv4.vs.sync_*), defaults as in
    the kernel: sync_threshold "3 50", no refresh period, no retries."""

    threshold: int = 3
    period: int = 50
    refresh_period: float = 0.0
    retries: int = 0
    persist_mode: int = 0
    version: int = 1


def _in_persistence(cp: Conn) -> bool:
    c = cp.control
    while c is not None:
        if c.flags & CONN_F_TEMPLATE:
            return True
        c = c.control
    return False


class SyncMaster:
    """The master side of one sync daemon: ``sync_conn`` is called by the
    Director for every client packet of an entry (``ip_vs_sync_conn`` from
    ``ip_vs_in_hook``) with the entry's packet count; records go into the
    current buffer of the entry's thread; :meth:`due` hands out the
    datagrams to send: full buffers at once, the current one after 2 s.

    Per-entry bookkeeping (``old_state`` and ``sync_endtime`` with its retry
    count in the low 2 bits, in jiffies as the kernel keeps them) lives in
    the entry's ``sync_mark`` slot: ``endtime << 4 | old_state``."""

    def __init__(self, syncid: int = 0, maxlen: int = DEFAULT_MAXLEN, threads: int = 1,
                 params: SyncParams | None = None) -> None:
        self.syncid = syncid
        self.maxlen = maxlen or DEFAULT_MAXLEN
        self.threads = max(1, threads)
        self.params = params or SyncParams()
        self.buffers: list[SyncBuffer | None] = [None] * self.threads
        #: finished datagrams per thread id, oldest first
        self.queue: list[tuple[int, bytes]] = []
        self.sent_records = 0

    # -- the rule -------------------------------------------------------------
    def needed(self, cp: Conn, pkts: int, now: float) -> bool:
        """``ip_vs_sync_conn_needed``: TCP (and SCTP) entries only in states
        worth keeping, a change to a state other than ESTABLISHED at once;
        else when ``pkts % sync_period == sync_threshold`` (templates: every
        time); sync_refresh_period and sync_retries hold back resends of an
        entry whose expiry moved less than the period (and half its timeout,
        at least 10 s), with up to sync_retries retries every period/8."""
        prm = self.params
        mark = cp.sync_mark
        old_state = mark & 15
        orig = mark >> 4
        jnow = int(now * HZ)
        tmo = int(cp.timeout * HZ)
        n = (jnow + tmo) & ~3
        force = False
        flags = cp.flags
        if flags & CONN_F_TEMPLATE:
            pass
        elif prm.persist_mode and _in_persistence(cp):
            return False
        elif cp.protocol == IPPROTO_TCP or cp.protocol == IPPROTO_SCTP:
            tcp = cp.protocol == IPPROTO_TCP
            if cp.state not in (_TCP_SYNC_STATES if tcp else _SCTP_SYNC_STATES):
                return False
            force = cp.state != old_state
            if force and cp.state != (_TCP_ESTABLISHED if tcp else _SCTP_ESTABLISHED):
                cp.sync_mark = (n << 4) | cp.state
                return True
        refresh = int(prm.refresh_period * HZ)
        if refresh > 0:
            diff = n - orig
            min_diff = max(tmo >> 1, 10 * HZ)
            if abs(diff) < min(refresh, min_diff):
                retries = orig & 3
                if retries >= prm.retries:
                    return False
                if jnow < orig - tmo + (refresh >> 3):
                    return False
                n |= retries + 1
        if prm.period > 0:
            if not flags & CONN_F_TEMPLATE and pkts % prm.period != prm.threshold:
                return False
        elif not refresh and pkts != prm.threshold:
            return False
        cp.sync_mark = (n << 4) | cp.state
        return True

    def sync_conn(self, cp: Conn, pkts: int, now: float) -> None:
        """Queue ``cp`` if the rule says so, then its controlling template
        (with the template's own packet count, incremented here as the
        kernel does), and so on up the chain.  In v1 the template is offered
        even when its connection was not sent; in v0 only after it."""
        v1 = bool(self.params.version)
        while True:
            if v1:
                if not cp.flags & CONN_F_ONE_PACKET and self.needed(cp, pkts, now):
                    self.add(entry_from_conn(cp), self.thread_of(cp), now)
            else:
                # ip_vs_sync_conn_v0: IPv4 only, and the template follows
                # only a connection that was itself sent
                if cp.af != AF_INET or cp.flags & CONN_F_ONE_PACKET or not self.needed(cp, pkts, now):
                    return
                self.add(entry_from_conn(cp), self.thread_of(cp), now)
            ct = cp.control
            if ct is None:
                return
            if ct.flags & CONN_F_TEMPLATE:
                ct.in_pkts += 1
                pkts = ct.in_pkts
            else:
                pkts = self.params.threshold
            cp = ct

    def thread_of(self, cp: Conn) -> int:
        """``select_master_thread_id``: the kernel spreads entries over the
        threads by their address; pylvs by the client endpoint's key."""
        return cp.key % self.threads if self.threads > 1 else 0

    # -- buffers --------------------------------------------------------------
    def add(self, e: SyncEntry, tid: int, now: float) -> None:
        """Append one record; a full buffer (or one of the other version) is
        queued first and a new one started."""
        version = 1 if self.params.version else 0
        rec = record_v1(e) if version else record_v0(e)
        buf = self.buffers[tid]
        if buf is not None and (buf.version != version or not buf.fits(len(rec))):
            self.queue.append((tid, buf.message()))
            buf = None
        if buf is None:
            buf = SyncBuffer(version, self.syncid, self.maxlen, len(rec), now)
            self.buffers[tid] = buf
        buf.add(rec)
        self.sent_records += 1

    def due(self, now: float) -> list[tuple[int, bytes]]:
        """Datagrams to send now, with their thread id: the queued full
        buffers, then each current buffer that is 2 s old."""
        out, self.queue = self.queue, []
        for tid, buf in enumerate(self.buffers):
            if buf is not None and now >= buf.firstuse + SYNC_FLUSH_TIME:
                out.append((tid, buf.message()))
                self.buffers[tid] = None
        return out

    def next_flush(self) -> float | None:
        """When the oldest current buffer must go (None: nothing pending)."""
        times = [b.firstuse + SYNC_FLUSH_TIME for b in self.buffers if b is not None]
        return min(times) if times else None


__all__ = [
    "BACKUP_MASK",
    "BACKUP_UPD_MASK",
    "DEFAULT_MAXLEN",
    "SYNC_GROUP",
    "SYNC_PORT",
    "Decoded",
    "SyncBuffer",
    "SyncEntry",
    "SyncMaster",
    "SyncParams",
    "decode_message",
    "encode_messages",
    "entry_from_conn",
    "record_v0",
    "record_v1",
]
