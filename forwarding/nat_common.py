"""Helpers shared by the NAT data plane's modules (:mod:`forwarding.nat`,
:mod:`forwarding.nat_tcp`, :mod:`forwarding.nat_udp`): the plane's logger and
the conversions between the core's integer addresses and their text."""

from __future__ import annotations

import logging

from lvs.addr import format_ip, inet_pton

log = logging.getLogger("lvsd.nat")

_ipcache: dict[str, int] = {}


def _ipint(af: int, host: str) -> int:
    """An address text as the core's integer (cached: clients repeat)."""
    v = _ipcache.get(host)
    if v is None:
        if len(_ipcache) > 65536:
            _ipcache.clear()
        text = host.split("%", 1)[0]
        value = inet_pton(af, text)
        if value is None:
            raise OSError(f"illegal IP address string passed to inet_pton: {text!r}")
        v = _ipcache[host] = value
    return v


_fmt = format_ip
