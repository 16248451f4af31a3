"""The order ipvsadm lists services and real servers in: libipvs's comparators under
glibc's ``qsort``, and the kernel's own order for ``--nosort``.

ipvsadm 1.31 fetches the table from the kernel (netlink dumps: services in the order of
the kernel's service hash table, see :func:`lvs.ipvsadm.proc.kernel_service_order`; each
service's real servers in list order, newest first), then, unless ``--nosort``, calls
``ipvs_sort_services(..., ipvs_cmp_services)`` and, per service,
``ipvs_sort_dests(..., ipvs_cmp_dests)``: ``qsort`` over the entry arrays.

The comparators subtract in C ``int`` arithmetic: the firewall marks (``u_int32_t``), the
host-order address words (``ntohl`` of each 32-bit word) and the ports (``ntohs``).  A
difference of 2^31 or more wraps to a negative number, so the relation is not an order:
1.2.3.4 < 200.1.1.1 < 128.0.0.1 < 1.2.3.4 can all hold.  The result then depends on the
exact sequence of comparisons the sort makes, and on its input order.

glibc 2.36 (Debian bookworm) ``qsort``/``qsort_r`` (stdlib/msort.c) is a merge sort for
every size ipvsadm can meet: it sorts in a temporary buffer (``alloca`` below 1024 bytes,
``malloc`` up to a quarter of the physical memory; only past that, or when ``malloc``
fails, ``_quicksort``).  The entries (``ipvs_service_entry_t``, ``ipvs_dest_entry_t``) are
larger than 32 bytes, so it sorts an array of pointers to them ("indirect sorting") and
permutes the entries at the end, which does not change the comparison sequence:
``msort_with_tmp`` splits ``n`` into ``n1 = n / 2`` and ``n2 = n - n1``, sorts both
halves, then merges, taking the left element while ``cmp(left, right) <= 0``.  The merge
is stable.  (glibc 2.37 replaced this with introsort; bookworm has 2.36.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from ..constants import AF_INET6, IPPROTO_TCP

if TYPE_CHECKING:
    from ..model import Dest, Service

__all__ = ["cmp_dests", "cmp_services", "msort", "sort_dests", "sort_services"]

T = TypeVar("T")

_U32 = 0xFFFFFFFF
_SIGN = 0x80000000
_WRAP = 0x100000000


def _c_int(difference: int) -> int:
    """An unsigned 32-bit difference as the C ``int`` it is stored in."""
    d = difference & _U32
    return d - _WRAP if d & _SIGN else d


def _cmp_addr(af: int, a_af: int, a: int, b_af: int, b: int) -> int:
    """Word by word as ``af`` reads them (one word for IPv4, four for IPv6): the
    first non-zero wrapped difference of the host-order words, else 0.  An IPv4
    address fills the first word of its ``union nf_inet_addr``, the rest are zero."""
    a128 = a if a_af == AF_INET6 else (a & _U32) << 96
    b128 = b if b_af == AF_INET6 else (b & _U32) << 96
    if af != AF_INET6:
        return _c_int((a128 >> 96) - (b128 >> 96))
    if a128 == b128:
        return 0
    for shift in (96, 64, 32, 0):
        d = _c_int((a128 >> shift) - (b128 >> shift))
        if d:
            return d
    return 0


def cmp_services(s1: Service, s2: Service) -> int:
    """``ipvs_cmp_services``: fwmark, then family, protocol, address (as many words
    as the family has), port, each a plain subtraction.  A firewall-mark service
    comes back from the kernel as a TCP service with address 0 and port 0."""
    k1, k2 = s1.key, s2.key
    r = _c_int(k1.fwmark - k2.fwmark)
    if r:
        return r
    r = k1.af - k2.af
    if r:
        return r
    r = (IPPROTO_TCP if k1.fwmark else k1.protocol) - (IPPROTO_TCP if k2.fwmark else k2.protocol)
    if r:
        return r
    if k1.af != AF_INET6:
        r = _c_int(k1.addr - k2.addr)
    else:
        r = _cmp_addr(AF_INET6, k1.af, k1.addr, k2.af, k2.addr)
    if r:
        return r
    return (k1.port & 0xFFFF) - (k2.port & 0xFFFF)


def cmp_dests(d1: Dest, d2: Dest) -> int:
    """``ipvs_cmp_dests``: address, read with the *first* dest's family (a service
    may mix families through tunnels), then port."""
    if d1.af != AF_INET6 and d2.af != AF_INET6:
        r = _c_int(d1.addr - d2.addr)
    else:
        r = _cmp_addr(d1.af, d1.af, d1.addr, d2.af, d2.addr)
    if r:
        return r
    return (d1.port & 0xFFFF) - (d2.port & 0xFFFF)


def msort(items: Sequence[T], cmp: Callable[[T, T], int]) -> list[T]:
    """glibc 2.36 ``msort_with_tmp`` over ``items``: the same comparisons in the same
    order, so the same result for a comparator that is not a total order."""
    n = len(items)
    if n <= 1:
        return list(items)
    n1 = n // 2
    left = msort(items[:n1], cmp)
    right = msort(items[n1:], cmp)
    out: list[T] = []
    i = j = 0
    nl, nr = len(left), len(right)
    while i < nl and j < nr:
        if cmp(left[i], right[j]) <= 0:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    if i < nl:
        out.extend(left[i:])
    else:
        out.extend(right[j:])
    return out


def sort_services(services: Sequence[Service]) -> list[Service]:
    """``ipvs_sort_services``: ``services`` in the kernel's dump order, sorted."""
    return msort(services, cmp_services)


def sort_dests(dests: Sequence[Dest]) -> list[Dest]:
    """``ipvs_sort_dests``: one service's real servers in list order, sorted."""
    return msort(dests, cmp_dests)
