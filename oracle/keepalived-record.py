#!/usr/bin/env python3
"""Record what keepalived 2.2.7 makes of each tests/data/keepalived/*/keepalived.conf.

One VM boot for all of them: the scenario lays out the shared environment (local prefixes,
TCP listeners, a busybox httpd), then for each directory writes its files under /tmp/ka/NAME,
starts `keepalived -n -l -D -C` on it, waits for the checks to settle, captures `ipvsadm -S -n`
and keepalived's log, stops keepalived and clears the table.  The captures land beside each
keepalived.conf as ipvsadm-S-n.txt and keepalived.log.

    ./keepalived-cpio.sh && ./keepalived-record.py        # as root; one VM at a time
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data" / "keepalived"
LAB = Path(os.environ.get("LAB", Path.home() / ".cache" / "ipvs-lab"))
SETTLE = float(os.environ.get("SETTLE", "7"))

ENVIRONMENT = """\
local 10.1.0.0/24 fd00:1::/64
listen 10.1.0.1:80 10.1.0.2:80 10.1.0.3:80 10.1.0.50:80 [fd00:1::1]:80
sh mkdir -p /www /run /var/run /etc/keepalived /tmp/ka
sh echo pylvs lab > /www/index.html
sh busybox httpd -p 10.1.0.21:8080 -h /www
"""


def scenario(dirs: list[Path]) -> str:
    lines = [ENVIRONMENT]
    for d in dirs:
        name = d.name
        for f in sorted(p for p in d.rglob("*.conf")):
            rel = f.relative_to(d)
            blob = base64.b64encode(f.read_bytes()).decode()
            lines.append(f"sh mkdir -p /tmp/ka/{name}/{rel.parent}")
            lines.append(f"sh echo {blob} | base64 -d > /tmp/ka/{name}/{rel}")
        lines.append(
            f"sh /usr/sbin/keepalived -n -l -D -C -p /tmp/ka/{name}.pid -c /tmp/ka/{name}.cpid"
            f" -f /tmp/ka/{name}/keepalived.conf > /tmp/ka/{name}.log 2>&1 &"
        )
        lines.append(f"sleep {SETTLE}")
        lines.append(f"capture {name}.S ipvsadm -S -n")
        lines.append(f"capture {name}.log cat /tmp/ka/{name}.log")
        lines.append("sh killall keepalived; sleep 2; ipvsadm -C")
    return "\n".join(lines) + "\n"


def main() -> int:
    only = sys.argv[1:]
    dirs = sorted(d for d in DATA.iterdir() if (d / "keepalived.conf").exists() and (not only or d.name in only))
    cpio = LAB / "keepalived.cpio"
    if not cpio.exists():
        print(f"{cpio} missing: run oracle/keepalived-cpio.sh first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        scn = Path(tmp) / "keepalived-referee.scn"
        scn.write_text(scenario(dirs))
        golden = Path(tmp) / "golden"
        env = {**os.environ, "EXTRA_CPIO": str(cpio), "GOLDEN_DIR": str(golden)}
        subprocess.run([str(HERE / "run-scenario.sh"), str(scn), str(Path(tmp) / "out.jsonl")], check=True, env=env)
        commands = [json.loads(line) for line in (golden / "commands.jsonl").read_text().splitlines()]
        for d in dirs:
            shutil.copy(golden / f"{d.name}.S.txt", d / "ipvsadm-S-n.txt")
            shutil.copy(golden / f"{d.name}.log.txt", d / "keepalived.log")
        print(json.dumps([c for c in commands if c["rc"] != 0]))
        meta = Path(tmp) / "out.meta.json"
        if meta.exists():
            shutil.copy(meta, DATA / "recorded.meta.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
