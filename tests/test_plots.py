"""``lvsadm simulate --plot`` writes a PNG and an SVG for every scenario in
tests/data; ``--compare`` and the disruption view give the numbers they draw.
All in one process on matplotlib's Agg backend."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="plots need the teach extra (pip install -e '.[teach]')")

from teaching import plots, series

DATA = Path(__file__).parent / "data"
SCENARIOS = sorted(p.stem for p in (DATA / "scenarios").glob("*.scn"))


def test_plot_every_scenario_png_and_svg(tmp_path: Path) -> None:
    for name in SCENARIOS:
        lines = (DATA / "scenarios" / f"{name}.scn").read_text().splitlines()
        s = series.collect(lines, name)
        assert s.servers, name
        fig = plots.scenario_figure(s)
        png, svg = tmp_path / f"{name}.png", tmp_path / f"{name}.svg"
        fig.savefig(png, dpi=50)
        fig.savefig(svg)
        plots.plt.close(fig)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        text = svg.read_text()
        assert "new connections per real server" in text
        for server in s.servers:
            assert server in text
        assert ("lookup table" in text) == bool(s.tables), name
        if name.startswith(("dh-", "sh-", "mh-")):
            assert s.tables, name


def test_series_counts_match_the_report() -> None:
    from collections import Counter

    from lvs.simulate import Simulation

    lines = (DATA / "scenarios" / "wlc-tcp.scn").read_text().splitlines()
    s = series.collect(lines, "wlc-tcp")
    got: list[dict] = []
    Simulation().run(lines, got.append)
    assert s.totals() == dict(Counter(d["real_server"] for d in got if "i" in d and d["real_server"]))
    # the last sample's active/inactive are the table's at the end
    last = {n: (s.active[n][-1], s.inactive[n][-1]) for n in s.servers}
    assert last["10.1.0.1:80"] == (22, 10)
    # table changes between flows are marked where they happen
    fo = series.collect((DATA / "scenarios" / "fo-tcp.scn").read_text().splitlines(), "fo-tcp")
    assert (16, "-e 10.1.0.4:80 w=0") in fo.marks
    assert fo.totals()["10.1.0.4:80"] == 15


def test_compare_reschedules_every_service() -> None:
    lines = (DATA / "scenarios" / "wlc-tcp.scn").read_text().splitlines()
    rewritten = series.with_scheduler(lines, "mh")
    assert "ipvsadm -A -t 10.0.0.1:80 -s mh" in rewritten
    runs = {n: series.collect(series.with_scheduler(lines, n), n) for n in ("rr", "wlc", "mh")}
    assert runs["wlc"].totals() == {"10.1.0.1:80": 32, "10.1.0.2:80": 17, "10.1.0.3:80": 25, "10.1.0.4:80": 26}
    assert runs["rr"].schedulers == ["rr"] and runs["mh"].schedulers == ["mh"]
    table = series.compare_table(runs)
    assert table[0].split() == ["real", "server", "rr", "wlc", "mh"]


def test_disruption_shows_the_maglev_result() -> None:
    d = series.disruption(servers=5, clients=2000)
    # Maglev moves little more than the clients that must move (1/5, 1/6);
    # dh and sh deal buckets round the list, so most clients move
    assert d.moved["mh"]["remove one"] == pytest.approx(0.2, abs=0.05)
    assert d.moved["mh"]["add one"] == pytest.approx(1 / 6, abs=0.05)
    for sched in ("dh", "sh"):
        assert d.moved[sched]["remove one"] > 0.6
        assert d.moved[sched]["add one"] > 0.6


def test_cli_plot(tmp_path: Path) -> None:
    """As a user runs it: ``lvsadm simulate --report --plot FILE.svg`` in a subprocess."""
    scn = str(DATA / "scenarios" / "sh-udp.scn")
    out = tmp_path / "a.svg"
    proc = subprocess.run([sys.executable, "-m", "lvsd.cli", "simulate", "--report", "--plot", str(out), scn],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stderr
    assert "real server" in proc.stdout
    assert "sh lookup table" in out.read_text()


def test_cli_compare_disruption_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lvsd.simulate import main

    scn = str(DATA / "scenarios" / "sh-udp.scn")
    assert main(["--compare", "rr,wlc,mh", "--plot", str(tmp_path / "b.png"), scn]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["real", "server", "rr", "wlc", "mh"]
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["--disruption", "--servers", "3", "--plot", str(tmp_path / "c.svg")]) == 0
    out = capsys.readouterr().out
    assert "least possible: 33.3% on removal, 25.0% on addition" in out
    assert "Clients moved" in (tmp_path / "c.svg").read_text()
    assert main(["--compare", "rr,nope", scn]) == 2
    err = capsys.readouterr().err
    assert "unknown scheduler 'nope'" in err
    assert main(["--plot", "/nonexistent/x.png", scn]) == 2
    assert "cannot write /nonexistent/x.png" in capsys.readouterr().err
