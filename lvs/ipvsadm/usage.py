"""What ``ipvsadm -h`` and ``ipvsadm -v`` print (ipvsadm 1.31 ``usage_exit`` and
``version``), byte for byte, and popt's "try -h" hint.

The help is laid out as tables: the command list in a 28-column left part,
the virtual-service and option lists in a 36-column one.
"""

from __future__ import annotations

from .grammar import PROGRAM, TRY_HELP

__all__ = ["TRY_HELP", "VERSION", "help_text", "version_text"]

#: ipvsadm's version line: release, release date, option parser, IPVS version.
VERSION = "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)"

# Schedulers named in the help: the list the Debian binary was built with
# (it predates twos), not the schedulers pylvs has.
_HELP_SCHEDULERS = "rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh"
_PERSISTENCE_ENGINES = "sip"
_DEFAULT_SCHEDULER = "wlc"
_DEFAULT_TUNNEL = "ipip"

_SYNOPSIS = (
    "-A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine]"
    " [-b sched-flags]",
    "-D virtual-service",
    "-C",
    "-R",
    "-S [-n]",
    "-a|e virtual-service -r server-address [options]",
    "-d virtual-service -r server-address",
    "-L|l [virtual-service] [options]",
    "-Z [virtual-service]",
    "--set tcp tcpfin udp",
    "--start-daemon {master|backup} [daemon-options]",
    "--stop-daemon {master|backup}",
    "-h",
)

# (long option, short option, what it does)
_COMMANDS = (
    ("--add-service", "-A", "add virtual service with options"),
    ("--edit-service", "-E", "edit virtual service with options"),
    ("--delete-service", "-D", "delete virtual service"),
    ("--clear", "-C", "clear the whole table"),
    ("--restore", "-R", "restore rules from stdin"),
    ("--save", "-S", "save rules to stdout"),
    ("--add-server", "-a", "add real server with options"),
    ("--edit-server", "-e", "edit real server with options"),
    ("--delete-server", "-d", "delete real server"),
    ("--list", "-L|-l", "list the table"),
    ("--zero", "-Z", "zero counters in a service or all services"),
    ("--set tcp tcpfin udp", "", "set connection timeout values"),
    ("--start-daemon", "", "start connection sync daemon"),
    ("--stop-daemon", "", "stop connection sync daemon"),
    ("--help", "-h", "display this help message"),
)

_SERVICE_FORMS = (
    ("--tcp-service|-t  service-address", "service-address is host[:port]"),
    ("--udp-service|-u  service-address", "service-address is host[:port]"),
    ("--sctp-service    service-address", "service-address is host[:port]"),
    ("--fwmark-service|-f fwmark", "fwmark is an integer greater than zero"),
)

# (option column, description); an empty option column continues the line above.
_OPTIONS = (
    ("--ipv6         -6", "fwmark entry uses IPv6"),
    ("--scheduler    -s scheduler", f"one of {_HELP_SCHEDULERS},"),
    ("", f"the default scheduler is {_DEFAULT_SCHEDULER}."),
    ("--pe            engine", f"alternate persistence engine may be {_PERSISTENCE_ENGINES},"),
    ("", "not set by default."),
    ("--persistent   -p [timeout]", "persistent service"),
    ("--netmask      -M netmask", "persistent granularity mask"),
    ("--real-server  -r server-address", "server-address is host (and port)"),
    ("--gatewaying   -g", "gatewaying (direct routing) (default)"),
    ("--ipip         -i", "ipip encapsulation (tunneling)"),
    ("--masquerading -m", "masquerading (NAT)"),
    ("--tun-type      type", "one of ipip|gue|gre,"),
    ("", f"the default tunnel type is {_DEFAULT_TUNNEL}."),
    ("--tun-port      port", "tunnel destination port"),
    ("--tun-nocsum", "tunnel encapsulation without checksum"),
    ("--tun-csum", "tunnel encapsulation with checksum"),
    ("--tun-remcsum", "tunnel encapsulation with remote checksum"),
    ("--weight       -w weight", "capacity of real server"),
    ("--u-threshold  -x uthreshold", "upper threshold of connections"),
    ("--l-threshold  -y lthreshold", "lower threshold of connections"),
    ("--connection   -c", "output of current IPVS connections"),
    ("--timeout", "output of timeout (tcp tcpfin udp)"),
    ("--daemon", "output of daemon information"),
    ("--stats", "output of statistics information"),
    ("--rate", "output of rate information"),
    ("--exact", "expand numbers (display exact values)"),
    ("--thresholds", "output of thresholds information"),
    ("--persistent-conn", "output of persistent connection info"),
    ("--tun-info", "output of tunnel information"),
    ("--nosort", "disable sorting output of service/server entries"),
    ("--sort", "does nothing, for backwards compatibility"),
    ("--ops          -o", "one-packet scheduling"),
    ("--numeric      -n", "numeric output of addresses and ports"),
    ("--sched-flags  -b flags", "scheduler flags (comma-separated)"),
)

_DAEMON_OPTIONS = (
    ("--syncid sid", "syncid for connection sync (default=255)"),
    ("--sync-maxlen length", "Max sync message length (default=1472)"),
    ("--mcast-interface interface", "multicast interface for connection sync"),
    ("--mcast-group address", "IPv4/IPv6 group (default=224.0.0.81)"),
    ("--mcast-port port", "UDP port (default=8848)"),
    ("--mcast-ttl ttl", "Multicast TTL (default=1)"),
)


def version_text() -> str:
    """``ipvsadm -v``: the version line."""
    return VERSION + "\n"


def _table(rows: tuple[tuple[str, str], ...], width: int) -> list[str]:
    return [f"  {left:<{width}}{text}" for left, text in rows]


def help_text(program: str = PROGRAM) -> str:
    """``ipvsadm -h``: version, synopsis, commands, virtual-service forms,
    options and daemon options."""
    lines = [VERSION, "Usage:"]
    lines += [f"  {program} {form}" for form in _SYNOPSIS]
    lines += ["", "Commands:", "Either long or short options are allowed."]
    commands = tuple((f"{long:<18}{short}" if short else long, text) for long, short, text in _COMMANDS)
    lines += _table(commands, 28)
    lines += ["", "virtual-service:"]
    lines += _table(_SERVICE_FORMS, 36)
    lines += ["", "Options:"]
    lines += _table(_OPTIONS, 36)
    lines += ["Daemon Options:"]
    lines += _table(_DAEMON_OPTIONS, 36)
    return "\n".join(lines) + "\n"
