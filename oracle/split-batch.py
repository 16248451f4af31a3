#!/usr/bin/env python3
"""split-batch.py BATCH.jsonl TRACEDIR: cut a run-batch.sh trace at its ``sh echo LAB-SPLIT NAME``
steps into TRACEDIR/NAME.jsonl (flow indices from 0 again, as a run of its own would number
them; the reset steps between scenarios dropped) and TRACEDIR/NAME.meta.json (the batch's meta
plus ``"batch": [names]``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(batch: Path, outdir: Path) -> int:
    meta_path = batch.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    chunks: dict[str, list[dict]] = {}
    current: list[dict] | None = None
    for line in batch.read_text().splitlines():
        d = json.loads(line)
        args = d.get("args", "")
        if d.get("step") == "sh" and args.startswith("echo LAB-SPLIT "):
            current = chunks.setdefault(args.split()[-1], [])
            continue
        if d.get("step") == "sh" and (args == "lab_reset" or args.startswith("lab_reset()")):
            continue
        if current is None:
            continue
        if "i" in d:
            d["i"] = sum(1 for x in current if "i" in x)
        current.append(d)
    for name, lines in chunks.items():
        (outdir / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
        m = dict(meta, flows=sum(1 for d in lines if "i" in d), batch=list(chunks))
        (outdir / f"{name}.meta.json").write_text(json.dumps(m) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2])))
