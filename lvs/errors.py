"""Errors of the emulated kernel and how ipvsadm words them.

The kernel answers an admin operation with an errno; libipvs turns the pair
(operation, errno) into a sentence (``ipvs_strerror`` in libipvs.c).  pylvs
keeps both: :class:`IPVSError` carries the errno and the operation, and
:func:`strerror` gives ipvsadm's words.
"""

from __future__ import annotations

import errno
import os

# Operations, named after the libipvs functions they stand for.
OP_ADD_SERVICE = "add_service"
OP_EDIT_SERVICE = "update_service"
OP_DEL_SERVICE = "del_service"
OP_ZERO_SERVICE = "zero_service"
OP_ADD_DEST = "add_dest"
OP_EDIT_DEST = "update_dest"
OP_DEL_DEST = "del_dest"
OP_START_DAEMON = "start_daemon"
OP_STOP_DAEMON = "stop_daemon"
OP_GET_SERVICE = "get_service"
OP_GET_SERVICES = "get_services"
OP_GET_DESTS = "get_dests"
OP_SET_TIMEOUT = "set_timeout"
OP_FLUSH = "flush"

_MESSAGES: list[tuple[str | None, int, str]] = [
    (OP_ADD_SERVICE, errno.EEXIST, "Service already exists"),
    (OP_ADD_SERVICE, errno.ENOENT, "Scheduler or persistence engine not found"),
    (OP_EDIT_SERVICE, errno.ESRCH, "No such service"),
    (OP_EDIT_SERVICE, errno.ENOENT, "Scheduler or persistence engine not found"),
    (OP_DEL_SERVICE, errno.ESRCH, "No such service"),
    (OP_ZERO_SERVICE, errno.ESRCH, "No such service"),
    (OP_ADD_DEST, errno.ESRCH, "Service not defined"),
    (OP_ADD_DEST, errno.EEXIST, "Destination already exists"),
    (OP_EDIT_DEST, errno.ESRCH, "Service not defined"),
    (OP_EDIT_DEST, errno.ENOENT, "No such destination"),
    (OP_DEL_DEST, errno.ESRCH, "Service not defined"),
    (OP_DEL_DEST, errno.ENOENT, "No such destination"),
    (OP_START_DAEMON, errno.EEXIST, "Daemon has already run"),
    (OP_STOP_DAEMON, errno.ESRCH, "No daemon is running"),
    (OP_GET_SERVICES, errno.ESRCH, "No such service"),
    (OP_GET_DESTS, errno.ESRCH, "No such service"),
    (OP_GET_SERVICE, errno.ESRCH, "No such service"),
    (None, errno.EPERM, "Permission denied (you must be root)"),
    (None, errno.EINVAL, "Invalid operation.  Possibly wrong module version, address not unicast, ..."),
    (None, errno.ENOPROTOOPT, "Protocol not available"),
    (None, errno.ENOMEM, "Memory allocation problem"),
    (None, errno.EOPNOTSUPP, "Operation not supported with IPv6"),
    (None, errno.EAFNOSUPPORT, "Operation not supported with specified address family"),
    (None, errno.EMSGSIZE, "Module is wrong version"),
]


def strerror(op: str | None, err: int) -> str:
    """ipvsadm's sentence for an errno returned by operation ``op``."""
    for func, code, message in _MESSAGES:
        if (func is None or func == op) and code == err:
            return message
    return os.strerror(err)


class IPVSError(Exception):
    """An admin operation refused by the emulated kernel (an errno)."""

    def __init__(self, op: str, err: int, detail: str = "") -> None:
        self.op = op
        self.errno = err
        self.detail = detail
        super().__init__(strerror(op, err))

    @property
    def message(self) -> str:
        return strerror(self.op, self.errno)
