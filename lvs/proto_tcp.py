"""TCP connection states as IPVS tracks them (ip_vs_proto_tcp.c).

IPVS does not run TCP; it watches segments go by and moves each connection
entry through a small state table.  Three tables exist: INPUT (client to
real server), OUTPUT (real server to client, seen only when replies pass the
director, i.e. NAT) and INPUT_ONLY (used while the entry has NOOUTPUT: DR
and TUN, where replies bypass the director).  A segment is classed by its
most significant flag, RST > SYN > FIN > ACK; a segment with none of them
moves the entry to CLOSE.  The first reply seen on a NOOUTPUT entry clears
the flag for good.  ``secure_tcp`` swaps in the stricter DoS tables.
"""

from __future__ import annotations

from .conn import (
    TCP_S_CLOSE,
    TCP_S_CLOSE_WAIT,
    TCP_S_ESTABLISHED,
    TCP_S_FIN_WAIT,
    TCP_S_LAST_ACK,
    TCP_S_LISTEN,
    TCP_S_NONE,
    TCP_S_SYN_RECV,
    TCP_S_SYN_SENT,
    TCP_S_SYNACK,
    TCP_S_TIME_WAIT,
)

# TCP header flag bits.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

DIR_INPUT = 0
DIR_OUTPUT = 1
DIR_INPUT_ONLY = 2

ROW_SYN, ROW_FIN, ROW_ACK, ROW_RST = 0, 1, 2, 3

NO, ES, SS, SR = TCP_S_NONE, TCP_S_ESTABLISHED, TCP_S_SYN_SENT, TCP_S_SYN_RECV
FW, TW, CL, CW = TCP_S_FIN_WAIT, TCP_S_TIME_WAIT, TCP_S_CLOSE, TCP_S_CLOSE_WAIT
LA, LI, SA = TCP_S_LAST_ACK, TCP_S_LISTEN, TCP_S_SYNACK

# [direction][row][current state] -> next state; columns in state order
# NO ES SS SR FW TW CL CW LA LI SA.
NORMAL_TABLES: tuple[tuple[tuple[int, ...], ...], ...] = (
    (  # INPUT
        (SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR),
        (CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, TW),
        (ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES),
        (CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, SR),
    ),
    (  # OUTPUT
        (SS, ES, SS, SR, SS, SS, SS, SS, SS, LI, SR),
        (TW, FW, SS, TW, FW, TW, CL, TW, LA, LI, TW),
        (ES, ES, SS, ES, FW, TW, CL, CW, LA, ES, ES),
        (CL, CL, SS, CL, CL, TW, CL, CL, CL, CL, CL),
    ),
    (  # INPUT_ONLY
        (SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR),
        (CL, FW, SS, TW, FW, TW, CL, CW, LA, LI, TW),
        (ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES),
        (CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL),
    ),
)

SECURE_TABLES: tuple[tuple[tuple[int, ...], ...], ...] = (
    (  # INPUT
        (SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SA),
        (CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, SA),
        (ES, ES, SS, SR, FW, TW, CL, CW, CL, LI, SA),
        (CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL),
    ),
    (  # OUTPUT
        (SS, ES, SS, SA, SS, SS, SS, SS, SS, LI, SA),
        (TW, FW, SS, TW, FW, TW, CL, TW, LA, LI, TW),
        (ES, ES, SS, ES, FW, TW, CL, CW, LA, ES, ES),
        (CL, CL, SS, CL, CL, TW, CL, CL, CL, CL, CL),
    ),
    (  # INPUT_ONLY
        (SA, ES, ES, SR, SA, SA, SA, SA, SA, SA, SA),
        (CL, FW, SS, TW, FW, TW, CL, CW, LA, LI, TW),
        (ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES),
        (CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL),
    ),
)

#: states that count a connection as active (``tcp_state_active``)
ACTIVE_STATES = frozenset({ES, SS, SR, SA})
_ACTIVE = tuple(s in ACTIVE_STATES for s in range(11))


def flag_row(flags: int) -> int:
    """``tcp_state_idx``: RST > SYN > FIN > ACK, -1 for none of them."""
    if flags & RST:
        return ROW_RST
    if flags & SYN:
        return ROW_SYN
    if flags & FIN:
        return ROW_FIN
    if flags & ACK:
        return ROW_ACK
    return -1


def next_state(state: int, direction: int, flags: int, secure: bool = False) -> int:
    """The state after a segment with ``flags`` travelling in ``direction``."""
    row = flag_row(flags)
    if row < 0:
        return CL
    tables = SECURE_TABLES if secure else NORMAL_TABLES
    return tables[direction][row][state]


def is_active(state: int) -> bool:
    return _ACTIVE[state]
