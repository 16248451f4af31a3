"""The sync daemon's sockets (ip_vs_sync.c ``make_send_sock`` /
``make_receive_sock`` and the master and backup threads), for one lvsd.

``ipvsadm --start-daemon master|backup`` reaches :meth:`SyncDaemons.start`
through the IPVS's daemon hook, so a refusal (unknown interface, a daemon
already running) is the command's error, as the kernel's is.  The codec and
the rules of what is sent when are pure, in :mod:`lvs.sync`; this module
only moves datagrams:

* master: a UDP socket per thread (``sync_ports``), multicast out of
  ``--mcast-interface`` (IP_MULTICAST_IF by index), loop off, TTL
  ``--mcast-ttl`` (1), fragmentation allowed (IP_PMTUDISC_DONT), bound to
  the interface's IPv4 address, connected to group:port+id (224.0.0.81:8848).
  Every 20 ms the datagrams the :class:`~lvs.sync.SyncMaster` has ready
  (full buffers, and buffers 2 s old) are sent.
* backup: a socket per thread bound to group:port+id on the interface
  (SO_BINDTODEVICE, SO_REUSEADDR), member of the group there; every datagram
  is decoded with the backup's syncid and applied through
  :meth:`lvs.core.Director.sync_apply`.  Drops are counted by reason
  (:attr:`SyncDaemons.counters`), never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from lvs.core import Director
from lvs.ctl import SyncDaemon
from lvs.errors import OP_START_DAEMON, IPVSError
from lvs.sync import (
    IPV4_UDP_HEADERS,
    IPV6_UDP_HEADERS,
    SYNC_GROUP,
    SYNC_PORT,
    SyncMaster,
    SyncParams,
    decode_message,
)

log = logging.getLogger("lvsd.sync")

#: how often the master looks for datagrams to send (the kernel wakes its
#: thread IPVS_SYNC_SEND_DELAY = HZ/50 after the first queued buffer)
SEND_PERIOD = 0.02
#: receive buffer of a backup socket: a burst of a busy master must not
#: overflow the default ~200 KB while Python applies the previous one
BACKUP_RCVBUF = 4 << 20
#: datagrams read per wake-up before yielding to the rest of lvsd
READ_BUDGET = 256
IPVS_SYNC_PORTS_MAX = 1 << 6
SIOCGIFADDR = 0x8915
SIOCGIFMTU = 0x8921
IP_PMTUDISC_DONT = 0
IP_MTU_DISCOVER = 10  # linux/in.h (the socket module does not name it)
SO_RCVBUFFORCE = 33  # asm-generic/socket.h


def _ifreq(sock: socket.socket, ifname: str, request: int) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", ifname.encode()[:15]))


def interface_facts(ifname: str) -> tuple[int, int, str]:
    """(ifindex, MTU, first IPv4 address or '') of ``ifname``; raises
    IPVSError ENODEV when there is no such interface."""
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        raise IPVSError(OP_START_DAEMON, errno.ENODEV, f"Unknown mcast interface: {ifname}") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        mtu = struct.unpack_from("i", _ifreq(s, ifname, SIOCGIFMTU), 16)[0]
        try:
            addr = socket.inet_ntoa(_ifreq(s, ifname, SIOCGIFADDR)[20:24])
        except OSError:
            addr = ""
    return index, mtu, addr


def sync_params(sysctl: Any) -> SyncParams:
    """The send rules' knobs from the namespace's sysctls."""
    return SyncParams(
        threshold=sysctl.sync_threshold,
        period=sysctl.sync_period,
        refresh_period=float(sysctl.sync_refresh_period),
        retries=min(sysctl.sync_retries, 3),
        persist_mode=sysctl.sync_persist_mode,
        version=sysctl.sync_version,
    )


class _Running:
    """One started daemon: its config, sockets and (backup) readers."""

    def __init__(
        self, cfg: SyncDaemon, socks: list[socket.socket], group: str, port: int, maxlen: int
    ) -> None:
        self.cfg = cfg
        self.socks = socks
        self.group = group
        self.port = port
        self.maxlen = maxlen
        self.readers = False


class SyncDaemons:
    """The master and backup sync daemons of one lvsd."""

    def __init__(self, director: Director, now: Callable[[], float]) -> None:
        self.director = director
        self.now = now
        self.running: dict[str, _Running] = {}
        self.threads = 1
        #: received, applied, sent, and every drop or skip by reason
        self.counters: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        director.ipvs.daemon_hook = self.hook  # type: ignore[attr-defined]

    # -- start / stop (from ipvsadm through IPVS.start_daemon/stop_daemon) ----------
    def hook(self, action: str, cfg: SyncDaemon) -> None:
        if action == "start":
            self.start(cfg)
        else:
            self.stop(cfg.state)

    def start(self, cfg: SyncDaemon) -> None:
        """``start_sync_thread``: resolve the interface, fill in the defaults
        (group, port, TTL, maxlen), open the sockets; IPVSError on failure."""
        if cfg.state in self.running:
            raise IPVSError(OP_START_DAEMON, errno.EEXIST)
        if not self.running:
            self.threads = max(1, min(self.director.ipvs.sysctl.sync_ports, IPVS_SYNC_PORTS_MAX))
        index, mtu, ifaddr = interface_facts(cfg.mcast_ifn)
        group = cfg.mcast_group or SYNC_GROUP
        v6 = ":" in group
        hlen = IPV6_UDP_HEADERS if v6 else IPV4_UDP_HEADERS
        backup = cfg.state == "backup"
        if cfg.sync_maxlen:
            maxlen = min(max(cfg.sync_maxlen, 1024 if backup else 1), 65535 - hlen)
        else:
            maxlen = (min(max(mtu, 1500), 65535) if backup else 1500) - hlen
        port = cfg.mcast_port or SYNC_PORT
        socks: list[socket.socket] = []
        try:
            for tid in range(self.threads):
                if backup:
                    socks.append(self._receive_sock(cfg.mcast_ifn, index, group, port + tid))
                else:
                    socks.append(self._send_sock(index, ifaddr, group, port + tid, cfg.mcast_ttl or 1))
        except OSError as exc:
            for s in socks:
                s.close()
            raise IPVSError(OP_START_DAEMON, exc.errno or errno.EINVAL, str(exc)) from None
        run = _Running(cfg, socks, group, port, maxlen)
        self.running[cfg.state] = run
        if backup:
            self._attach_readers(run)
        else:
            params = sync_params(self.director.ipvs.sysctl)
            self.director.sync = SyncMaster(cfg.syncid, maxlen, self.threads, params)
        log.info(
            "sync thread started: state = %s, mcast_ifn = %s, syncid = %d, threads = %d",
            cfg.state.upper(), cfg.mcast_ifn, cfg.syncid, self.threads,
        )  # fmt: skip
        self._ensure_task()

    def stop(self, state: str) -> None:
        """``stop_sync_thread``: close the sockets; a master's unsent
        buffers are dropped, as the kernel drops them."""
        run = self.running.pop(state, None)
        if run is None:
            return
        if state == "master":
            self.director.sync = None
        loop = _loop()
        for s in run.socks:
            if run.readers and loop is not None:
                loop.remove_reader(s.fileno())
            s.close()
        log.info("stopping %s sync daemon", state)

    def close(self) -> None:
        for state in list(self.running):
            self.stop(state)
        if self._task is not None:
            self._task.cancel()

    def refresh_params(self) -> None:
        """A sysctl changed: the master's rules follow at once."""
        master = self.director.sync
        if master is not None:
            master.params = sync_params(self.director.ipvs.sysctl)

    # -- sockets -------------------------------------------------------------------
    @staticmethod
    def _send_sock(index: int, ifaddr: str, group: str, port: int, ttl: int) -> socket.socket:
        if ":" in group:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
            s.connect((group, port))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("4s4si", b"", b"", index))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            if not ifaddr:
                log.error("You probably need to specify IP address on multicast interface.")
            s.bind((ifaddr or "0.0.0.0", 0))
            s.connect((group, port))
        s.setblocking(False)
        return s

    @staticmethod
    def _receive_sock(ifname: str, index: int, group: str, port: int) -> socket.socket:
        fam = socket.AF_INET6 if ":" in group else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BACKUP_RCVBUF)
            s.bind((group, port))
            if fam == socket.AF_INET6:
                mreq6 = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", index)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
            else:
                mreqn = socket.inet_aton(group) + b"\0\0\0\0" + struct.pack("@i", index)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        return s

    # -- the backup ----------------------------------------------------------------
    def _attach_readers(self, run: _Running) -> None:
        loop = _loop()
        if loop is None:
            return
        for s in run.socks:
            loop.add_reader(s.fileno(), self._readable, s, run)
        run.readers = True

    def _readable(self, sock: socket.socket, run: _Running) -> None:
        for _ in range(READ_BUDGET):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counters["recv-error"] += 1
                log.debug("sync receive error: %s", exc)
                return
            self.receive(data, run.cfg.syncid, run.maxlen)

    def receive(self, data: bytes, syncid: int, maxlen: int = 65535) -> int:
        """``ip_vs_process_message``: decode one datagram and apply what it
        carries; returns how many entries were applied.  A datagram longer
        than the backup's sync_maxlen is cut there, as the kernel's receive
        buffer cuts it (its size check then drops it)."""
        self.counters["received"] += 1
        decoded = decode_message(data[:maxlen], syncid)
        if decoded.dropped:
            self.counters["dropped-" + decoded.dropped] += 1
        for reason, n in decoded.skipped.items():
            self.counters["skipped-" + reason] += n
        now = self.now()
        apply = self.director.sync_apply
        applied = 0
        for entry in decoded.entries:
            if apply(entry, now) is not None:
                applied += 1
        self.counters["applied"] += applied
        return applied

    # -- the master ----------------------------------------------------------------
    def _ensure_task(self) -> None:
        loop = _loop()
        if loop is not None and (self._task is None or self._task.done()):
            self._task = loop.create_task(self._sender())

    async def _sender(self) -> None:
        while self.running:
            if "master" in self.running:
                self.send_due()
            await asyncio.sleep(SEND_PERIOD)

    def send_due(self) -> int:
        """Send what the master has ready; returns the datagrams sent."""
        master = self.director.sync
        run = self.running.get("master")
        if master is None or run is None:
            return 0
        sent = 0
        for tid, data in master.due(self.now()):
            try:
                run.socks[tid].send(data)
                sent += 1
            except OSError as exc:  # full socket buffer, no route: the datagram is lost
                self.counters["send-error"] += 1
                log.debug("ip_vs_send_async error %s", exc)
        self.counters["sent"] += sent
        return sent

    def describe(self) -> dict[str, Any]:
        daemons = {}
        for state, r in self.running.items():
            daemons[state] = {
                "mcast_ifn": r.cfg.mcast_ifn,
                "syncid": r.cfg.syncid,
                "group": r.group,
                "port": r.port,
                "maxlen": r.maxlen,
                "threads": len(r.socks),
            }
        return {"daemons": daemons, "counters": dict(self.counters)}


def _loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


__all__ = ["SyncDaemons", "interface_facts", "sync_params"]
