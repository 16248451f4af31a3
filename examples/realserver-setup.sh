#!/bin/sh
# Real-server setup for LVS direct routing (-g) and tunnelling (-i).
#
#   examples/realserver-setup.sh VIP [dr|tun] [GUE_PORT]
#
# DR and TUN real servers answer clients directly from the VIP, so the VIP
# must be a local address of the real server, but the real server must never
# answer ARP for it (the director owns it on the shared segment):
#   * the VIP goes on lo as a /32;
#   * arp_ignore=1: answer ARP only for addresses of the receiving interface;
#   * arp_announce=2: never use the VIP as the source of our own ARP requests;
#   * rp_filter=0: tunnelled packets arrive with the client's address as the
#     source on an interface that is not the route back to it.
# For TUN, a kernel with the ipip module decapsulates on tunl0; a kernel
# without ipip/gre/fou (containers, sandboxes) runs pylvs' userspace helper,
# which writes the inner packets into a TUN device:
#   lvs-realserver --vip VIP [--gue-port PORT]
set -eu
VIP=${1:?usage: $0 VIP [dr|tun] [GUE_PORT]}
MODE=${2:-dr}
GUE_PORT=${3:-0}

case "$VIP" in
  *:*) ip -6 addr replace "$VIP/128" dev lo ;;
  *)   ip addr replace "$VIP/32" dev lo ;;
esac
sysctl -qw net.ipv4.conf.all.arp_ignore=1
sysctl -qw net.ipv4.conf.all.arp_announce=2
sysctl -qw net.ipv4.conf.all.rp_filter=0
sysctl -qw net.ipv4.conf.default.rp_filter=0
sysctl -qw net.ipv4.conf.lo.rp_filter=0

if [ "$MODE" = tun ]; then
  if modprobe ipip 2>/dev/null && ip link show tunl0 >/dev/null 2>&1; then
    ip link set tunl0 up
    sysctl -qw net.ipv4.conf.tunl0.rp_filter=0
    echo "kernel ipip on tunl0"
  else
    echo "no ipip module: starting lvs-realserver"
    exec lvs-realserver --vip "$VIP" --gue-port "$GUE_PORT"
  fi
fi
