"""Random sync-protocol entries (hypothesis) for the sync codec and sync
daemon tests."""

from __future__ import annotations

from hypothesis import strategies as st

from lvs.constants import AF_INET, AF_INET6, CONN_F_TEMPLATE, IPPROTO_TCP, IPPROTO_UDP
from lvs.sync import BACKUP_MASK, SyncEntry


@st.composite
def entries(draw, v0: bool = False) -> SyncEntry:
    af = AF_INET if v0 else draw(st.sampled_from([AF_INET, AF_INET6]))
    bits = 32 if af == AF_INET else 128
    template = draw(st.booleans())
    protocol = draw(st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]))
    state = draw(st.integers(0, 1 if template else (10 if protocol == IPPROTO_TCP else 0)))
    flags = draw(st.integers(0, 0xFFFF)) & BACKUP_MASK & ~CONN_F_TEMPLATE
    flags |= CONN_F_TEMPLATE if template else 0
    seq = tuple(draw(st.lists(st.integers(0, 2**32 - 1), min_size=6, max_size=6))) if flags & 0x600 else None
    pe = not v0 and template and draw(st.booleans())
    return SyncEntry(
        af, protocol, flags, state,
        draw(st.integers(0, 2**bits - 1)), draw(st.integers(0, 65535)),
        draw(st.integers(0, 2**bits - 1)), draw(st.integers(0, 65535)),
        draw(st.integers(0, 2**bits - 1)), draw(st.integers(0, 65535)),
        0 if v0 else draw(st.integers(0, 2**32 - 1)), 0 if v0 else draw(st.integers(0, 2**32 - 1)),
        seq, "sip" if pe else "", draw(st.binary(min_size=1, max_size=255)) if pe else b"",
    )  # fmt: skip
