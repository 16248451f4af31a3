"""``lvsd --procfs DIR``: the kernel's /proc/net/ip_vs and ip_vs_stats as files.

node_exporter's IPVS collector reads only ``<procfs>/net/ip_vs`` and
``<procfs>/net/ip_vs_stats`` (procfs's ipvs.go), so an unmodified
``prometheus-node-exporter --path.procfs DIR`` reports pylvs's table when
lvsd keeps those two files, in the kernel's format
(:mod:`lvs.ipvsadm.proc`), fresh: they are rewritten every
:data:`PERIOD` seconds (and at start and stop), each through a temporary
file and ``rename`` so a reader never sees half a file.  The table is
rendered a few services at a time with the loop let run between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from lvs.ipvsadm import proc

log = logging.getLogger("lvsd.procfs")

PERIOD = 1.0  # seconds between two rewrites
PIECES_PER_STEP = 200  # services rendered before the loop runs again


class ProcfsWriter:
    def __init__(self, daemon: Any, root: str, period: float = PERIOD) -> None:
        self.daemon = daemon
        self.root = root
        self.dir = os.path.join(root, "net")
        self.period = period
        self.task: asyncio.Task[None] | None = None
        self.writes = 0
        self.error: str | None = None

    def start(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        self.task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None
        with contextlib.suppress(OSError):
            await self.write_once()

    async def _run(self) -> None:
        while True:
            try:
                await self.write_once()
                self.error = None
            except OSError as exc:
                if self.error != str(exc):
                    log.error("writing %s: %s", self.dir, exc)
                self.error = str(exc)
            await asyncio.sleep(self.period)

    async def write_once(self) -> None:
        pool = self.daemon.worker_pool()
        if pool is not None:
            await pool.query(False)
        ipvs = self.daemon.ipvs
        pieces: list[str] = []
        for count, piece in enumerate(proc.proc_ip_vs_pieces(ipvs), 1):
            pieces.append(piece)
            if count % PIECES_PER_STEP == 0:
                await asyncio.sleep(0)
        self._replace("ip_vs", "".join(pieces))
        self._replace("ip_vs_stats", proc.proc_ip_vs_stats(ipvs))
        self.writes += 1

    def _replace(self, name: str, text: str) -> None:
        path = os.path.join(self.dir, name)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(text)
        os.replace(tmp, path)
