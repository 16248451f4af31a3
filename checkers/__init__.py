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


_PROBES: dict[str, Probe] = {}
_MODULES = {
    "TCP_CHECK": "tcp", "HTTP_GET": "http", "SSL_GET": "ssl", "UDP_CHECK": "udp", "DNS_CHECK": "dns",
    "MISC_CHECK": "misc", "PING_CHECK": "ping", "SMTP_CHECK": "smtp",
}  # fmt: skip


def probe_for(kind: str) -> Probe:
    """The probe of a checker kind (``TCP_CHECK``, ``HTTP_GET`` ...); KeyError if none."""
    probe = _PROBES.get(kind)
    if probe is None:
        import importlib

        probe = importlib.import_module(f"checkers.{_MODULES[kind]}").probe
        _PROBES[kind] = probe
    return probe


__all__ = ["Outcome", "Probe", "probe_for"]
