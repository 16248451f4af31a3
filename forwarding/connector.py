"""Run one connect coroutine without an :class:`asyncio.Task`.

Every relayed TCP connection opens one connection to its real server with
``loop.create_connection``, which is a coroutine.  Wrapping it in a Task
costs, per connection, the Task object, its registration in asyncio's
global weak set of tasks, a ``call_soon`` for its first step and another
for its done callbacks.  For a coroutine that awaits only plain futures (as
``create_connection`` to a numeric address does: it waits for the socket to
become writable) none of that is needed: this driver sends into the
coroutine whenever the future it waits on completes and calls ``on_done``
with the outcome, in the same loop iteration.

It is not a general Task replacement: no contextvars copy, no
``asyncio.current_task()`` inside the coroutine, no awaiting of other tasks'
cancellation.  ``cancel()`` closes the coroutine (``GeneratorExit`` at its
await point), which makes ``create_connection`` close the half-open socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

#: outcome handler: (result, exception); exactly one of them is not None
#: (``asyncio.CancelledError`` for a cancelled connect)
OnDone = Callable[[Any, BaseException | None], None]


class Connect:
    """Drive ``coro`` to completion and report to ``on_done`` once."""

    __slots__ = ("_coro", "_on_done", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any], on_done: OnDone) -> None:
        self._coro: Coroutine[Any, Any, Any] | None = coro
        self._on_done = on_done
        self._waiting: asyncio.Future[Any] | None = None
        self._step(None)

    @property
    def done(self) -> bool:
        return self._coro is None

    def _step(self, _fut: object) -> None:
        coro = self._coro
        if coro is None:
            return
        self._waiting = None
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            self._finish(stop.value, None)
            return
        except BaseException as exc:  # handed to on_done, as a Task would
            self._finish(None, exc)
            return
        if getattr(awaited, "_asyncio_future_blocking", None) is None:
            # a bare ``yield`` or something that is not a future: not a
            # coroutine this driver can run
            coro.close()
            self._finish(None, RuntimeError(f"Connect cannot await {awaited!r}"))
            return
        awaited._asyncio_future_blocking = False
        self._waiting = awaited
        awaited.add_done_callback(self._step)

    def _finish(self, result: Any, exc: BaseException | None) -> None:
        self._coro = None
        on_done = self._on_done
        self._on_done = _ignore
        on_done(result, exc)

    def cancel(self) -> None:
        """Abandon the connect: the coroutine is closed (its socket with it)
        and ``on_done`` gets ``asyncio.CancelledError``."""
        coro = self._coro
        if coro is None:
            return
        waiting = self._waiting
        if waiting is not None:
            waiting.remove_done_callback(self._step)
            waiting.cancel()
            self._waiting = None
        with contextlib.suppress(RuntimeError):
            coro.close()
        self._finish(None, asyncio.CancelledError())


def _ignore(result: Any, exc: BaseException | None) -> None:
    """After the outcome was reported, nothing more is."""


__all__ = ["Connect", "OnDone"]
