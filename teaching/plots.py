"""Pictures of a scenario run (matplotlib, the optional ``teach`` extra):

* ``scenario_figure``: new connections per real server over the scenario
  (cumulative, by flow number), active and inactive connections over time,
  the final share per server, and for dh/sh/mh the lookup table as a strip
  (one colour per real server, one column per bucket or slot);
* ``compare_figure``: one scenario under several schedulers, side by side;
* ``disruption_figure``: the share of clients that move when one real server
  is removed or added, for dh, sh and mh, against the least possible.

The format follows the file name: ``.png`` or ``.svg`` (anything matplotlib
knows).  Agg backend, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from .series import Disruption, Series

PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip

plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "svg.hashsalt": "pylvs", "svg.fonttype": "none"})


def _colours(servers: list[str]) -> dict[str, str]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(servers)}


def _flows_axes(ax, s: Series, colours: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    for name in s.servers:
        ax.step(s.x, s.flows[name], where="post", color=colours[name], label=name, linewidth=1.4)
    if s.dropped and s.dropped[-1]:
        ax.step(s.x, s.dropped, where="post", color="black", linestyle=":", label="no server", linewidth=1)
    ax.set_title("new connections per real server")
    ax.set_xlabel("flow number")
    ax.set_ylabel("connections (cumulative)")
    _time_marks(ax, s)
    ax.grid(alpha=0.3)


def _conns_axes(ax, s: Series, colours: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    any_active = any(any(v) for v in s.active.values())
    for name in s.servers:
        if any_active:
            ax.step(s.x, s.active[name], where="post", color=colours[name], linewidth=1.4)
        ax.step(s.x, s.inactive[name], where="post", color=colours[name], linewidth=1, linestyle="--")
    if any_active:
        ax.set_title("active (solid) and inactive (dashed) connections")
    else:
        ax.set_title("inactive connections (dashed; nothing was ever active, as with UDP)")
    _time_marks(ax, s)
    ax.set_xlabel("flow number")
    ax.set_ylabel("connections")
    ax.grid(alpha=0.3)


def _time_marks(ax, s: Series) -> None:  # type: ignore[no-untyped-def]
    """A thin line where the virtual clock jumped (a ``sleep``), labelled with the time."""
    marks = [(x, f"t={t:g}s") for k, (x, t) in enumerate(zip(s.x, s.t)) if k and t != s.t[k - 1]]
    for x, label in marks[:12] + s.marks[:12]:
        ax.axvline(x - 0.5, color="#888888", linewidth=0.7, linestyle=":")
        ax.annotate(label, (x - 0.5, 0.02), xycoords=("data", "axes fraction"), fontsize=6,
                    color="#555555", rotation=90, va="bottom", ha="right")


def _share_axes(ax, s: Series, colours: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    totals = s.totals()
    routed = sum(totals.values()) or 1
    names = list(s.servers)
    values = [totals[n] for n in names]
    bars = ax.barh(range(len(names)), values, color=[colours[n] for n in names])
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    for bar, v in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v} ({v * 100 / routed:.0f}%)",
                va="center", fontsize=7)
    ax.set_xlim(0, max(values, default=1) * 1.35 + 1)
    ax.set_title("share of new connections")
    ax.set_xlabel("connections")


def _strip_axes(ax, service: str, sched: str, table: list[str | None], colours: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    order = list(colours)
    names = sorted({t for t in table if t is not None}, key=lambda n: order.index(n) if n in order else 99)
    index = {n: i + 1 for i, n in enumerate(names)}
    cmap = ListedColormap(["#ffffff"] + [colours.get(n, "#999999") for n in names])
    row = [[index.get(t, 0) if t is not None else 0 for t in table]]
    ax.imshow(row, aspect="auto", cmap=cmap, vmin=0, vmax=max(len(names), 1), interpolation="nearest")
    ax.set_yticks([])
    what = "slot" if sched == "mh" else "bucket"
    counts = {n: sum(1 for t in table if t == n) for n in names}
    summary = ", ".join(f"{n}: {c}" for n, c in counts.items())
    ax.set_title(f"{sched} lookup table of {service}: {len(table)} {what}s ({summary})", fontsize=8)
    ax.set_xlabel(what)


def scenario_figure(s: Series) -> Figure:
    colours = _colours(s.servers)
    strips = s.tables[:3]
    # fixed margins (in inches) rather than a layout engine: it costs a third
    # of the drawing time and the layout is the same for every scenario
    heights = [2.6, 2.6] + [0.35] * len(strips)
    gaps = [0.75, 0.75] + [0.75] * len(strips)
    top, bottom = 0.6, 0.5
    total = sum(heights) + sum(gaps[:-1]) + top + bottom
    fig = plt.figure(figsize=(10, total))
    grid = fig.add_gridspec(
        len(heights), 2, height_ratios=heights, width_ratios=[2, 1],
        left=0.075, right=0.97, top=1 - top / total, bottom=bottom / total,
        hspace=(sum(gaps[:-1]) / max(len(heights) - 1, 1)) / (sum(heights) / len(heights)), wspace=0.28,
    )
    ax_flows = fig.add_subplot(grid[0, 0])
    _flows_axes(ax_flows, s, colours)
    ax_flows.legend(loc="upper left", fontsize=7, ncols=2)
    _conns_axes(fig.add_subplot(grid[1, 0], sharex=ax_flows), s, colours)
    _share_axes(fig.add_subplot(grid[0:2, 1]), s, colours)
    for k, (service, sched, table) in enumerate(strips):
        _strip_axes(fig.add_subplot(grid[2 + k, :]), service, sched, table, colours)
    fig.suptitle(f"{s.title}  (scheduler: {', '.join(s.schedulers) or '-'})", fontsize=10)
    return fig


def compare_figure(runs: dict[str, Series], title: str = "") -> Figure:
    servers: list[str] = []
    for s in runs.values():
        servers += [n for n in s.servers if n not in servers]
    colours = _colours(servers)
    n = len(runs)
    fig, axes = plt.subplots(2, n, figsize=(3.4 * n + 0.6, 5.6), layout="constrained", squeeze=False)
    top = max((max(s.totals().values(), default=0) for s in runs.values()), default=1)
    for k, (name, s) in enumerate(runs.items()):
        totals = s.totals()
        routed = sum(totals.values()) or 1
        ax = axes[0][k]
        values = [totals.get(n_, 0) for n_ in servers]
        bars = ax.bar(range(len(servers)), values, color=[colours[n_] for n_ in servers])
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v * 100 / routed:.0f}%",
                    ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(servers)), [x.rsplit(":", 1)[0] for x in servers], rotation=45, ha="right")
        ax.set_ylim(0, top * 1.15 + 1)
        ax.set_title(f"{name}: new connections")
        ax = axes[1][k]
        for n_ in s.servers:
            ax.step(s.x, s.active[n_], where="post", color=colours[n_], linewidth=1.3)
            ax.step(s.x, s.inactive[n_], where="post", color=colours[n_], linewidth=0.9, linestyle="--")
        ax.set_title(f"{name}: active (solid) / inactive (dashed)")
        ax.set_xlabel("flow number")
        ax.grid(alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[n_]) for n_ in servers]
    fig.legend(handles, servers, loc="outside lower center", ncols=min(len(servers), 6), fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def disruption_figure(d: Disruption) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    scheds = list(d.moved)
    changes = ["remove one", "add one"]
    ideal = {"remove one": 1 / d.servers, "add one": 1 / (d.servers + 1)}
    width = 0.38
    for j, change in enumerate(changes):
        xs = [i + (j - 0.5) * width for i in range(len(scheds))]
        vals = [d.moved[s][change] * 100 for s in scheds]
        bars = ax.bar(xs, vals, width, label=f"{change} real server", color=PALETTE[j])
        for bar, v in zip(bars, vals):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.0f}%", ha="center", va="bottom", fontsize=7)
        ax.hlines([ideal[change] * 100] * len(xs), [x - width / 2 for x in xs], [x + width / 2 for x in xs],
                  colors="black", linestyles="--", linewidth=1)
    ax.plot([], [], "k--", linewidth=1, label="least possible (only the clients that must move)")
    ax.set_xticks(range(len(scheds)), scheds)
    ax.set_ylabel("clients that change real server (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"Clients moved, {d.servers} real servers, {d.clients} clients: Maglev stays near the least")
    return fig


def save(fig: Figure, path: str | Path) -> None:
    """Write the figure; the format follows the extension (.png, .svg, ...)."""
    fig.savefig(path, dpi=110)
    plt.close(fig)
