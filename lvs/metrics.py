"""Prometheus metric families from the IPVS table, pure.

node_exporter's IPVS collector (collector/ipvs_linux.go over procfs's
ipvs.go) reads ``/proc/net/ip_vs_stats`` and ``/proc/net/ip_vs``; the
families here carry its names, help texts, types and labels exactly, so
dashboards built for it work unchanged:

* five counters without labels from the table's totals
  (``node_ipvs_connections_total``, ``..._incoming_packets_total``,
  ``..._outgoing_packets_total``, ``..._incoming_bytes_total``,
  ``..._outgoing_bytes_total``);
* three gauges per real server (``node_ipvs_backend_weight``,
  ``..._connections_active``, ``..._connections_inactive``) labelled
  ``local_address``, ``local_port``, ``remote_address``, ``remote_port``,
  ``proto``, ``local_mark``.  A firewall-mark service has proto ``FWM``, an
  empty ``local_address``, ``local_port`` "0" and its mark in ``local_mark``
  as /proc prints it (``%08X``: mark 1 is "00000001"); other services have an
  empty ``local_mark``.  Addresses print as Go's ``net.IP.String()`` does
  (RFC 5952; an IPv4-mapped IPv6 address as dotted IPv4).  Rows whose labels
  coincide are summed, as node_exporter sums them.

Beside them, ``pylvs_*`` families: the rate estimator per service and real
server (what ``ipvsadm --rate`` shows), plus whatever families the daemon
passes in (data-plane counters, control operations, health).

The snapshot is taken in steps (:func:`snapshot_steps` is a generator that
yields between chunks of services) and the text is rendered in chunks
(:func:`render_chunks`), so the daemon can let its loop run between them.
The text is the Prometheus text format 0.0.4 exactly as prometheus-client's
``generate_latest`` writes it for the same families (a test compares them);
it is written here because ``generate_latest`` costs about 14 µs a sample,
4 s for node_exporter's 300,000 samples of 10,000 services × 10 real servers.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .constants import AF_INET6, PROTO_NAMES

__all__ = [
    "BACKEND_LABELS",
    "SERVICE_LABELS",
    "Family",
    "TableSnapshot",
    "families",
    "go_float",
    "go_ip",
    "release_steps",
    "render",
    "render_chunks",
    "snapshot",
    "snapshot_steps",
]

#: node_exporter's backend labels, in its order
BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark")
#: the service half of them (pylvs_service_* families)
SERVICE_LABELS = ("local_address", "local_port", "proto", "local_mark")

#: services walked per step of :func:`snapshot_steps`
SNAPSHOT_CHUNK = 50
#: samples per chunk of :func:`render_chunks`
RENDER_CHUNK = 1000

_TOTALS = (
    ("node_ipvs_connections_total", "The total number of connections made."),
    ("node_ipvs_incoming_packets_total", "The total number of incoming packets."),
    ("node_ipvs_outgoing_packets_total", "The total number of outgoing packets."),
    ("node_ipvs_incoming_bytes_total", "The total amount of incoming data."),
    ("node_ipvs_outgoing_bytes_total", "The total amount of outgoing data."),
)
_BACKEND_GAUGES = (
    ("node_ipvs_backend_connections_active", "The current active connections by local and remote address."),
    (
        "node_ipvs_backend_connections_inactive",
        "The current inactive connections by local and remote address.",
    ),
    ("node_ipvs_backend_weight", "The current backend weight by local and remote address."),
)
_RATES = (
    ("connections_per_second", "connections per second (CPS)"),
    ("incoming_packets_per_second", "incoming packets per second (InPPS)"),
    ("outgoing_packets_per_second", "outgoing packets per second (OutPPS)"),
    ("incoming_bytes_per_second", "incoming bytes per second (InBPS)"),
    ("outgoing_bytes_per_second", "outgoing bytes per second (OutBPS)"),
)
_RATE_NOTE = ", as ipvsadm --rate shows: the kernel's 2 s estimator (ip_vs_est.c)"


@dataclass
class Family:
    """One metric family as the text format writes it: ``name`` as exposed
    (counters end in ``_total``), ``type`` "counter" or "gauge", ``help``,
    ``labels`` (names, in the order values are given) and ``samples``
    (label values, value)."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()
    samples: Sequence[tuple[tuple[str, ...], float]] = field(default_factory=list)


class Column(Sequence[tuple[tuple[str, ...], float]]):
    """The samples of one family, read lazily from shared rows: (labels,
    row[index]) for each (labels, row), built only when sliced, so making
    the families costs nothing and rendering spreads the work over chunks."""

    def __init__(self, rows: list[tuple[tuple[str, ...], tuple[int, ...]]], index: int) -> None:
        self.rows = rows
        self.index = index

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, which: Any) -> Any:
        i = self.index
        if isinstance(which, slice):
            return [(labels, row[i]) for labels, row in self.rows[which]]
        labels, row = self.rows[which]
        return (labels, row[i])


