"""Where an lvsd listens: an abstract unix socket, which is private to the
network namespace it was bound in, like the kernel's per-namespace IPVS."""

from __future__ import annotations

import os

DEFAULT_NAME = "pylvs"


def socket_name() -> str:
    """The abstract socket name (``LVSD_SOCKET`` overrides it, for tests)."""
    return os.environ.get("LVSD_SOCKET", DEFAULT_NAME)


def socket_address(name: str | None = None) -> str:
    """The address for ``AF_UNIX``: a leading NUL makes it abstract."""
    name = name or socket_name()
    if name.startswith("/"):
        return name  # a filesystem path, for hosts that want one
    return "\0" + name + ".ctl"
