"""keepalived's checkers as asyncio probes, one module per checker kind
(keepalived/check/check_tcp.c, check_http.c, check_ssl.c, check_udp.c,
check_dns.c, check_misc.c, check_ping.c, check_smtp.c).

A probe is one attempt: ``await probe(chk)`` returns a :class:`Outcome`; it
never raises for what a server does (refusal, silence, a bad answer) and
never blocks the event loop.  Retries, delays and what a failure means are
the policy's (:mod:`lvs.health`); the daemon's runner bounds parallelism
and the time each attempt may take.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .base import Outcome

Probe = Callable[..., Awaitable[Outcome]]


def probe_for(kind: str) -> Probe:
    """The probe of a checker kind (``TCP_CHECK``, ``HTTP_GET`` ...)."""
    if kind == "TCP_CHECK":
        from .tcp import probe
    elif kind == "HTTP_GET":
        from .http import probe
    elif kind == "SSL_GET":
        from .ssl import probe
    elif kind == "UDP_CHECK":
        from .udp import probe
    elif kind == "DNS_CHECK":
        from .dns import probe
    elif kind == "MISC_CHECK":
        from .misc import probe
    elif kind == "PING_CHECK":
        from .ping import probe
    elif kind == "SMTP_CHECK":
        from .smtp import probe
    else:
        raise KeyError(kind)
    return probe


__all__ = ["Outcome", "Probe", "probe_for"]
