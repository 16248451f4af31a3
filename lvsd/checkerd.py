"""lvsd's checker process: the probes of a health-checked configuration, out
of lvsd's event loop (keepalived runs its checkers in a child process too).

Reads JSON lines on stdin from lvsd: ``{"op": "load"|"reload", "path",
"yaml", "gen", "files": {path: text}}``.  It parses the same texts lvsd
parsed, keeps its own copy of the table (never the real one), runs every
checker with :class:`lvs.health.HealthMonitor`'s retries and delays, and
writes to stdout one JSON line each time a checker changes state
(``{"gen", "ident", "ok", "reason", "exit_code"}``) and, once a second, the
probe counters (``{"op": "stats", ...}``).  It exits when lvsd goes (stdin
closes)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

from lvs.ctl import IPVS

from .healthd import HealthRunner

log = logging.getLogger("lvsd.checkerd")


class Checkerd:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.runner: HealthRunner | None = None
        self.out = sys.stdout.buffer

    def now(self) -> float:
        return time.monotonic() - self.t0

    def emit(self, msg: dict[str, Any]) -> None:
        self.out.write((json.dumps(msg) + "\n").encode())
        self.out.flush()

    def handle(self, msg: dict[str, Any]) -> None:
        files = {str(k): str(v) for k, v in (msg.get("files") or {}).items()}
        if msg.get("op") == "load" or self.runner is None:
            self.runner = HealthRunner(IPVS(), self.now, str(msg["path"]), yaml=bool(msg.get("yaml")))
            self.runner.report = False
            self.runner.emit = self.emit
            self.runner.load(files)
            self.runner.generation = int(msg.get("gen", 0))
            self.runner.start()
        elif msg.get("op") == "reload":
            self.runner.reload(files)
            self.runner.generation = int(msg.get("gen", 0))

    async def stats(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            runner = self.runner
            if runner is not None:
                self.emit({"op": "stats", "gen": runner.generation, "probes": runner.probes_run,
                           "stats": {str(k): v for k, v in runner.check_stats.items()}})  # fmt: skip

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 26)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        ticker = asyncio.create_task(self.stats())
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return  # lvsd went away
                try:
                    self.handle(json.loads(line))
                except Exception:  # a bad message must not take the checkers down
                    log.exception("checker process: cannot handle a message")
        finally:
            ticker.cancel()
            if self.runner is not None:
                await self.runner.close()


def main() -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s lvsd-checker[%(process)d] %(levelname)s %(message)s"
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(Checkerd().run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
