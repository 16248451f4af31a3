"""docs/teaching.md works: every command runs (``lvsadm simulate ...``, in
process), every "Look for" line is in its section's output, every lab link
sets the lab up, and every scheduler has its exercise."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from lvs.sched import SCHEDULER_NAMES
from teaching.labsession import LabSession

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "teaching.md").read_text()
SECTIONS = re.split(r"^### ", DOC, flags=re.M)[1:]


def section_id(text: str) -> str:
    return text.split("\n", 1)[0].split(":")[0].strip()


def test_every_scheduler_has_an_exercise() -> None:
    names = {section_id(s) for s in SECTIONS}
    assert set(SCHEDULER_NAMES) <= names
    for s in SECTIONS:
        if section_id(s) in SCHEDULER_NAMES:
            assert "Try:" in s and "Look for:" in s and "Kernel: `ip_vs_" in s, section_id(s)


@pytest.mark.parametrize("section", SECTIONS, ids=[section_id(s) for s in SECTIONS])
def test_commands_and_look_for(section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="--plot and --disruption need the teach extra")
    from lvsd.simulate import main

    monkeypatch.chdir(ROOT)
    commands = [line.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)
                for line in block.splitlines() if line.strip()]
    assert commands
    output = ""
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[:2] == ["lvsadm", "simulate"], cmd
        args = argv[2:]
        if "--plot" in args:  # write pictures to the test's directory
            k = args.index("--plot") + 1
            args[k] = str(tmp_path / args[k])
        assert main(args) == 0, cmd
        captured = capsys.readouterr()
        output += captured.out
    for look in re.findall(r"Look for: `([^`]+)`", section):
        assert look in output, look


LINKS = re.findall(r"http://127\.0\.0\.1:8014/\?\S+", DOC)


def test_there_are_lab_links() -> None:
    assert len(LINKS) >= 5


@pytest.mark.parametrize("link", LINKS)
def test_lab_links_set_the_lab_up(link: str) -> None:
    """What the page does with a link's query (lab.js ``preset``), done on a session."""
    q = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
    lab = LabSession()
    lab.service(q["scheduler"], [f for f in q.get("flags", "").split(",") if f], q.get("proto", "udp"),
                persistent=int(q.get("persistent", 0)), one_packet=q.get("one_packet") == "1")
    servers = [spec.split("*") for spec in q["servers"].split(",")]
    for server, weight in servers:
        lab.add_server(server, int(weight))
    lab.send("10.2.0.1", 9, many=True)
    st = lab.state()
    assert [s["server"] for s in st["servers"]] == [s for s, _ in servers]
    assert st["flows"] == 9
    assert all(d["explain"] for d in st["decisions"])
