"""Where an lvsd listens, keeps its state and logs: one set of paths per
network namespace, in directories only the daemon's user can write.

The kernel's IPVS table cannot be impersonated: only CAP_NET_ADMIN reaches it.
An abstract unix socket name can be bound by anyone in the namespace, so lvsd
listens on a filesystem socket inside a directory that only its user (root:
``/run/pylvs``, mode 0755) can create entries in; an unprivileged user can
neither take the name before lvsd starts nor replace it afterwards.  A
filesystem socket is not private to a network namespace, so the directory is
named after the namespace: its cookie (SO_NETNS_COOKIE, never reused while
the host runs; the inode of ``/proc/self/ns/net`` on kernels without it).
``ip netns exec ns1 lvsadm`` therefore reaches ns1's own lvsd.

lvsadm checks the credentials of whoever answers (SO_PEERCRED: root, or its
own user for an unprivileged lvsd) before it sends anything
(:func:`verify_peer`).
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import struct

DEFAULT_NAME = "pylvs"
SO_NETNS_COOKIE = 71
#: the root of the per-namespace run directories of a root lvsd
ROOT_RUN_DIR = "/run/pylvs"
ROOT_STATE_DIR = "/var/lib/pylvs"


class UnsafePath(Exception):
    """A directory or socket lvsd would trust is owned or writable by someone else."""


class Impersonation(Exception):
    """The control socket is answered by a process that is not lvsd's user."""


def socket_name() -> str:
    """The control socket's name (``LVSD_SOCKET`` overrides it, for tests)."""
    return os.environ.get("LVSD_SOCKET", DEFAULT_NAME)


def netns_key() -> str:
    """This network namespace's identity: ``netns-COOKIE`` (or ``netns-iINODE``)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        return f"netns-{struct.unpack('Q', raw)[0]}"
    except OSError:
        return f"netns-i{os.stat('/proc/self/ns/net').st_ino}"


def _user_base(kind: str) -> str:
    uid = os.geteuid()
    if kind == "run":
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        return os.path.join(xdg, "pylvs") if xdg else f"/tmp/pylvs-{uid}"
    xdg = os.environ.get("XDG_STATE_HOME")
    home = pwd.getpwuid(uid).pw_dir
    return os.path.join(xdg or os.path.join(home, ".local", "state"), "pylvs")


def run_dir(uid: int | None = None) -> str:
    """The directory of this namespace's control sockets for an lvsd of
    ``uid`` (default: this process's user)."""
    uid = os.geteuid() if uid is None else uid
    base = ROOT_RUN_DIR if uid == 0 else _user_base("run")
    return os.path.join(base, netns_key())


def state_dir() -> str:
    """Where this namespace's lvsd keeps its table (``LVSD_STATE_DIR`` overrides the base)."""
    base = os.environ.get("LVSD_STATE_DIR") or (ROOT_STATE_DIR if os.geteuid() == 0 else _user_base("state"))
    return os.path.join(base, netns_key())


def socket_address(name: str | None = None, uid: int | None = None) -> str:
    """The ``AF_UNIX`` address of lvsd's control socket.  A name starting
    with ``/`` is a path used as given; ``@NAME`` is an abstract socket
    (anyone may bind it: lvsadm's credential check is then the only guard)."""
    name = name or socket_name()
    if name.startswith("/"):
        return name
    if name.startswith("@"):
        return "\0" + name[1:] + ".ctl"
    return os.path.join(run_dir(uid), _safe(name) + ".ctl")


def candidate_addresses(name: str | None = None) -> list[str]:
    """Where lvsadm looks for lvsd: root's socket first (a member of an
    ``--allow-group`` talks to root's lvsd), then the user's own."""
    first = socket_address(name, 0)
    if os.geteuid() == 0:
        return [first]
    own = socket_address(name)
    return [first] if own == first else [first, own]


def state_path(name: str | None = None) -> str:
    """The default state file of the lvsd named ``name`` in this namespace."""
    name = name or socket_name()
    if name.startswith("/"):
        name = name.strip("/").replace("/", "_")
    return os.path.join(state_dir(), _safe(name.lstrip("@")) + ".state")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or DEFAULT_NAME


def ensure_private_dir(path: str) -> None:
    """Create ``path`` (and parents) for this user, mode 0755, and check that
    every component is a real directory owned by root or this user and
    writable by nobody else.  Raises UnsafePath otherwise."""
    uid = os.geteuid()
    os.makedirs(path, mode=0o755, exist_ok=True)
    check = os.path.abspath(path)
    while True:
        st = os.lstat(check)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{check} is not a directory")
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if st.st_uid not in (0, uid):
            owner = f"uid {st.st_uid} ({_user(st.st_uid)})"
            raise UnsafePath(f"{check} belongs to {owner}, not to root or uid {uid}")
        if st.st_mode & 0o022 and not (sticky and check != os.path.abspath(path)):
            raise UnsafePath(f"{check} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")
        if check == "/":
            return
        check = os.path.dirname(check)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def verify_peer(sock: socket.socket, address: str) -> tuple[int, int]:
    """Check that the listener behind ``sock`` runs as root or as this user,
    before anything is sent; returns (pid, uid) or raises Impersonation."""
    pid, uid, _ = peer_credentials(sock)
    if uid == 0 or uid == os.geteuid():
        return pid, uid
    where = "@" + address[1:] if address.startswith("\0") else address
    raise Impersonation(
        f"SECURITY: the lvsd control socket {where} is held by pid {pid}, uid {uid} ({_user(uid)}), "
        "not by root or you: someone may be impersonating lvsd; nothing was sent"
    )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "unknown user"
