"""Classic BPF programs handed to the kernel (linux/filter.h): the one
encoder of ``struct sock_fprog`` and the setsockopt that attaches it, used by
the capture filter (SO_ATTACH_FILTER, :mod:`forwarding.capture`) and by
reuseport steering (SO_ATTACH_REUSEPORT_CBPF, :mod:`forwarding.reuseport`)."""

from __future__ import annotations

import ctypes
import socket
import struct

#: one instruction: (code, jt, jf, k), ``struct sock_filter``
Insn = tuple[int, int, int, int]


def encode(prog: list[Insn]) -> bytes:
    """The instructions as the kernel's array of ``struct sock_filter``."""
    return b"".join(struct.pack("HBBI", *insn) for insn in prog)


def attach(sock: socket.socket, optname: int, prog: list[Insn]) -> None:
    """``setsockopt(SOL_SOCKET, optname, struct sock_fprog)``: the kernel
    copies the program, so the buffer need only live through the call."""
    raw = encode(prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, optname, fprog)
    del buf


__all__ = ["Insn", "attach", "encode"]
