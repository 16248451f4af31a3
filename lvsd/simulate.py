"""``lvsadm simulate``'s command line: read the scenario, run it (``lvs.simulate``)."""

from __future__ import annotations

import argparse
import sys

from lvs.simulate import ScenarioError, simulate, simulate_report

from .resolver import default_resolver


def main(argv: list[str]) -> int:
    """``lvsadm simulate [--seed N] [--classic] [--explain] SCENARIO``."""
    ap = argparse.ArgumentParser(prog="lvsadm simulate", description="Replay an oracle scenario in-process.")
    ap.add_argument("scenario", help="scenario file, or - for standard input")
    ap.add_argument("--seed", type=int, default=0, help="seed for twos and anything random")
    ap.add_argument("--classic", action="store_true", help="pre-2025 kernel rules")
    ap.add_argument("--explain", action="store_true", help="say why each flow went where it went")
    ap.add_argument("--report", action="store_true", help="plain text for people instead of JSON lines")
    ns = ap.parse_args(argv)
    try:
        if ns.scenario == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(ns.scenario, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
    except OSError as exc:
        print(f"lvsadm simulate: {exc}", file=sys.stderr)
        return 2
    try:
        run = simulate_report if ns.report else simulate
        resolver = default_resolver()
        run(lines, sys.stdout, seed=ns.seed, classic=ns.classic, explain=ns.explain, resolver=resolver)
    except ScenarioError as exc:
        print(f"lvsadm simulate: {ns.scenario}: {exc}", file=sys.stderr)
        return 2
    return 0
