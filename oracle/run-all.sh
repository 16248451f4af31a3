#!/bin/bash
# run-all.sh [SCENARIO...]: run every scenario (default: ../tests/data/scenarios/*.scn) into
# ../tests/data/traces/NAME.jsonl (TRACES=DIR to write elsewhere)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || set -- "$HERE"/../tests/data/scenarios/*.scn
TRACES=${TRACES:-$HERE/../tests/data/traces}
mkdir -p "$TRACES"
for f in "$@"; do
	n=$(basename "$f" .scn)
	"$HERE/run-scenario.sh" "$f" "$TRACES/$n.jsonl"
done
