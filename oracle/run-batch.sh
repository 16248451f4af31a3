#!/bin/bash
# run-batch.sh DIR K NAME...: record DIR/scenarios/NAME.scn -> DIR/traces/NAME.jsonl, K scenarios to
# one VM boot (a boot under TCG on a loaded host costs as much as a short scenario).  Between two
# scenarios the VM kills the held connections, deletes every service (ipvsadm -C) and sets the
# timeouts and the sysctls the generator touches back to their defaults.  What stays (entries and
# trashed servers of the earlier scenarios, the service-hash salt) must not meet the next one: the
# scenarios of one batch use different client addresses, virtual addresses and marks
# (gen-random.py --kind batch does).  (Reloading the ip_vs modules instead did not work: the
# state survived.)  Skips names that have a trace or are being recorded
# (NAME.running).  See README.md.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
DIR=$1; K=$2; shift 2
mkdir -p "$DIR/traces"
todo=()
flush() {
	[ ${#todo[@]} -gt 0 ] || return 0
	local tmp; tmp=$(mktemp -d)
	{
		echo "sh lab_reset() { for f in /run/hold/*; do [ -f \$f ] && kill \$(cat \$f); done; rm -f /run/hold/*; sleep 0.5; ipvsadm -C; ipvsadm --set 900 120 300; sysctl -w net.ipv4.vs.expire_nodest_conn=0 net.ipv4.vs.expire_quiescent_template=0 net.ipv4.vs.conn_reuse_mode=1 net.ipv4.vs.sloppy_tcp=0; }"
		local first=1
		for n in "${todo[@]}"; do
			[ $first = 1 ] || echo "sh lab_reset"
			first=0
			echo "sh echo LAB-SPLIT $n"
			sed 's/#.*//' "$DIR/scenarios/$n.scn"
		done
	} > "$tmp/batch.scn"
	if "$here/run-scenario.sh" "$tmp/batch.scn" "$tmp/batch.jsonl" >/dev/null 2>"$tmp/err"; then
		python3 "$here/split-batch.py" "$tmp/batch.jsonl" "$DIR/traces" && echo "batch ok: ${todo[*]}"
	else
		echo "batch FAILED: ${todo[*]} ($(tail -1 "$tmp/err"))"
	fi
	for n in "${todo[@]}"; do rm -f "$DIR/traces/$n.running"; done
	rm -rf "$tmp"
	todo=()
}
for n in "$@"; do
	[ -s "$DIR/traces/$n.jsonl" ] && continue
	( set -o noclobber; : > "$DIR/traces/$n.running" ) 2>/dev/null || continue
	todo+=("$n")
	[ ${#todo[@]} -ge "$K" ] && flush
done
flush
