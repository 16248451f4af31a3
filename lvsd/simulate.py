"""``lvsadm simulate``'s command line: read the scenario, run it (``lvs.simulate``).

``--plot FILE``, ``--compare LIST`` and ``--disruption`` draw with the
``teaching`` package (matplotlib, the ``teach`` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lvs.simulate import ScenarioError, simulate, simulate_report

from .resolver import default_resolver


def _teaching(ns: argparse.Namespace, lines: list[str]) -> int:
    try:
        from teaching import plots, series
    except ImportError as exc:
        print(f"lvsadm simulate: plots need matplotlib (pip install 'pylvs[teach]'): {exc}", file=sys.stderr)
        return 2
    title = Path(ns.scenario).stem if ns.scenario and ns.scenario != "-" else "scenario"
    if ns.disruption:
        d = series.disruption(servers=ns.servers)
        print("\n".join(series.disruption_table(d)))
        fig = plots.disruption_figure(d) if ns.plot else None
    elif ns.compare:
        names = [n for n in ns.compare.split(",") if n]
        from lvs.sched import SCHEDULER_NAMES

        bad = [n for n in names if n not in SCHEDULER_NAMES]
        if bad:
            print(f"lvsadm simulate: unknown scheduler {bad[0]!r} (one of {', '.join(SCHEDULER_NAMES)})",
                  file=sys.stderr)
            return 2
        runs = {n: series.collect(series.with_scheduler(lines, n), n, seed=ns.seed, classic=ns.classic)
                for n in names}
        print("\n".join(series.compare_table(runs)))
        fig = plots.compare_figure(runs, title) if ns.plot else None
    else:
        fig = plots.scenario_figure(series.collect(lines, title, seed=ns.seed, classic=ns.classic))
    if fig is not None:
        try:
            plots.save(fig, ns.plot)
        except (OSError, ValueError) as exc:
            print(f"lvsadm simulate: cannot write {ns.plot}: {exc}", file=sys.stderr)
            return 2
        print(f"lvsadm simulate: wrote {ns.plot}", file=sys.stderr)
    return 0


def _salt(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def main(argv: list[str]) -> int:
    """``lvsadm simulate [--seed N] [--classic] [--explain] [--report] [--plot FILE]
    [--compare S1,S2,...] [--disruption [--servers N]] SCENARIO``."""
    ap = argparse.ArgumentParser(prog="lvsadm simulate", description="Replay an oracle scenario in-process.")
    ap.add_argument("scenario", nargs="?", help="scenario file, or - for standard input")
    ap.add_argument("--seed", type=int, default=0, help="seed for twos and anything random")
    ap.add_argument("--classic", action="store_true", help="pre-2025 kernel rules")
    ap.add_argument("--explain", action="store_true", help="say why each flow went where it went")
    ap.add_argument("--report", action="store_true", help="plain text for people instead of JSON lines")
    ap.add_argument("--svc-hash-salt", type=_salt, metavar="N",
                    help="the kernel's (size_t)netns_ipvs >> 8 of a boot to replay (--nosort, /proc order)")
    ap.add_argument("--plot", metavar="FILE", help="draw the run (PNG or SVG by the extension)")
    ap.add_argument("--compare", metavar="S1,S2", help="run the scenario under each scheduler, side by side")
    ap.add_argument("--disruption", action="store_true",
                    help="share of clients that move when a real server is removed or added (dh, sh, mh)")
    ap.add_argument("--servers", type=int, default=5, help="real servers for --disruption (default 5)")
    ns = ap.parse_args(argv)
    if ns.scenario is None and not ns.disruption:
        ap.error("the following arguments are required: scenario")
    if ns.svc_hash_salt is not None and not 0 <= ns.svc_hash_salt <= 255:
        ap.error("--svc-hash-salt must be between 0 and 255")
    if ns.disruption and not 1 <= ns.servers <= 64:
        ap.error("--servers must be between 1 and 64")
    lines: list[str] = []
    try:
        if ns.scenario == "-":
            lines = sys.stdin.read().splitlines()
        elif ns.scenario is not None:
            with open(ns.scenario, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
    except OSError as exc:
        print(f"lvsadm simulate: {exc}", file=sys.stderr)
        return 2
    try:
        if ns.disruption or ns.compare:
            return _teaching(ns, lines)
        resolver = default_resolver()
        common = {"seed": ns.seed, "classic": ns.classic, "explain": ns.explain, "resolver": resolver}
        if ns.report:
            simulate_report(lines, sys.stdout, **common)
        else:
            simulate(lines, sys.stdout, svc_hash_salt=ns.svc_hash_salt, **common)
        if ns.plot:
            return _teaching(ns, lines)
    except ScenarioError as exc:
        print(f"lvsadm simulate: {ns.scenario}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # | head
        sys.stdout = None  # type: ignore[assignment]
        return 0
    return 0
