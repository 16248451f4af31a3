"""One NAT worker process of ``lvsd --workers N`` (``python -m
forwarding.nat_worker FD INDEX N``): a core of its own fed by the main
process over the socketpair FD (:mod:`forwarding.nat_pool`), a
:class:`~forwarding.nat.NatPlane` whose listeners share each address with the
other workers (SO_REUSEPORT), and a report of its counters every ``REPORT``
seconds or when asked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from lvs.conn import conn_row
from lvs.core import Director
from lvs.ctl import IPVS
from lvs.errors import IPVSError
from lvs.model import ServiceKey
from lvs.replication import DestKey, apply_environment, apply_service, dest_report

from .nat import NatPlane
from .nat_pool import LOG_FILE_ENV, LOG_LEVEL_ENV

log = logging.getLogger("lvsd.workers")

#: seconds between two counter reports of a worker
REPORT = 0.5


class Worker:
    """The worker process's state: its core, its plane, its link to the main process."""

    def __init__(self, sock: socket.socket, index: int, n: int) -> None:
        self.sock = sock
        self.index = index
        self.n = n
        self.t0 = time.monotonic()
        self.ipvs = IPVS()
        self.director = Director(self.ipvs, table_seed=int.from_bytes(os.urandom(8), "little"))
        self.director.reset_clock(self.now())
        self.plane: NatPlane | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._last: dict[DestKey, tuple[int, ...]] = {}
        self.stop = asyncio.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        now = self.now()
        if op == "options":
            if self.plane is None:
                pp = {(h, p): v for h, p, v in msg.get("proxy_protocol", [])}
                self.plane = NatPlane(
                    self.director,
                    self.now,
                    manage_vips=False,
                    proxy_protocol=pp,
                    transparent=bool(msg.get("transparent")),
                    connect_timeout=float(msg.get("connect_timeout", 5.0)),
                    reuse_port=self.n,
                )
                self.plane.start()
        elif op == "svc":
            try:
                apply_service(self.ipvs, msg["svc"], now)
            except IPVSError as exc:
                log.warning("worker %d: cannot apply %s: %s", self.index, msg["svc"]["key"], exc)
        elif op == "del":
            key = ServiceKey(*msg["key"])
            if self.ipvs.get(key) is not None:
                self.ipvs.del_service(key, now)
        elif op == "env":
            apply_environment(self.ipvs, msg)
        elif op == "query":
            # an answer at once: the counters so far, and the entries if asked
            reply = self.report()
            reply["id"] = msg.get("id")
            if msg.get("conns"):
                reply["conns"] = [conn_row(cp, now) for cp in self.director.conns]
            self.send(reply)
        elif op == "stop":
            self.stop.set()

    def send(self, msg: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def report(self) -> dict[str, Any]:
        dests, self._last = dest_report(self.ipvs, self._last)
        return {
            "op": "report",
            "dests": dests,
            "entries": len(self.director.conns),
            "plane": self.plane.describe() if self.plane else "",
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_unix_connection(sock=self.sock)
        self.writer = writer
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)

        async def read() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    break
                self.handle(json.loads(line))
            self.stop.set()

        async def tick() -> None:
            next_report = self.now() + REPORT
            while True:
                more = self.director.tick(self.now(), 20000)
                if self.now() >= next_report:
                    next_report = self.now() + REPORT
                    self.send(self.report())
                await asyncio.sleep(0 if more else 0.25)

        tasks = [asyncio.ensure_future(read()), asyncio.ensure_future(tick())]
        await self.stop.wait()
        for t in tasks:
            t.cancel()
        if self.plane is not None:
            await self.plane.close()
        with contextlib.suppress(Exception):
            writer.close()


def worker_main(argv: list[str]) -> int:
    fd, index, n = int(argv[0]), int(argv[1]), int(argv[2])
    logging.basicConfig(
        level=getattr(logging, os.environ.get(LOG_LEVEL_ENV, "warning").upper(), logging.WARNING),
        filename=os.environ.get(LOG_FILE_ENV) or None,
        format=f"%(asctime)s lvsd-worker{index}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    sock = socket.socket(fileno=fd)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(Worker(sock, index, n).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
