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
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from collections.abc import Iterable

from lvs.addr import format_ip

from .capture import Target

log = logging.getLogger("lvsd.netfilter")

TABLE = "pylvs"
FAMILY = "inet"
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}


class NftError(RuntimeError):
    pass


def nft_available(nft: str = "nft") -> bool:
    return shutil.which(nft) is not None


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
}}
"""


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

    def install(self) -> None:
        if not nft_available(self.nft):
            raise NftError("the nft tool is missing (apt package nftables; `make netdeps`)")
        if delete_table(self.table, self.nft):
            log.warning("removed a leftover nftables table %s %s (earlier lvsd crash?)", FAMILY, self.table)
        _run(ruleset(self.table), self.nft)
        self.installed = True
        self.current = frozenset()

    def update(self, targets: Iterable[Target]) -> bool:
        """Replace the set contents; False if nothing changed."""
        new = frozenset(targets)
        if new == self.current and self.installed:
            return False
        _run(elements_script(new, self.table), self.nft)
        self.current = new
        return True

    def remove(self) -> None:
        if self.installed:
            delete_table(self.table, self.nft)
        self.installed = False
        self.current = frozenset()

    def counters(self) -> str:
        proc = subprocess.run(
            [self.nft, "list", "chain", FAMILY, self.table, "prerouting"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return proc.stdout


__all__ = ["TABLE", "NftError", "NftGuard", "delete_table", "elements_script", "nft_available", "ruleset"]
