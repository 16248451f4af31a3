"""MISC_CHECK (check_misc.c): run ``misc_path`` (split into arguments as
keepalived does: quotes and backslash escapes, no shell) in its own process group.  Exit 0: up; exit 1:
down; 2-255: down, or with ``misc_dynamic`` up with weight status - 2 (the
policy applies that).  A script still running at ``misc_timeout`` (default:
the delay loop) gets SIGTERM, and SIGKILL two seconds later; that attempt
fails.  ``user USER [GROUP]`` runs it as that user."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from lvs.keepalived_conf import split_command

from .base import Outcome

TERM_GRACE = 2.0


def _primary_group(user: str) -> str:
    import grp
    import pwd

    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def probe(chk: Any) -> Outcome:
    opts = chk.conf.options
    argv = split_command(opts["misc_path"])
    if not argv:
        return Outcome(False, "misc_path is empty or has an unterminated quote")
    timeout = opts.get("misc_timeout") or chk.delay_loop
    ids: dict[str, str] = {}
    if opts.get("user"):  # keepalived's "user USER [GROUP]": the script runs as them
        ids["user"] = opts["user"]
        ids["group"] = opts.get("group") or _primary_group(opts["user"])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            **ids,  # type: ignore[arg-type]
        )
    except (OSError, KeyError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else f"unknown user or group ({exc})"
        return Outcome(False, f"cannot run {argv[0] if argv else '(empty)'}: {why}")
    try:
        status = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), TERM_GRACE)
        except TimeoutError:
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        return Outcome(False, f"timed out after {timeout:g} s, killed")
    except asyncio.CancelledError:
        _kill_group(proc.pid, signal.SIGKILL)
        raise
    _kill_group(proc.pid, signal.SIGKILL)  # what it left behind in its group goes too
    if status < 0:
        return Outcome(False, f"killed by signal {-status}")
    if status == 0:
        return Outcome(True, exit_code=0)
    return Outcome(False, f"exited with status {status}", exit_code=status)
