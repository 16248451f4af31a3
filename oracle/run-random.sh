#!/bin/bash
# run-random.sh DIR [NAME...]: record DIR/scenarios/NAME.scn -> DIR/traces/NAME.jsonl (+ .meta.json)
# on the lab kernel, skipping scenarios that already have a trace or that another run-random.sh
# is recording (NAME.running).  Without NAMEs, every scenario of DIR (default
# ../tests/data/random).  Two of these may run side by side.  See README.md.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-$here/../tests/data/random}; shift || true
mkdir -p "$DIR/traces"
if [ $# -gt 0 ]; then names=("$@"); else names=(); for f in "$DIR"/scenarios/*.scn; do n=${f##*/}; names+=("${n%.scn}"); done; fi
for n in "${names[@]}"; do
	[ -s "$DIR/traces/$n.jsonl" ] && continue
	( set -o noclobber; : > "$DIR/traces/$n.running" ) 2>/dev/null || continue
	if "$here/run-scenario.sh" "$DIR/scenarios/$n.scn" "$DIR/traces/$n.jsonl" >/dev/null 2>"$DIR/traces/$n.err"; then
		rm -f "$DIR/traces/$n.final.txt"
		if [ -s "$DIR/traces/$n.err" ]; then echo "$n: $(cat "$DIR/traces/$n.err")"; else rm -f "$DIR/traces/$n.err"; echo "$n: ok"; fi
	else
		echo "$n: FAILED ($(tail -1 "$DIR/traces/$n.err"))"
	fi
	rm -f "$DIR/traces/$n.running"
done
