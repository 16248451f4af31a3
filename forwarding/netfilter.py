"""Keep the director's own stack away from DR/TUN virtual services.

In the usual LVS setup the VIP is a local address of the director (on lo).
The kernel's IPVS takes such packets at LOCAL_IN before any socket sees
them; pylvs takes them from AF_PACKET instead, so the director's TCP stack
would also get them and answer a SYN for a port nobody listens on with a
RST, killing the connection the real server is about to accept.

This module installs an nftables table ``inet pylvs`` whose prerouting chain
(priority raw, before conntrack) drops exactly the served traffic:
(address, protocol, port) triples, (address, protocol) pairs for port-0
services, and the later fragments of a served address and protocol.  The
sets are replaced atomically (one ``nft -f`` transaction) when services
change.  Teardown is one command (``nft delete table inet pylvs``), and
:meth:`NftGuard.install` first removes a table left behind by a crashed
lvsd, so a restart always starts clean.

Traffic arriving on ``lo`` is left alone (a local client talking to the VIP
is the director's own business, and the capture filter ignores lo too).

Firewall-mark services: the same table has a chain ``fwmark`` hooked at
``input`` with priority 99, where the kernel hooks ``ip_vs_in_hook``
(``NF_INET_LOCAL_IN``, ``NF_IP_PRI_NAT_SRC - 1``): after routing has
delivered the packet locally (and reassembled IPv4 fragments), after the
user's ``mangle`` marking in prerouting or input and the ``filter`` rules.
It holds one rule per served (family, mark): ``meta nfproto ipv4 meta mark
MARK counter`` and the xtables ``NFQUEUE`` target (revision 3, one queue,
no bypass) with the queue lvsd has bound (:mod:`forwarding.nfqueue`).  The
target goes through nft_compat because this kernel has no native nftables
``queue`` expression (``CONFIG_NFT_QUEUE`` unset: ``nft add rule ... queue``
fails with ENOENT) while ``xt_NFQUEUE`` and ``NFT_COMPAT`` are built in;
nft(8) cannot write compat expressions, so these rules are sent over
nf_tables netlink (:func:`fwmark_batch`), as iptables-nft does.  The rules
are replaced in one transaction (delete the chain's rules, add the new
ones) whenever the set of fwmark services changes; they go with the table.
``nft list ruleset`` shows them as ``meta mark ... counter`` with a note
that the table is "managed by iptables-nft" (nft without libxtables cannot
print the target).
"""

from __future__ import annotations

import errno
import logging
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterable

from lvs.addr import format_ip

from .capture import Target
from .nfqueue import NETLINK_NETFILTER, NLA_F_NESTED, nl_errors, nla, nlmsg

log = logging.getLogger("lvsd.netfilter")

TABLE = "pylvs"
FAMILY = "inet"
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
#: the chain of the fwmark queue rules, and its place (ip_vs_in_hook's)
FWMARK_CHAIN = "fwmark"
FWMARK_PRIORITY = 99

# nf_tables netlink (linux/netfilter/nf_tables.h, nfnetlink.h, x_tables.h)
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWRULE = 6
NFT_MSG_DELRULE = 8
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10
NFT_REG_1 = 1
NFT_META_MARK = 3
NFT_META_NFPROTO = 15
NFT_CMP_EQ = 0
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NFQUEUE_TARGET_REV = 3


class NftError(RuntimeError):
    pass


def nft_available(nft: str = "nft") -> bool:
    return shutil.which(nft) is not None


def run_script(script: str, nft: str = "nft") -> None:
    """Run an nft script as one transaction; :class:`NftError` on failure."""
    _run(script, nft)


def _run(script: str, nft: str = "nft", check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=20, check=False
    )
    if check and proc.returncode != 0:
        raise NftError(f"nft failed ({proc.returncode}): {proc.stderr.strip()}\n--- script ---\n{script}")
    return proc


def table_exists(table: str = TABLE, nft: str = "nft") -> bool:
    proc = subprocess.run(
        [nft, "list", "table", FAMILY, table], capture_output=True, text=True, timeout=20, check=False
    )
    return proc.returncode == 0


def delete_table(table: str = TABLE, nft: str = "nft") -> bool:
    """Remove the table if present; True if something was removed."""
    if not table_exists(table, nft):
        return False
    _run(f"delete table {FAMILY} {table}\n", nft, check=False)
    return True


def _proto(p: int) -> str:
    return _PROTO_NAMES.get(p, str(p))


