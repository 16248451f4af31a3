"""Helpers shared by the NAT data plane's modules (:mod:`forwarding.nat`,
:mod:`forwarding.nat_tcp`, :mod:`forwarding.nat_udp`): the plane's logger and
the conversions between the core's integer addresses and their text."""

from __future__ import annotations

import logging
import socket

from lvs.constants import AF_INET6

log = logging.getLogger("lvsd.nat")

_ipcache: dict[str, int] = {}


def _ipint(af: int, host: str) -> int:
    """An address text as the core's integer (cached: clients repeat)."""
    v = _ipcache.get(host)
    if v is None:
        if len(_ipcache) > 65536:
            _ipcache.clear()
        text = host.split("%", 1)[0]
        v = _ipcache[host] = int.from_bytes(socket.inet_pton(af, text), "big")
    return v


def _fmt(af: int, value: int) -> str:
    return socket.inet_ntop(af, value.to_bytes(16 if af == AF_INET6 else 4, "big"))
