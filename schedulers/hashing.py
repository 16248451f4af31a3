"""The two hash functions the hashing schedulers use, bit-exact with the kernel.

``hash_32`` (include/linux/hash.h) multiplies a 32-bit value by the golden
ratio constant 0x61C88647 modulo 2**32 and keeps the top ``bits`` bits.  dh,
sh, lblc and lblcr use it; x86 has no arch-specific override, so the generic
multiply is what runs there.

``hsiphash`` (lib/siphash.c) is what mh uses.  On 64-bit kernels the
"half" SipHash is *not* HalfSipHash: for speed it is plain SipHash-1-3 with
two 64-bit key words (one compression round per 8-byte block, three
finalisation rounds).  The 64-bit result ``v0 ^ v1 ^ v2 ^ v3`` is returned
through a ``u32`` return type, so the kernel keeps its **low 32 bits**
(a truncation, not an xor-fold of the two halves).  The message mh hashes is
one ``unsigned int`` taken from memory, i.e. its 4 little-endian bytes on
x86.  32-bit kernels run the real HalfSipHash-1-3 and so build different mh
tables; pylvs follows x86-64, the oracle's architecture.

The C implementation from the ``siphash24`` package is used when it can be
imported (about 0.5 µs per call); a pure-Python SipHash-1-3 is the fallback
and the reference the tests compare it against.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

GOLDEN_RATIO_32 = 0x61C88647
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

# SipHash initialisation constants ("somepseudorandomlygeneratedbytes").
_C0 = 0x736F6D6570736575
_C1 = 0x646F72616E646F6D
_C2 = 0x6C7967656E657261
_C3 = 0x7465646279746573

try:  # the C implementation, when installed
    from siphash24 import siphash13 as _c_siphash13
except ImportError:  # pragma: no cover - exercised only without the wheel
    _c_siphash13 = None

#: True when hsiphash runs on the C implementation
HAVE_C_SIPHASH = _c_siphash13 is not None

_pack_u32 = struct.Struct("<I").pack
_pack_key = struct.Struct("<QQ").pack


def hash_32(value: int, bits: int) -> int:
    """The kernel's ``hash_32``: ``(value * 0x61C88647 mod 2**32) >> (32 - bits)``.

    ``value`` is reduced to 32 bits first, as the C ``u32`` argument would be.
    """
    return (((value & _U32) * GOLDEN_RATIO_32) & _U32) >> (32 - bits)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _U64


def siphash13_py(data: bytes, k0: int, k1: int) -> int:
    """SipHash-1-3 of ``data`` with the 128-bit key (k0, k1), as a 64-bit integer.

    Pure Python; the key words are the two little-endian 64-bit halves of the
    16-byte key, exactly as the kernel's ``hsiphash_key_t`` holds them on
    64-bit machines.  Used as the fallback and as the test reference.
    """
    v0 = _C0 ^ k0
    v1 = _C1 ^ k1
    v2 = _C2 ^ k0
    v3 = _C3 ^ k1
    length = len(data)
    full = length - (length % 8)

    def sipround() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _U64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _U64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _U64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _U64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    for off in range(0, full, 8):
        m = int.from_bytes(data[off : off + 8], "little")
        v3 ^= m
        sipround()
        v0 ^= m
    # last block: the remaining bytes, little-endian, with the length in the top byte
    b = ((length & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= b
    sipround()
    v0 ^= b
    v2 ^= 0xFF
    sipround()
    sipround()
    sipround()
    return v0 ^ v1 ^ v2 ^ v3


def hsiphash_u32_py(value: int, k0: int, k1: int) -> int:
    """Pure-Python ``hsiphash`` of one u32 (64-bit kernel): SipHash-1-3 over
    the 4 little-endian bytes of ``value``, truncated to the low 32 bits."""
    return siphash13_py(_pack_u32(value & _U32), k0, k1) & _U32


def hsiphash_u32(value: int, k0: int, k1: int) -> int:
    """The kernel's ``hsiphash(&v, 4, key)`` on x86-64 for ``v = value`` (a u32).

    SipHash-1-3 of the 4-byte little-endian message with key words k0, k1;
    the 64-bit result's low 32 bits.  Runs on the C implementation when
    available.
    """
    if _c_siphash13 is None:
        return hsiphash_u32_py(value, k0, k1)
    return _c_siphash13(_pack_u32(value & _U32), key=_pack_key(k0, k1)).intdigest() & _U32


def make_hsiphash_u32(k0: int, k1: int) -> Callable[[int], int]:
    """A one-argument ``hsiphash`` with the key fixed: ``f(value) -> u32``.

    The key bytes are packed once, so the per-call cost is one C call plus two
    small conversions (mh calls this on every scheduling decision).
    """
    if _c_siphash13 is None:
        return lambda value: hsiphash_u32_py(value, k0, k1)
    key = _pack_key(k0, k1)
    sip = _c_siphash13
    pack = _pack_u32

    def hsiphash_fixed(value: int) -> int:
        # intdigest() is the little-endian 64-bit digest as a signed integer;
        # masking keeps its low 32 bits, which is what the kernel returns.
        return sip(pack(value & 0xFFFFFFFF), key=key).intdigest() & 0xFFFFFFFF

    return hsiphash_fixed


__all__ = [
    "GOLDEN_RATIO_32",
    "HAVE_C_SIPHASH",
    "hash_32",
    "hsiphash_u32",
    "hsiphash_u32_py",
    "make_hsiphash_u32",
    "siphash13_py",
]
