"""SSL_GET (check_ssl.c): HTTP_GET over TLS.  As keepalived without an SSL
block's ``ca``, the server's certificate is not verified (a self-signed one
passes); a failed handshake fails the check.  ``enable_sni`` sends the
virtualhost (or the address) as the TLS server name."""

from __future__ import annotations

import ssl
from typing import Any

from .base import Outcome, timed
from .http import _attempt


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def probe(chk: Any) -> Outcome:
    opts = chk.conf.options
    sni = None
    if opts.get("enable_sni"):
        urls = opts.get("urls") or [{}]
        sni = urls[0].get("virtualhost") or opts.get("virtualhost") or chk.target().rsplit(":", 1)[0]
    try:
        return await timed(chk, _attempt(chk, client_context(), sni))
    except ssl.SSLError as exc:
        return Outcome(False, f"SSL handshake/read failed: {exc.reason or exc}")
