"""Run one ipvsadm invocation against an emulated IPVS table and write what the
real ipvsadm 1.31 writes (ipvsadm.c ``main``/``process_options``).

:func:`run` is the whole program: parse (:mod:`lvs.ipvsadm.grammar`), then

* usage errors: their text on stderr, their status (2; 255 for popt's);
* ``-h``/``-v``: help or version on stdout, status 0;
* ``-L``/``-l`` (and bare ``ipvsadm``), ``-S``: the listings of
  :mod:`lvs.ipvsadm.listing`; ``-L`` of a service that does not exist prints
  libipvs's "No such service" and exits 1;
* ``-R``: the lines of ``stdin`` (:mod:`lvs.ipvsadm.restore`);
* the table operations (``-A -E -D -C -Z -a -e -d --set --start-daemon
  --stop-daemon``): a refusal of the kernel prints libipvs's sentence
  (``IPVSError.message``) on stderr and gives status 255 (process_options
  returns -1).
"""

from __future__ import annotations

import importlib
import io
from types import ModuleType
from typing import TYPE_CHECKING, TextIO

from ..errors import IPVSError
from .grammar import (
    CMD_ADD,
    CMD_ADDDEST,
    CMD_DEL,
    CMD_DELDEST,
    CMD_EDIT,
    CMD_EDITDEST,
    CMD_FLUSH,
    CMD_HELP,
    CMD_LIST,
    CMD_RESTORE,
    CMD_SAVE,
    CMD_STARTDAEMON,
    CMD_STOPDAEMON,
    CMD_TIMEOUT,
    CMD_VERSION,
    CMD_ZERO,
    TRY_HELP,
    Command,
    Resolver,
    UsageError,
    parse,
)
from .restore import restore_table
from .usage import help_text, version_text

if TYPE_CHECKING:
    from ..ctl import IPVS
    from ..model import ServiceKey

__all__ = ["run"]

#: process_options' -1, as the shell sees it
_FAILED = 255


class _Exit(Exception):
    """ipvsadm called exit(): the whole program (a whole -R run) ends here."""

    def __init__(self, rc: int) -> None:
        super().__init__(rc)
        self.rc = rc


class _Context:
    def __init__(
        self, ipvs: IPVS, now: float, out: TextIO, err: TextIO, resolver: Resolver, stdin: TextIO | str | None
    ) -> None:
        self.ipvs = ipvs
        self.now = now
        self.out = out
        self.err = err
        self.resolver = resolver
        self.stdin = stdin


def run(
    argv: list[str],
    ipvs: IPVS,
    now: float,
    out: TextIO,
    err: TextIO,
    resolver: Resolver,
    stdin: TextIO | str | None = None,
) -> int:
    """Run ``ipvsadm ARGV...`` (``argv`` without the program name) against
    ``ipvs`` at virtual time ``now``; stdout goes to ``out``, stderr to
    ``err``; ``-R`` reads ``stdin`` (a text stream or a string; nothing if
    None).  Returns the exit status.  ``resolver`` resolves names (lvsd's
    reads /etc/hosts and /etc/services only, see :mod:`lvs.ipvsadm.names`)."""
    ctx = _Context(ipvs, now, out, err, resolver, stdin)
    try:
        return _process(list(argv), ctx, reading_stdin=False)
    except _Exit as e:
        return e.rc


def _process(argv: list[str], ctx: _Context, *, reading_stdin: bool) -> int:
    """ipvsadm ``process_options``: 0, or 255 for an error it returns from;
    raises :class:`_Exit` where ipvsadm exits."""
    try:
        cmd = parse(argv, ctx.resolver)
    except UsageError as e:
        ctx.err.write(e.message)
        if e.fatal:
            raise _Exit(e.rc) from None
        return _FAILED
    return _execute(cmd, ctx, reading_stdin=reading_stdin)


def _listing() -> ModuleType:
    """lvs.ipvsadm.listing, imported when first needed."""
    return importlib.import_module("lvs.ipvsadm.listing")