@dataclass
class TableSnapshot:
    """What a scrape reports, copied from the table: totals, and per service
    and per real server the values node_exporter and ``--rate`` show.
    ``backends`` lists (node_exporter's label values, (active, inactive,
    weight, cps, inpps, outpps, inbps, outbps)), rows that share labels
    summed into one; ``services`` lists (service labels, the five rates)."""

    counters: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    rates: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    services: list[tuple[tuple[str, ...], tuple[int, ...]]] = field(default_factory=list)
    backends: list[tuple[tuple[str, ...], tuple[int, ...]]] = field(default_factory=list)


def go_ip(af: int, value: int) -> str:
    """An address as Go's ``net.IP.String()`` prints it (what node_exporter
    puts in its labels): dotted IPv4; IPv6 compressed per RFC 5952, except an
    IPv4-mapped address, which Go prints as plain IPv4."""
    if af == AF_INET6:
        addr6 = ipaddress.IPv6Address(value)
        mapped = addr6.ipv4_mapped
        return str(mapped) if mapped is not None else addr6.compressed
    return f"{(value >> 24) & 255}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def service_labels(svc: Any) -> tuple[str, str, str, str]:
    """(local_address, local_port, proto, local_mark) of a service, as
    node_exporter reads them from its /proc/net/ip_vs row."""
    if svc.fwmark:
        return ("", "0", "FWM", f"{svc.fwmark & 0xFFFFFFFF:08X}")
    proto = PROTO_NAMES.get(svc.protocol, f"IP_{svc.protocol}")
    return (go_ip(svc.af, svc.addr), str(svc.port), proto, "")


def snapshot_steps(ipvs: Any, chunk: int = SNAPSHOT_CHUNK) -> Generator[None, None, TableSnapshot]:
    """Copy what a scrape reports, ``chunk`` services at a time: the
    generator yields after each chunk (the caller may let other work run
    there) and returns the :class:`TableSnapshot`.  Between chunks the table
    may change; each service is copied whole, as one /proc read copies one
    service's row and its real servers."""
    snap = TableSnapshot(counters=ipvs.stats.counters(), rates=ipvs.stats.rates())
    services = list(ipvs.services.values())
    service_at: dict[tuple[str, ...], int] = {}  # labels -> index in snap.services
    backend_at: dict[tuple[str, ...], int] = {}
    ips: dict[tuple[int, int], str] = {}  # real servers recur across services
    ports: dict[int, str] = {}
    for start in range(0, len(services), chunk):
        for svc in services[start : start + chunk]:
            local_address, local_port, proto, local_mark = service_labels(svc)
            key = (local_address, local_port, proto, local_mark)
            rates = svc.stats.rates()
            _add_row(snap.services, service_at, key, rates)
            for dest in svc.destinations:
                where = (dest.af, dest.addr)
                address = ips.get(where)
                if address is None:
                    address = ips[where] = go_ip(dest.af, dest.addr)
                port = ports.get(dest.port)
                if port is None:
                    port = ports[dest.port] = str(dest.port)
                labels = (local_address, local_port, address, port, proto, local_mark)
                values = (dest.activeconns, dest.inactconns, dest.weight, *dest.stats.rates())
                _add_row(snap.backends, backend_at, labels, values)
        yield
    return snap


def _add_row(
    rows: list[tuple[tuple[str, ...], tuple[int, ...]]],
    index: dict[tuple[str, ...], int],
    labels: tuple[str, ...],
    values: tuple[int, ...],
) -> None:
    """Append a row, or add it to the row with the same labels (node_exporter sums them)."""
    at = index.get(labels)
    if at is None:
        index[labels] = len(rows)
        rows.append((labels, values))
    else:
        have = rows[at]
        rows[at] = (have[0], tuple(a + b for a, b in zip(have[1], values)))


def release_steps(snap: TableSnapshot, chunk: int = 5000) -> Iterator[None]:
    """Drop a big snapshot a slice at a time (freeing 10^5 rows in one go
    takes tens of milliseconds), yielding between slices."""
    for rows in (snap.backends, snap.services):
        while rows:
            del rows[-chunk:]
            yield


