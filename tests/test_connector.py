"""forwarding.connector.Connect: a connect coroutine driven without a Task
reports success, failure and cancellation exactly once, over real sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from forwarding.connector import Connect


def _run(coro_fn):  # type: ignore[no-untyped-def]
    return uvloop.run(asyncio.wait_for(coro_fn(), 10))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connect_success_reports_transport_once() -> None:
    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        got: list[object] = []
        done = loop.create_future()

        def on_done(result: object, exc: BaseException | None) -> None:
            got.append((result, exc))
            done.set_result(None)

        c = Connect(loop.create_connection(asyncio.Protocol, "127.0.0.1", port), on_done)
        await done
        assert c.done
        c.cancel()  # after the outcome: nothing more is reported
        await asyncio.sleep(0.05)
        transport, _ = got[0][0]  # type: ignore[index,misc]
        assert transport.get_extra_info("peername")[1] == port
        transport.close()
        server.close()
        return got

    got = _run(main)
    assert len(got) == 1 and got[0][1] is None  # type: ignore[index]


def test_connect_refused_reports_the_error() -> None:
    port = _free_port()

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        got: list[object] = []
        done = loop.create_future()
        Connect(
            loop.create_connection(asyncio.Protocol, "127.0.0.1", port),
            lambda r, e: (got.append((r, e)), done.set_result(None)),
        )
        await done
        await asyncio.sleep(0.05)
        return got

    got = _run(main)
    assert len(got) == 1
    result, exc = got[0]  # type: ignore[misc]
    assert result is None and isinstance(exc, ConnectionRefusedError)


def test_cancel_closes_the_pending_socket_and_reports_cancelled() -> None:
    """A connect that never completes (a never-done future stands for a real
    server that drops SYNs) is abandoned by cancel(): the coroutine is closed
    (its cleanup runs, the awaited future is cancelled) and the outcome is
    reported once, as CancelledError."""

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[None] = loop.create_future()
        closed: list[bool] = []

        async def slow_connect() -> str:
            try:
                await never
            finally:
                closed.append(True)
            return "unreachable"

        got: list[object] = []
        c = Connect(slow_connect(), lambda r, e: got.append((r, e)))
        assert not c.done and not got
        c.cancel()
        c.cancel()
        await asyncio.sleep(0.01)
        assert closed == [True] and never.cancelled()
        return got

    got = _run(main)
    assert len(got) == 1
    assert got[0][0] is None and isinstance(got[0][1], asyncio.CancelledError)  # type: ignore[index]


def test_a_coroutine_that_yields_no_future_is_refused() -> None:
    class Bare:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield None

    async def odd() -> None:
        await Bare()

    async def main() -> list[object]:
        got: list[object] = []
        Connect(odd(), lambda r, e: got.append((r, e)))
        return got

    got = _run(main)
    assert len(got) == 1 and isinstance(got[0][1], RuntimeError)  # type: ignore[index]


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