def ruleset(table: str = TABLE) -> str:
    """The table's skeleton: four sets and one chain."""
    return f"""table {FAMILY} {table} {{
    set svc4 {{ type ipv4_addr . inet_proto . inet_service; }}
    set svc6 {{ type ipv6_addr . inet_proto . inet_service; }}
    set addr4 {{ type ipv4_addr . inet_proto; }}
    set addr6 {{ type ipv6_addr . inet_proto; }}
    set any4 {{ type ipv4_addr . inet_proto; }}
    set any6 {{ type ipv6_addr . inet_proto; }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        iif "lo" return
        ip daddr . meta l4proto @any4 counter drop
        ip6 daddr . meta l4proto @any6 counter drop
        ip frag-off & 0x1fff != 0 ip daddr . meta l4proto @addr4 counter drop
        ip6 daddr . meta l4proto @addr6 exthdr frag exists counter drop
        ip daddr . meta l4proto . th dport @svc4 counter drop
        ip6 daddr . meta l4proto . th dport @svc6 counter drop
    }}
    chain {FWMARK_CHAIN} {{
        type filter hook input priority {FWMARK_PRIORITY}; policy accept;
    }}
}}
"""


def _str(text: str) -> bytes:
    return text.encode() + b"\0"


def _nest(kind: int, payload: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, payload)


def _expr(name: str, data: bytes) -> bytes:
    """NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }."""
    return _nest(1, nla(1, _str(name)) + _nest(2, data))


def _be32(v: int) -> bytes:
    return struct.pack("!I", v)


def fwmark_rule_exprs(af: int, mark: int, queue_num: int) -> bytes:
    """``meta nfproto ipv4|ipv6 meta mark MARK counter`` + xt ``NFQUEUE
    --queue-num N`` (xt_NFQ_info_v3: queuenum, queues_total 1, no flags)."""
    nfproto = NFPROTO_IPV6 if af == socket.AF_INET6 else NFPROTO_IPV4

    def meta(key: int) -> bytes:
        return _expr("meta", nla(1, _be32(NFT_REG_1)) + nla(2, _be32(key)))

    def cmp(value: bytes) -> bytes:
        return _expr("cmp", nla(1, _be32(NFT_REG_1)) + nla(2, _be32(NFT_CMP_EQ)) + _nest(3, nla(1, value)))

    return (
        meta(NFT_META_NFPROTO)
        + cmp(bytes([nfproto]))
        + meta(NFT_META_MARK)
        # the mark is compared in host byte order, as nft stores it
        + cmp(struct.pack("=I", mark))
        + _expr("counter", nla(1, bytes(8)) + nla(2, bytes(8)))
        + _expr(
            "target",
            nla(1, _str("NFQUEUE"))
            + nla(2, _be32(NFQUEUE_TARGET_REV))
            + nla(3, struct.pack("=HHH2x", queue_num, 1, 0)),
        )
    )


def fwmark_batch(table: str, marks: Iterable[tuple[int, int]], queue_num: int, seq: int = 1) -> bytes:
    """One nf_tables transaction: delete every rule of the ``fwmark`` chain,
    then add one queue rule per ``(family, mark)``.  Every message asks for
    an ACK; returns the datagram."""
    begin = nlmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, b"")
    where = nla(1, _str(table)) + nla(2, _str(FWMARK_CHAIN))
    msgs = [
        nlmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE, NLM_F_REQUEST | NLM_F_ACK, seq + 1,
              NFPROTO_INET, 0, where)
    ]  # fmt: skip
    for i, (af, mark) in enumerate(sorted(set(marks))):
        body = where + _nest(4, fwmark_rule_exprs(af, mark, queue_num))
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
        msgs.append(
            nlmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE, flags, seq + 2 + i, NFPROTO_INET, 0, body)
        )
    end = nlmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2 + len(msgs), 0, NFNL_SUBSYS_NFTABLES, b"")
    return begin + b"".join(msgs) + end


def queue_rule_batch(table: str, chain: str, queue_num: int, seq: int = 1) -> bytes:
    """One nf_tables transaction: delete every rule of ``chain`` (a regular
    chain the table's own rules jump to), then add one rule ``counter`` +
    xt ``NFQUEUE --queue-num N`` (no bypass: with nobody bound, the packet is
    dropped and the sender retries).  Two ACKs."""
    begin = nlmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, b"")
    where = nla(1, _str(table)) + nla(2, _str(chain))
    delete = nlmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE, NLM_F_REQUEST | NLM_F_ACK, seq + 1,
                   NFPROTO_INET, 0, where)  # fmt: skip
    target = nla(1, _str("NFQUEUE")) + nla(2, _be32(NFQUEUE_TARGET_REV))
    target += nla(3, struct.pack("=HHH2x", queue_num, 1, 0))
    exprs = _expr("counter", nla(1, bytes(8)) + nla(2, bytes(8))) + _expr("target", target)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
    add = nlmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE, flags, seq + 2, NFPROTO_INET, 0,
                where + _nest(4, exprs))  # fmt: skip
    end = nlmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 3, 0, NFNL_SUBSYS_NFTABLES, b"")
    return begin + delete + add + end