def snapshot(ipvs: Any) -> TableSnapshot:
    """The whole snapshot at once (tests, small tables)."""
    steps = snapshot_steps(ipvs, chunk=1 << 30)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def families(snap: TableSnapshot, extra: Iterable[Family] = ()) -> list[Family]:
    """The families of one scrape: node_exporter's eight, the pylvs rate
    families, then ``extra``."""
    out = [
        Family(name, "counter", text, (), [((), float(value))])
        for (name, text), value in zip(_TOTALS, snap.counters)
    ]
    backend_rows = snap.backends
    for index, (name, text) in enumerate(_BACKEND_GAUGES):
        out.append(Family(name, "gauge", text, BACKEND_LABELS, Column(backend_rows, index)))
    for index, (suffix, text) in enumerate(_RATES):
        out.append(
            Family(
                f"pylvs_{suffix}", "gauge", f"Whole table: {text}{_RATE_NOTE}.", (), [((), snap.rates[index])]
            )
        )
    service_rows = snap.services
    for index, (suffix, text) in enumerate(_RATES):
        out.append(
            Family(
                f"pylvs_service_{suffix}",
                "gauge",
                f"Per virtual service: {text}{_RATE_NOTE}.",
                SERVICE_LABELS,
                Column(service_rows, index),
            )
        )
    for index, (suffix, text) in enumerate(_RATES):
        out.append(
            Family(
                f"pylvs_backend_{suffix}",
                "gauge",
                f"Per real server: {text}{_RATE_NOTE}.",
                BACKEND_LABELS,
                Column(backend_rows, 3 + index),
            )
        )
    out.extend(extra)
    return out


# -- the text format ---------------------------------------------------------------------
def go_float(value: float) -> str:
    """A sample value as the text format writes it (prometheus-client's
    ``floatToGoString``: Python's repr, switching to an exponent once the
    integer part has more than six digits)."""
    if isinstance(value, int) and 0 <= value < 1_000_000:
        return f"{value}.0"
    d = float(value)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    text = repr(d)
    dot = text.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape_value(text: str) -> str:
    if "\\" in text or "\n" in text or '"' in text:
        return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return text


def _label_text(names: Sequence[str], values: Sequence[str], order: Sequence[int]) -> str:
    """``{a="x",b="y"}`` with the labels sorted by name, as generate_latest writes them."""
    if not names:
        return ""
    return "{" + ",".join(f'{names[i]}="{_escape_value(values[i])}"' for i in order) + "}"


def render_chunks(fams: Iterable[Family], chunk: int = RENDER_CHUNK) -> Iterator[str]:
    """The text exposition of ``fams``, in pieces of at most ``chunk``
    samples (so a caller can yield to its loop between pieces).  The label
    text of a label-value tuple is built once and shared by every family
    that holds the same tuple object (the snapshot's rows are shared)."""
    label_text: dict[tuple[int, int], str] = {}
    keep: list[tuple[str, ...]] = []  # the tuples whose id() keys label_text stay alive
    for fam in fams:
        names = fam.labels
        order = sorted(range(len(names)), key=lambda i: names[i])
        doc = fam.help.replace("\\", r"\\").replace("\n", r"\n")
        head = f"# HELP {fam.name} {doc}\n# TYPE {fam.name} {fam.type}\n"
        samples = fam.samples
        if not samples:
            yield head
            continue
        name = fam.name
        names_id = id(names)
        if isinstance(samples, Column):
            yield from _render_column(name, head, names, order, samples, chunk, label_text, keep)
            continue
        for start in range(0, len(samples), chunk):
            lines = [head] if start == 0 else []
            for values, value in samples[start : start + chunk]:
                key = (names_id, id(values))
                text = label_text.get(key)
                if text is None:
                    text = label_text[key] = _label_text(names, values, order)
                    keep.append(values)
                if value.__class__ is int and 0 <= value < 1_000_000:
                    lines.append(f"{name}{text} {value}.0\n")
                else:
                    lines.append(f"{name}{text} {go_float(value)}\n")
            yield "".join(lines)
    # the label texts and their keys go a slice at a time, like the rows
    while keep:
        for _ in range(min(chunk * 4, len(label_text))):
            label_text.popitem()
        del keep[-chunk * 4 :]
        yield ""


def _render_column(
    name: str,
    head: str,
    names: tuple[str, ...],
    order: list[int],
    column: Column,
    chunk: int,
    label_text: dict[tuple[int, int], str],
    keep: list[tuple[str, ...]],
) -> Iterator[str]:
    """render_chunks for a :class:`Column`: straight from the shared rows."""
    rows, index, names_id = column.rows, column.index, id(names)
    for start in range(0, len(rows), chunk):
        lines = [head] if start == 0 else []
        append = lines.append
        for values, row in rows[start : start + chunk]:
            text = label_text.get((names_id, id(values)))
            if text is None:
                text = label_text[(names_id, id(values))] = _label_text(names, values, order)
                keep.append(values)
            value = row[index]
            if value.__class__ is int and 0 <= value < 1_000_000:
                append(f"{name}{text} {value}.0\n")
            else:
                append(f"{name}{text} {go_float(value)}\n")
        yield "".join(lines)


def render(fams: Iterable[Family]) -> str:
    """The whole exposition at once."""
    return "".join(render_chunks(fams))
