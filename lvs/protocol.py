"""The control protocol between ``lvsadm`` and ``lvsd``: JSON lines.

Pure: message shapes and their validation, no sockets.  Every request is one
JSON object on one line, every reply too, matched by ``id``.  See
docs/protocol.md for the list of operations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: the largest request line lvsd accepts (an ipvsadm -R of 10,000 services is
#: about 1 MB; restore streams in chunks below this)
MAX_MESSAGE = 16 * 1024 * 1024

OPS = (
    "ipvsadm",  # argv, optional stdin -> rc, stdout, stderr
    "status",  # -> daemon facts: pid, netns, services, data planes, warnings
    "json",  # what: services|conns|stats -> data
    "proc",  # name: ip_vs|ip_vs_conn|ip_vs_conn_sync|ip_vs_stats -> text
    "reload",  # re-read the YAML config and apply the difference
    "sysctl",  # name, value? -> value, text (as /proc/sys shows it)
    "drain",  # service (argv), server, timeout? -> progress; or status: true -> progress of that drain
    "shutdown",  # -> pid; lvsd then stops as on SIGTERM
    "ping",
    "restart",  # hitless restart: a new lvsd inherits the sockets -> old_pid, new_pid
)


class ProtocolError(ValueError):
    """A request that is not a well-formed message."""


@dataclass
class Request:
    id: int
    op: str
    args: dict[str, Any]
    #: (pid, uid) of the process that sent it (SO_PEERCRED), for the log
    peer: tuple[int, int] | None = None


def encode(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def decode_request(line: bytes) -> Request:
    """Parse one request line; raises ProtocolError with a plain reason."""
    if len(line) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("not a JSON message") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message must be a JSON object")
    op = obj.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown operation {op!r}")
    rid = obj.get("id", 0)
    if not isinstance(rid, int):
        raise ProtocolError("id must be an integer")
    args = {k: v for k, v in obj.items() if k not in ("op", "id")}
    if op == "ipvsadm":
        argv = args.get("argv")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ProtocolError("argv must be a list of strings")
        stdin = args.get("stdin", "")
        if not isinstance(stdin, str):
            raise ProtocolError("stdin must be a string")
    if op == "sysctl":
        name = args.get("name")
        if not isinstance(name, str):
            raise ProtocolError("name must be a string")
    return Request(rid, op, args)


def error_reply(rid: int, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": message}
