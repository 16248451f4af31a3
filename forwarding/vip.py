"""Virtual addresses on ``lo``: make a VIP that no interface has reachable.

The kernel's IPVS catches packets for a virtual address whatever the address
is; a userspace proxy only sees traffic the local stack delivers.  So when a
served service's address is not local, lvsd adds it to ``lo`` as a host
route (/32 or /128) through rtnetlink (pyroute2) and removes it when the last
service using it goes.  Only addresses this manager added are ever removed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("lvsd.vip")

#: more queued changes than this go to ``ip -batch`` in one process
BATCH_MIN = 8


def is_local(af: int, host: str) -> bool:
    """True if ``host`` is an address of this network namespace (binding to
    it works without IP_FREEBIND)."""
    s = socket.socket(af, socket.SOCK_DGRAM)
    try:
        s.bind((host, 0))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return False
        raise
    finally:
        s.close()
    return True


class VipManager:
    """Reference-counted VIPs on ``lo``.

    ``acquire`` is called once per served service, ``release`` when the
    service stops being served.  With ``enabled=False`` nothing is added and
    a warning tells that traffic for a non-local VIP cannot arrive.
    """

    def __init__(self, enabled: bool = True, ifname: str = "lo") -> None:
        self.enabled = enabled
        self.ifname = ifname
        #: (af, host) -> number of services using it
        self._users: dict[tuple[int, str], int] = {}
        #: addresses this manager added to the interface
        self.added: set[tuple[int, str]] = set()
        self._ipr: Any = None
        #: (op, af, host) waiting for flush()
        self._pending: list[tuple[str, int, str]] = []
        #: pyroute2's synchronous API runs an event loop of its own: it gets a
        #: thread, so it never meets lvsd's running loop
        self._pool: ThreadPoolExecutor | None = None

    def _netlink(self, op: str, af: int, host: str) -> None:
        """``ip addr {add|del} HOST/32 dev IFNAME`` through pyroute2, in its thread."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="lvsd-vip")
        self._pool.submit(self._netlink_sync, op, af, host).result(timeout=10)

    def _netlink_sync(self, op: str, af: int, host: str) -> None:
        if self._ipr is None:
            import asyncio

            from pyroute2 import IPRoute

            # a standard selector loop: uvloop (installed by lvsd) cannot
            # open AF_NETLINK datagram endpoints
            self._ipr = IPRoute(use_event_loop=asyncio.SelectorEventLoop())
        index = self._ipr.link_lookup(ifname=self.ifname)[0]
        self._ipr.addr(op, index=index, address=host, prefixlen=32 if af == socket.AF_INET else 128)

    def acquire(self, af: int, host: str) -> str | None:
        """Count one more user of the address; add it to ``lo`` if it is not
        local.  Returns a warning text, or None."""
        key = (af, host)
        n = self._users.get(key, 0)
        self._users[key] = n + 1
        if n or key in self.added:
            return None
        if host in ("0.0.0.0", "::"):
            return None
        try:
            if is_local(af, host):
                return None
        except OSError as exc:
            return f"cannot check whether {host} is local: {exc}"
        if not self.enabled:
            return f"VIP {host} is not local and VIP management is off (--no-vip): no traffic can reach it"
        # added in a batch by flush(), which lvsd runs before it answers the
        # command that created the service
        self._queue("add", af, host)
        self.added.add(key)
        return None

    def release(self, af: int, host: str) -> None:
        """One user fewer; the last one removes an address this manager added."""
        key = (af, host)
        n = self._users.get(key, 0) - 1
        if n > 0:
            self._users[key] = n
            return
        self._users.pop(key, None)
        if key in self.added:
            self._remove(key)

    def _remove(self, key: tuple[int, str]) -> None:
        af, host = key
        self.added.discard(key)
        self._queue("del", af, host)

    def _queue(self, op: str, af: int, host: str) -> None:
        """Queue a change; without an explicit flush() it is applied as soon
        as the event loop gets control (at once outside a loop)."""
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self._pending.append((op, af, host))
                self.flush()
                return
        self._pending.append((op, af, host))

    def flush(self) -> list[str]:
        """Apply the queued additions and removals; returns warnings.

        Many at once (an ``ipvsadm -R`` of thousands of services) go to
        ``ip -batch`` in one process, about 0.1 ms an address; a few go
        through pyroute2, about 0.4 ms each plus a thread hand-off."""
        ops, self._pending = self._pending, []
        if not ops:
            return []
        if len(ops) > BATCH_MIN and shutil.which("ip"):
            return self._flush_batch(ops)
        warnings = []
        for op, af, host in ops:
            try:
                self._netlink(op, af, host)
                log.info("%s VIP %s %s %s", "added" if op == "add" else "removed", host,
                         "to" if op == "add" else "from", self.ifname)  # fmt: skip
            except Exception as exc:  # pyroute2 raises NetlinkError and others
                code = getattr(exc, "code", None)
                if (op, code) in (("add", errno.EEXIST), ("del", errno.EADDRNOTAVAIL)):
                    continue
                warnings.append(f"cannot {op} VIP {host} on {self.ifname}: {exc}")
                if op == "add":
                    self.added.discard((af, host))
        for w in warnings:
            log.warning("%s", w)
        return warnings

    def _flush_batch(self, ops: list[tuple[str, int, str]]) -> list[str]:
        lines = "".join(
            f"addr {op} {host}/{32 if af == socket.AF_INET else 128} dev {self.ifname}\n"
            for op, af, host in ops
        )
        proc = subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input=lines,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        problems = [
            line for line in proc.stderr.splitlines()
            if line.strip() and "File exists" not in line and "Cannot assign requested address" not in line
            and not line.startswith("Command failed")
        ]  # fmt: skip
        log.info("VIPs on %s: %d changes in one batch", self.ifname, len(ops))
        return [f"ip -batch on {self.ifname}: {p}" for p in problems[:10]]

    @classmethod
    def remove_left_over(cls, vips: list[tuple[int, str]], ifname: str = "lo") -> list[str]:
        """Remove addresses a dead lvsd added and never removed (its state
        file lists them); returns warnings.  Absent ones are no error."""
        manager = cls(True, ifname)
        for af, host in vips:
            manager._queue("del", af, host)
        warnings = manager.flush()
        manager.close()
        return warnings

    def adopt(self, vips: list[tuple[int, str]]) -> None:
        """Take over addresses a predecessor added (hitless restart): they
        stay on ``lo`` and are removed by this manager when unused."""
        for key in vips:
            self.added.add((int(key[0]), str(key[1])))

    def close(self, keep: bool = False) -> None:
        """Remove every address this manager added (``keep``: leave them to
        a successor)."""
        if keep:
            self.added.clear()
        for key in list(self.added):
            self._remove(key)
        self.flush()
        self._users.clear()
        if self._pool is not None:
            if self._ipr is not None:
                self._pool.submit(self._ipr.close).result(timeout=10)
                self._ipr = None
            self._pool.shutdown(wait=True)
            self._pool = None
