"""Name resolution the way ipvsadm sees it on a host with files-only NSS.

ipvsadm resolves four ways (ipvsadm.c ``host_to_addr``, ``addr_to_host``,
``service_to_port``, ``port_to_service``): ``gethostbyname`` (IPv4 answers
only; anything else is refused), ``gethostbyaddr`` for IPv4 and IPv6,
``getservbyname`` and ``getservbyport`` with the protocol spelled
``tcp``/``udp``/``sctp``.  The golden machine has no DNS, so the only sources
are ``/etc/hosts`` and ``/etc/services``; this module reads exactly those,
following glibc's files backend:

* ``/etc/hosts``: ``address canonical-name [aliases...]``, ``#`` starts a
  comment.  A name lookup matches the canonical name or any alias without
  regard to case; the first matching line of the right family wins.  An
  address lookup returns the canonical name of the first line carrying that
  address.
* ``/etc/services``: ``name port/proto [aliases...]``.  Names compare
  case-sensitively; the first line with the right port and protocol wins.

Pure: a resolver is given the files' text (or a function that reads it, called
once, on first use); ``lvsd.resolver`` reads the real files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..addr import parse_ip
from ..constants import AF_INET, AF_INET6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

__all__ = ["PROTO_SERVICE_NAMES", "FilesResolver", "NullResolver", "TextSource"]

#: The protocol names ipvsadm hands to getservby*; other protocols never resolve.
PROTO_SERVICE_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp"}


def _strip_comment(line: str) -> str:
    cut = line.find("#")
    return line if cut < 0 else line[:cut]


#: A file's text, or a function returning it (called once, when first needed).
TextSource = str | Callable[[], str]


def _text(source: TextSource) -> str:
    return source if isinstance(source, str) else source()


@dataclass
class _HostsTable:
    #: (af, value, canonical name, names lower-cased incl. canonical) in file order.
    rows: list[tuple[int, int, str, tuple[str, ...]]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> _HostsTable:
        table = cls()
        for raw in text.splitlines():
            words = _strip_comment(raw).split()
            if len(words) < 2:
                continue
            try:
                af, value = parse_ip(words[0])
            except (ValueError, OSError):
                continue
            table.rows.append((af, value, words[1], tuple(w.lower() for w in words[1:])))
        return table


@dataclass
class _ServicesTable:
    #: (name, port, proto, names incl. canonical) in file order.
    rows: list[tuple[str, int, str, tuple[str, ...]]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> _ServicesTable:
        table = cls()
        for raw in text.splitlines():
            words = _strip_comment(raw).split()
            if len(words) < 2 or "/" not in words[1]:
                continue
            port_text, _, proto = words[1].partition("/")
            if not port_text.isdigit():
                continue
            port = int(port_text)
            if port > 0xFFFF:
                continue
            table.rows.append((words[0], port, proto, tuple(words[:1] + words[2:])))
        return table


class FilesResolver:
    """Resolve host and service names from the text of ``/etc/hosts`` and
    ``/etc/services`` only (empty text: no names)."""

    def __init__(self, hosts: TextSource = "", services: TextSource = "") -> None:
        self._hosts_source = hosts
        self._services_source = services
        self._hosts: _HostsTable | None = None
        self._services: _ServicesTable | None = None

    # -- tables --------------------------------------------------------------
    @property
    def hosts_table(self) -> _HostsTable:
        if self._hosts is None:
            self._hosts = _HostsTable.parse(_text(self._hosts_source))
        return self._hosts

    @property
    def services_table(self) -> _ServicesTable:
        if self._services is None:
            self._services = _ServicesTable.parse(_text(self._services_source))
        return self._services

    # -- forward lookups (used by the command-line grammar) ------------------
    def host(self, name: str) -> tuple[int, int] | None:
        """``gethostbyname`` as ipvsadm's ``host_to_addr`` uses it: the first
        IPv4 entry whose name or alias equals ``name`` (case-insensitive).

        glibc's files backend only answers AF_INET for gethostbyname, so IPv6
        lines never match; ``None`` when nothing matches.
        """
        wanted = name.lower()
        for af, value, _canon, names in self.hosts_table.rows:
            if af == AF_INET and wanted in names:
                return af, value
        return None

    def service(self, name: str, proto: int) -> int | None:
        """``getservbyname(name, "tcp"|"udp"|"sctp")`` (ipvsadm ``service_to_port``)."""
        pname = PROTO_SERVICE_NAMES.get(proto)
        if pname is None:
            return None
        for _canon, port, p, names in self.services_table.rows:
            if p == pname and name in names:
                return port
        return None

    # -- reverse lookups (used by listings without -n) -----------------------
    def addr_name(self, af: int, value: int) -> str | None:
        """``gethostbyaddr`` (ipvsadm ``addr_to_host``): the canonical name of
        the first hosts line carrying this address, else ``None``."""
        if af not in (AF_INET, AF_INET6):
            return None
        for raf, rvalue, canon, _names in self.hosts_table.rows:
            if raf == af and rvalue == value:
                return canon
        return None

    def port_name(self, port: int, proto: int) -> str | None:
        """``getservbyport`` (ipvsadm ``port_to_service``): the canonical name of
        the first services line with this port and protocol, else ``None``."""
        pname = PROTO_SERVICE_NAMES.get(proto)
        if pname is None:
            return None
        for canon, rport, p, _names in self.services_table.rows:
            if rport == port and p == pname:
                return canon
        return None


class NullResolver(FilesResolver):
    """A resolver that knows no names (as if both files were empty)."""

    def __init__(self) -> None:
        super().__init__("", "")
