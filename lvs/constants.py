"""Numbers and names from the kernel's IPVS uapi (include/uapi/linux/ip_vs.h)
and include/net/ip_vs.h, spelled the way the rest of pylvs uses them."""

from __future__ import annotations

#: Linux's address family numbers (include/linux/socket.h)
AF_INET = 2
AF_INET6 = 10

IPPROTO_IP = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132

PROTO_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP"}

# IPVS version code 1.2.1 and the connection table size (CONFIG_IP_VS_TAB_BITS=12).
IPVS_VERSION = (1, 2, 1)
CONN_TAB_BITS = 12
CONN_TAB_SIZE = 1 << CONN_TAB_BITS

# Service flags (IP_VS_SVC_F_*).
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008
SVC_F_SCHED2 = 0x0010
SVC_F_SCHED3 = 0x0020
SVC_F_SCHED_MASK = SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3

# Destination flags (IP_VS_DEST_F_*).
DEST_F_AVAILABLE = 0x0001
DEST_F_OVERLOAD = 0x0002

# Connection flags (IP_VS_CONN_F_*): the low three bits are the forwarding method.
CONN_F_FWD_MASK = 0x0007
CONN_F_MASQ = 0x0000
CONN_F_LOCALNODE = 0x0001
CONN_F_TUNNEL = 0x0002
CONN_F_DROUTE = 0x0003
CONN_F_BYPASS = 0x0004
CONN_F_SYNC = 0x0020
CONN_F_HASHED = 0x0040
CONN_F_NOOUTPUT = 0x0080
CONN_F_INACTIVE = 0x0100
CONN_F_OUT_SEQ = 0x0200
CONN_F_IN_SEQ = 0x0400
CONN_F_SEQ_MASK = 0x0600
CONN_F_NO_CPORT = 0x0800
CONN_F_TEMPLATE = 0x1000
CONN_F_ONE_PACKET = 0x2000
CONN_F_DEST_MASK = 0x00FF  # what a dest passes to its connections

FWD_NAMES = {
    CONN_F_MASQ: "Masq",
    CONN_F_LOCALNODE: "Local",
    CONN_F_TUNNEL: "Tunnel",
    CONN_F_DROUTE: "Route",
    CONN_F_BYPASS: "Bypass",
}

# Tunnel types and flags (IP_VS_CONN_F_TUNNEL_TYPE_*, IP_VS_TUNNEL_ENCAP_FLAG_*).
TUN_TYPE_IPIP = 0
TUN_TYPE_GUE = 1
TUN_TYPE_GRE = 2
TUN_TYPE_NAMES = {TUN_TYPE_IPIP: "ipip", TUN_TYPE_GUE: "gue", TUN_TYPE_GRE: "gre"}

TUN_F_NOCSUM = 0x0
TUN_F_CSUM = 0x1
TUN_F_REMCSUM = 0x2

# Persistence defaults (libipvs.h: IPVS_SVC_PERSISTENT_TIMEOUT is 6*60).
DEFAULT_PERSISTENT_TIMEOUT = 360
DEST_TRASH_PERIOD = 120  # IP_VS_DEST_TRASH_PERIOD, seconds

IP_VS_SCHEDNAME_MAXLEN = 16
IP_VS_PENAME_MAXLEN = 16
INT_MAX = 2**31 - 1
UINT_MAX = 2**32 - 1
