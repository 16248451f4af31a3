"""keepalived itself is the referee for what a keepalived.conf means.

tests/data/keepalived/*/ holds keepalived.conf files and what Debian's
keepalived 2.2.7 made of each in the lab kernel (``ipvsadm -S -n`` after its
checks ran; ``make keepalived-oracle`` records them).  Here lvsd reads the
same files (all of them at once, through one ``include``: their virtual
servers do not overlap) in a network namespace laid out as the VM was, and
``lvsadm -S -n`` must hold the same services with the same real servers."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PY, ROOT, can_netns, lvsadm, running_lvsd

DATA = ROOT / "tests" / "data" / "keepalived"
SERVERS = ROOT / "tests" / "health_servers.py"
CASES = sorted(d for d in DATA.iterdir() if (d / "ipvsadm-S-n.txt").exists())


def blocks(text: str) -> dict[str, list[str]]:
    """ipvsadm -S text -> {service line: [real server lines, in order]}."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("-A "):
            current = out.setdefault(line, [])
        elif line.startswith("-a "):
            current.append(line)
    return out


@pytest.fixture(scope="module")
def lab_netns() -> Iterator[str]:
    """A namespace as the lab VM: 10.1.0.0/24 and fd00:1::/64 local, the same listeners."""
    why = can_netns()
    if why:
        pytest.skip(why)
    ns = f"i12ka{uuid.uuid4().hex[:8]}"
    run = lambda *a: subprocess.run(["ip", "-n", ns, *a], check=True, capture_output=True, timeout=20)  # noqa: E731
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=20)
    procs: list[subprocess.Popen[str]] = []
    try:
        run("link", "set", "lo", "up")
        run("route", "add", "local", "10.1.0.0/24", "dev", "lo")
        run("-6", "route", "add", "local", "fd00:1::/64", "dev", "lo")
        run("addr", "add", "fd00:1::1/128", "dev", "lo", "nodad")  # IPv6 binds only to an address it has
        servers = [("http", h, "80") for h in ("10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.50", "fd00:1::1")]
        servers.append(("http", "10.1.0.21", "8080", "--paths", "/,/index.html", "--body", "pylvs lab\n"))
        for args in servers:
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, PY, str(SERVERS), *args],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            )  # fmt: skip
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield ns
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.mark.skipif(not CASES, reason="no recordings in tests/data/keepalived (make keepalived-oracle)")
def test_lvsd_makes_the_table_keepalived_made(lab_netns: str, tmp_path: Path) -> None:
    assert len(CASES) >= 10
    top = tmp_path / "all.conf"
    top.write_text("".join(f"include {d / 'keepalived.conf'}\n" for d in CASES))
    want: dict[str, list[str]] = {}
    for d in CASES:
        recorded = blocks((d / "ipvsadm-S-n.txt").read_text())
        assert not set(recorded) & set(want), f"{d.name} overlaps another case"
        want.update(recorded)
    prefix = ["ip", "netns", "exec", lab_netns]
    with running_lvsd("--keepalived-conf", str(top), "--no-nat", "--no-dr", prefix=prefix) as sock:
        deadline = time.monotonic() + 15
        got: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            got = blocks(lvsadm(sock, "-S", "-n", prefix=prefix).stdout)
            if got == want:
                break
            time.sleep(0.3)
        time.sleep(1.5)  # and it stays so once the checks have run again
        got = blocks(lvsadm(sock, "-S", "-n", prefix=prefix).stdout)
    for d in CASES:
        for service, dests in blocks((d / "ipvsadm-S-n.txt").read_text()).items():
            assert got.get(service) == dests, f"{d.name}: {service}"
    assert set(got) == set(want)
