"""The resolver over the host's real ``/etc/hosts`` and ``/etc/services``
(the lookups themselves are ``lvs.ipvsadm.names``)."""

from __future__ import annotations

import os

from lvs.ipvsadm.names import FilesResolver

_default: FilesResolver | None = None


def read_text(path: str | None) -> str:
    """A names file's text; a missing or unreadable file knows no names."""
    if path is None:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def files_resolver(
    hosts_path: str | None = "/etc/hosts", services_path: str | None = "/etc/services"
) -> FilesResolver:
    """A resolver over these files, each read on first use."""
    return FilesResolver(lambda: read_text(hosts_path), lambda: read_text(services_path))


def default_resolver() -> FilesResolver:
    """The process-wide resolver over the real ``/etc/hosts`` and ``/etc/services``.

    ``PYLVS_HOSTS`` and ``PYLVS_SERVICES`` in the environment point it elsewhere.
    """
    global _default
    if _default is None:
        _default = files_resolver(
            os.environ.get("PYLVS_HOSTS", "/etc/hosts"),
            os.environ.get("PYLVS_SERVICES", "/etc/services"),
        )
    return _default