def _execute(cmd: Command, ctx: _Context, *, reading_stdin: bool) -> int:
    kind = cmd.kind
    ipvs = ctx.ipvs
    if kind == CMD_HELP:
        ctx.out.write(help_text())
        raise _Exit(0)
    if kind == CMD_VERSION:
        ctx.out.write(version_text())
        raise _Exit(0)
    if kind == CMD_LIST:
        _list(cmd, ctx)
        return 0
    if kind == CMD_SAVE:
        ctx.out.write(_listing().save_rules(ipvs, numeric=cmd.numeric, sort=True, resolver=ctx.resolver))
        return 0
    if kind == CMD_RESTORE:
        if reading_stdin:  # no -R inside -R
            ctx.err.write(TRY_HELP)
            raise _Exit(255)
        return restore_table(_read_all(ctx.stdin), lambda args: _process(args, ctx, reading_stdin=True))
    try:
        _kernel_call(cmd, ctx)
    except IPVSError as e:
        ctx.err.write(e.message + "\n")
        return _FAILED
    return 0


def _kernel_call(cmd: Command, ctx: _Context) -> None:
    """The libipvs call of a table command (raises IPVSError)."""
    ipvs, now, kind = ctx.ipvs, ctx.now, cmd.kind
    if kind == CMD_FLUSH:
        ipvs.flush(now)
    elif kind == CMD_ADD:
        assert cmd.service is not None
        ipvs.add_service(cmd.service, now)
    elif kind == CMD_EDIT:
        assert cmd.service is not None
        ipvs.edit_service(cmd.service, now)
    elif kind == CMD_DEL:
        assert cmd.key is not None
        ipvs.del_service(cmd.key, now)
    elif kind == CMD_ZERO:
        ipvs.zero(None if cmd.zero_all else cmd.key)
    elif kind == CMD_ADDDEST:
        assert cmd.key is not None and cmd.dest is not None
        ipvs.add_dest(cmd.key, cmd.dest, now)
    elif kind == CMD_EDITDEST:
        assert cmd.key is not None and cmd.dest is not None
        ipvs.edit_dest(cmd.key, cmd.dest, now)
    elif kind == CMD_DELDEST:
        assert cmd.key is not None and cmd.dest is not None
        ipvs.del_dest(cmd.key, cmd.dest.af, cmd.dest.addr, cmd.dest.port, now)
    elif kind == CMD_TIMEOUT:
        assert cmd.timeouts is not None
        ipvs.set_timeouts(*cmd.timeouts)
    elif kind == CMD_STARTDAEMON:
        assert cmd.sync_daemon is not None
        ipvs.start_daemon(cmd.sync_daemon)
    elif kind == CMD_STOPDAEMON:
        ipvs.stop_daemon(cmd.daemon_state)
    else:  # pragma: no cover - every kind is handled above
        raise AssertionError(kind)


def _list(cmd: Command, ctx: _Context) -> None:
    """ipvsadm's LIST: connections, one service, timeouts, daemons or all."""
    listing = _listing()
    ipvs, now = ctx.ipvs, ctx.now
    if cmd.connection:
        text = listing.list_conns(
            ipvs, now, numeric=cmd.numeric, persistent_conn=cmd.persistent_conn, resolver=ctx.resolver
        )
    elif cmd.key is not None:
        try:
            ipvs.get_service(cmd.key)
        except IPVSError as e:  # list_service: the message, then exit(1)
            ctx.err.write(e.message + "\n")
            raise _Exit(1) from None
        text = _list_services(listing, cmd, ctx, cmd.key)
    elif cmd.timeout:
        text = listing.list_timeouts(ipvs)
    elif cmd.daemon:
        text = listing.list_daemons(ipvs)
    else:
        text = _list_services(listing, cmd, ctx, None)
    ctx.out.write(text)


def _list_services(listing: ModuleType, cmd: Command, ctx: _Context, key: ServiceKey | None) -> str:
    return listing.list_services(
        ctx.ipvs,
        ctx.now,
        numeric=cmd.numeric,
        stats=cmd.stats,
        rate=cmd.rate,
        exact=cmd.exact,
        thresholds=cmd.thresholds,
        persistent_conn=cmd.persistent_conn,
        tun_info=cmd.tun_info,
        sort=cmd.sort,
        key=key,
        resolver=ctx.resolver,
    )


def _read_all(stdin: TextIO | str | None) -> str:
    if stdin is None:
        return ""
    if isinstance(stdin, str):
        return stdin
    if isinstance(stdin, io.TextIOBase) or hasattr(stdin, "read"):
        return stdin.read()
    return ""