def send_batch(data: bytes, acks: int, timeout: float = 5.0) -> None:
    """Send an nf_tables batch and wait for its ``acks`` ACKs; raise
    :class:`NftError` on the first error (the kernel then aborts the whole
    transaction)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sk:
        sk.bind((0, 0))
        sk.settimeout(timeout)
        sk.send(data)
        got = 0
        deadline = time.monotonic() + timeout
        while got < acks:
            sk.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                reply = sk.recv(65536)
            except TimeoutError as exc:
                raise NftError(f"nf_tables: {got} of {acks} acknowledgements") from exc
            for err in nl_errors(reply):
                if err:
                    raise NftError(f"nf_tables batch failed: {errno.errorcode.get(err, err)}")
                got += 1


def elements_script(targets: Iterable[Target], table: str = TABLE) -> str:
    """One transaction that replaces the contents of every set."""
    svc = {4: [], 6: []}
    addr = {4: set(), 6: set()}
    anyp = {4: [], 6: []}
    for t in targets:
        v = 6 if t.af == socket.AF_INET6 else 4
        a = format_ip(t.af, t.addr)
        addr[v].add(f"{a} . {_proto(t.protocol)}")
        if t.port == 0:
            anyp[v].append(f"{a} . {_proto(t.protocol)}")
        else:
            svc[v].append(f"{a} . {_proto(t.protocol)} . {t.port}")
    lines = []
    for v in (4, 6):
        for name, elems in ((f"svc{v}", svc[v]), (f"addr{v}", sorted(addr[v])), (f"any{v}", anyp[v])):
            lines.append(f"flush set {FAMILY} {table} {name}")
            if elems:
                lines.append(f"add element {FAMILY} {table} {name} {{ {', '.join(sorted(set(elems)))} }}")
    return "\n".join(lines) + "\n"


class NftGuard:
    """The ``inet pylvs`` table: install, keep in step with the served set, remove."""

    def __init__(self, table: str = TABLE, nft: str = "nft") -> None:
        self.table = table
        self.nft = nft
        self.installed = False
        self.current: frozenset[Target] = frozenset()
        self.marks: frozenset[tuple[int, int]] = frozenset()
        self.queue_num = -1

    def install(self) -> None:
        if not nft_available(self.nft):
            raise NftError("the nft tool is missing (apt package nftables; `make netdeps`)")
        if delete_table(self.table, self.nft):
            log.warning("removed a leftover nftables table %s %s (earlier lvsd crash?)", FAMILY, self.table)
        _run(ruleset(self.table), self.nft)
        self.installed = True
        self.current = frozenset()
        self.marks = frozenset()

    def update(self, targets: Iterable[Target]) -> bool:
        """Replace the set contents; False if nothing changed."""
        new = frozenset(targets)
        if new == self.current and self.installed:
            return False
        _run(elements_script(new, self.table), self.nft)
        self.current = new
        return True

    def update_fwmarks(self, marks: Iterable[tuple[int, int]], queue_num: int) -> bool:
        """Make the ``fwmark`` chain queue exactly ``marks`` ((family, mark)
        pairs) to ``queue_num``; False if nothing changed."""
        new = frozenset(marks)
        if new == self.marks and queue_num == self.queue_num:
            return False
        send_batch(fwmark_batch(self.table, new, queue_num), acks=1 + len(new))
        self.marks = new
        self.queue_num = queue_num
        return True

    def remove(self) -> None:
        if self.installed:
            delete_table(self.table, self.nft)
        self.installed = False
        self.current = frozenset()
        self.marks = frozenset()

    def counters(self) -> str:
        proc = subprocess.run(
            [self.nft, "list", "chain", FAMILY, self.table, "prerouting"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return proc.stdout


__all__ = [
    "FWMARK_CHAIN",
    "TABLE",
    "NftError",
    "NftGuard",
    "delete_table",
    "elements_script",
    "fwmark_batch",
    "nft_available",
    "queue_rule_batch",
    "ruleset",
    "run_script",
    "send_batch",
]
