"""Writing lvsd's state file durably without making every command wait for
its own fsync: a writer thread with group commit.

Each change hands the newest rendering of the state to the writer; the
writer writes it to a temporary file, fsyncs it, renames it over the state
file and fsyncs the directory, so a crash (of lvsd or of the host) leaves the
old file or the new one, never a mix.  Renderings that arrive while a write
is under way are coalesced: the next write carries the newest, and every
command that waited for any of them is answered after it, so concurrent
clients share one fsync.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("lvsd")


def write_atomically(path: str, text: str) -> None:
    """write, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class StateWriter:
    """Group commit of the state file, driven from the event loop.

    :meth:`changed` returns a future done once a rendering that includes the
    change is on disk (its result: None, or the OSError that prevented it).
    One write runs at a time in a worker thread; changes that arrive
    meanwhile wait for the next one, which renders the table once for all of
    them, so a burst of commands costs one rendering and one fsync per
    write, not per command."""

    def __init__(self, path: str, render: Callable[[], str]) -> None:
        self.path = path
        self.render = render
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lvsd-state")
        self._busy = False
        self._pending: list[asyncio.Future[OSError | None]] = []
        self.writes = 0
        self.last_error: OSError | None = None

    def changed(self) -> asyncio.Future[OSError | None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[OSError | None] = loop.create_future()
        self._pending.append(fut)
        if not self._busy:
            self._start(loop)
        return fut

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        try:
            text = self.render()
        except Exception as exc:  # a rendering bug must not stall every later command
            log.exception("cannot render the state")
            for fut in batch:
                fut.set_result(OSError(f"cannot render the state: {exc}"))
            return
        self._busy = True
        job = loop.run_in_executor(self._pool, self._write, text)
        job.add_done_callback(lambda j: self._finished(loop, batch, j))

    def _write(self, text: str) -> OSError | None:
        try:
            write_atomically(self.path, text)
        except OSError as exc:
            return exc
        return None

    def _finished(
        self, loop: asyncio.AbstractEventLoop, batch: list[asyncio.Future[OSError | None]], job: Any
    ) -> None:
        self._busy = False
        error = job.result() if not job.cancelled() else OSError("state write cancelled")
        self.last_error = error
        if error is None:
            self.writes += 1
        for fut in batch:
            if not fut.done():
                fut.set_result(error)
        if self._pending:
            self._start(loop)

    def close(self) -> None:
        """Stop the worker thread (a write under way finishes)."""
        self._pool.shutdown(wait=True)
