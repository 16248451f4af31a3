"""keepalived's LVS policy (lvs/health.py) and its config reader
(lvs/keepalived_conf.py), driven with a virtual clock: no sockets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvs.ctl import IPVS
from lvs.health import HealthMonitor
from lvs.ipvsadm.listing import save_rules
from lvs.keepalived_conf import KeepalivedConfError, parse_keepalived

BASE = """
virtual_server 10.0.0.1 80 {{
    delay_loop 2
    lb_algo rr
    lb_kind NAT
    protocol TCP
{vs_extra}
    real_server 10.1.0.1 8080 {{
        weight 2
        TCP_CHECK {{ connect_timeout 1 }}
    }}
    real_server 10.1.0.2 8080 {{
{rs2_extra}
        TCP_CHECK {{
            connect_timeout 1
            retry 2
            delay_before_retry 1
        }}
    }}
}}
"""


def build(vs_extra: str = "", rs2_extra: str = "") -> tuple[IPVS, HealthMonitor]:
    cfg = parse_keepalived(BASE.format(vs_extra=vs_extra, rs2_extra=rs2_extra), "k.conf")
    ipvs = IPVS()
    mon = HealthMonitor(ipvs, cfg.services, random.Random(1))
    mon.start(0.0)
    return ipvs, mon


def dests(ipvs: IPVS) -> dict[str, int]:
    """real server -> weight, from ipvsadm -S -n."""
    out = {}
    for line in save_rules(ipvs, numeric=True).splitlines():
        if line.startswith("-a"):
            parts = line.split()
            out[parts[4]] = int(parts[parts.index("-w") + 1])
    return out


def run(mon: HealthMonitor, now: float, ok: dict[str, bool]) -> None:
    """Every checker due by ``now`` gets its outcome from ``ok`` (by target)."""
    for chk in mon.due(now):
        good = ok.get(chk.target(), True)
        mon.result(chk, good, "" if good else "connection refused", now)


def settle(mon: HealthMonitor, start: float, end: float, ok: dict[str, bool], step: float = 0.25) -> float:
    t = start
    while t <= end:
        run(mon, t, ok)
        t += step
    return t


def test_defaults_and_start_table() -> None:
    ipvs, mon = build()
    assert dests(ipvs) == {"10.1.0.1:8080": 2, "10.1.0.2:8080": 1}
    chk1, chk2 = mon.checkers
    assert (chk1.retry, chk1.delay_before_retry, chk1.delay_loop, chk1.warmup) == (1, 1.0, 2.0, 2.0)
    assert (chk2.retry, chk2.delay_before_retry) == (2, 1.0)
    # first check: bootstrap second plus a random part of warmup
    assert all(1.0 <= c.due <= 3.0 for c in mon.checkers)


def test_retry_then_removed_then_back() -> None:
    ipvs, mon = build()
    t = settle(mon, 0, 4, {})  # every checker has passed once
    down = {"10.1.0.2:8080": False}
    fails = 0
    while "10.1.0.2:8080" in dests(ipvs):
        for chk in mon.due(t):
            good = down.get(chk.target(), True)
            fails += chk.target() == "10.1.0.2:8080"
            mon.result(chk, good, "" if good else "connection refused", t)
        t += 0.25
        assert t < 30
    assert fails == 3  # retry 2: the third failure in a row removes it
    text = [o.text for o in mon.outbox]
    assert "TCP_CHECK on service [10.1.0.2]:tcp:8080 failed after 2 retries: connection refused." in text
    assert "Removing service [10.1.0.2]:tcp:8080 from VS [10.0.0.1]:tcp:80" in text
    rs = mon.find(mon.vss[0].conf.keys[0], 2, 0x0A010002, 8080)
    assert rs is not None and mon.health_of(rs)["state"] == "down"
    assert mon.health_of(rs)["last_failure"] == "connection refused"
    settle(mon, t, t + 3, {})
    assert dests(ipvs) == {"10.1.0.1:8080": 2, "10.1.0.2:8080": 1}
    assert "Adding service [10.1.0.2]:tcp:8080 to VS [10.0.0.1]:tcp:80" in [o.text for o in mon.outbox]


def test_first_failure_is_enough_at_start() -> None:
    ipvs, mon = build()
    settle(mon, 0, 3.1, {"10.1.0.2:8080": False})
    assert dests(ipvs) == {"10.1.0.1:8080": 2}


def test_inhibit_on_failure_sets_weight_zero() -> None:
    ipvs, mon = build(vs_extra="    inhibit_on_failure")
    t = settle(mon, 0, 3.1, {"10.1.0.1:8080": False})
    assert dests(ipvs) == {"10.1.0.1:8080": 0, "10.1.0.2:8080": 1}
    assert any(o.text.startswith("Disabling service [10.1.0.1]:tcp:8080 of VS") for o in mon.outbox)
    settle(mon, t, t + 3, {})
    assert dests(ipvs) == {"10.1.0.1:8080": 2, "10.1.0.2:8080": 1}


def test_alpha_starts_without_real_servers() -> None:
    ipvs, mon = build(vs_extra="    alpha")
    assert dests(ipvs) == {}
    settle(mon, 0, 3.1, {"10.1.0.2:8080": False})
    assert dests(ipvs) == {"10.1.0.1:8080": 2}


def test_quorum_loss_puts_the_sorry_server_in_and_out() -> None:
    extra = "    quorum 3\n    sorry_server 10.9.9.9 8080\n    quorum_up /bin/up\n    quorum_down /bin/down"
    ipvs, mon = build(vs_extra=extra)
    t = settle(mon, 0, 3.1, {})
    assert dests(ipvs) == {"10.1.0.1:8080": 2, "10.1.0.2:8080": 1}
    t = settle(mon, t, t + 6, {"10.1.0.2:8080": False})
    assert dests(ipvs) == {"10.9.9.9:8080": 1}
    texts = [o.text for o in mon.outbox]
    assert "Lost quorum 3-0=3 > 2 for VS [10.0.0.1]:tcp:80" in texts
    assert "Adding sorry server [10.9.9.9]:tcp:8080 to VS [10.0.0.1]:tcp:80" in texts
    assert ("script", "/bin/down") in [(o.kind, o.text) for o in mon.outbox]
    assert mon.status()[0]["quorum_up"] is False
    settle(mon, t, t + 4, {})
    assert dests(ipvs) == {"10.1.0.1:8080": 2, "10.1.0.2:8080": 1}
    texts = [o.text for o in mon.outbox]
    assert "Gained quorum 3+0=3 <= 3 for VS [10.0.0.1]:tcp:80" in texts
    assert "Removing sorry server [10.9.9.9]:tcp:8080 from VS [10.0.0.1]:tcp:80" in texts


def test_sorry_server_inhibit_stays_at_weight_zero() -> None:
    extra = "    quorum 3\n    sorry_server 10.9.9.9 8080\n    sorry_server_inhibit"
    ipvs, mon = build(vs_extra=extra)
    assert dests(ipvs) == {"10.1.0.1:8080": 2, "10.1.0.2:8080": 1, "10.9.9.9:8080": 0}
    settle(mon, 0, 8, {"10.1.0.2:8080": False})
    assert dests(ipvs) == {"10.9.9.9:8080": 1}


def test_hysteresis() -> None:
    ipvs, mon = build(vs_extra="    quorum 2\n    hysteresis 1\n    sorry_server 10.9.9.9 8080")
    t = settle(mon, 0, 3.1, {})
    # live weight 3: lost below quorum - hysteresis = 1, i.e. only when 0 is left
    t = settle(mon, t, t + 6, {"10.1.0.1:8080": False})
    assert dests(ipvs) == {"10.1.0.2:8080": 1}
    t = settle(mon, t, t + 6, {"10.1.0.1:8080": False, "10.1.0.2:8080": False})
    assert dests(ipvs) == {"10.9.9.9:8080": 1}
    # gained only at quorum + hysteresis = 3: the weight-1 server alone is not enough
    t = settle(mon, t, t + 4, {"10.1.0.1:8080": False})
    assert dests(ipvs) == {"10.9.9.9:8080": 1}
    settle(mon, t, t + 4, {})
    assert dests(ipvs) == {"10.1.0.1:8080": 2, "10.1.0.2:8080": 1}


def test_misc_dynamic_sets_weight() -> None:
    conf = """
virtual_server 10.0.0.1 80 {
    protocol TCP
    real_server 10.1.0.1 80 {
        MISC_CHECK {
            misc_path "/bin/check arg"
            misc_dynamic
        }
    }
}
"""
    ipvs = IPVS()
    mon = HealthMonitor(ipvs, parse_keepalived(conf).services, random.Random(0))
    mon.start(0.0)
    (chk,) = mon.checkers
    assert chk.retry == 0 and chk.delay_loop == 60.0
    t = 100.0
    for code, want in ((7, {"10.1.0.1:80": 5}), (0, {"10.1.0.1:80": 1}), (1, {}), (12, {"10.1.0.1:80": 10})):
        mon.due(t)
        mon.result(chk, code == 0, f"exited with status {code}", t, exit_code=code)
        assert dests(ipvs) == want, code
        t += 60


def test_parser_errors_name_file_and_line() -> None:
    with pytest.raises(KeepalivedConfError, match=r"^k.conf:2: block 'virtual_server' is missing"):
        parse_keepalived("\nvirtual_server 10.0.0.1 80 {\n protocol TCP\n", "k.conf")
    with pytest.raises(KeepalivedConfError, match=r"^k.conf:1: invalid address '10.0.0.300'"):
        parse_keepalived("virtual_server 10.0.0.300 80 {\n}\n", "k.conf")
    bad_sched = "virtual_server 10.0.0.1 80 {\n lb_algo nope\n real_server 10.1.0.1 80\n}\n"
    with pytest.raises(KeepalivedConfError, match=r"^k.conf:2: Invalid lvs_scheduler 'nope'"):
        parse_keepalived(bad_sched, "k.conf")


def test_parser_warnings_includes_groups_fwmark_v6() -> None:
    main = """# comment
global_defs { router_id X }
vrrp_instance V { state MASTER }
include conf.d/*.conf
virtual_server_group G {
    10.0.0.1-3 80
}
virtual_server group G {
    protocol TCP
    lb_kind DR
    persistence_timeout 600
    persistence_granularity 255.255.255.0
    real_server 10.1.0.1 80 {
        weight 3
        frobnicate 1
    }
}
"""
    extra = """virtual_server fwmark 7 {
    lb_algo sh
    sh-port
    lb_kind TUN type gue port 6080 csum
    real_server 10.2.0.1 0 { }
}
virtual_server fd00::1 443 {
    protocol TCP
    lb_algo wrr
    real_server fd00::2 8443 { lthreshold 5
       uthreshold 10 }
}
"""
    seen = []

    def include(pattern: str, parent: str) -> list[tuple[str, str]]:
        seen.append((pattern, parent))
        return [("conf.d/a.conf", extra)]

    cfg = parse_keepalived(main, "main.conf", include)
    assert seen == [("conf.d/*.conf", "main.conf")]
    assert cfg.skipped == [
        "skipped global_defs, vrrp_instance: not lvsd's part; `keepalived --vrrp` runs them"
    ]
    assert cfg.warnings == ["main.conf:15: unknown keyword 'frobnicate'"]
    ipvs = IPVS()
    HealthMonitor(ipvs, cfg.services).start(0.0)
    assert save_rules(ipvs, numeric=True).splitlines() == [
        "-A -t 10.0.0.1:80 -s wlc -p 600 -M 255.255.255.0",
        "-a -t 10.0.0.1:80 -r 10.1.0.1:80 -g -w 3",
        "-A -t 10.0.0.2:80 -s wlc -p 600 -M 255.255.255.0",
        "-a -t 10.0.0.2:80 -r 10.1.0.1:80 -g -w 3",
        "-A -t 10.0.0.3:80 -s wlc -p 600 -M 255.255.255.0",
        "-a -t 10.0.0.3:80 -r 10.1.0.1:80 -g -w 3",
        "-A -t [fd00::1]:443 -s wrr",
        "-a -t [fd00::1]:443 -r [fd00::2]:8443 -m -w 1",
        "-A -f 7 -s sh -b sh-port",
        "-a -f 7 -r 10.2.0.1:0 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum",
    ]


def test_reload_keeps_state_of_unchanged_servers() -> None:
    ipvs, mon = build()
    t = settle(mon, 0, 6, {"10.1.0.2:8080": False})
    assert dests(ipvs) == {"10.1.0.1:8080": 2}
    cfg = parse_keepalived(BASE.format(vs_extra="", rs2_extra="") + BASE.replace("10.0.0.1 80", "10.0.0.9 80").format(
        vs_extra="", rs2_extra=""), "k.conf")  # fmt: skip
    new = HealthMonitor(ipvs, cfg.services, random.Random(2))
    new.adopt(mon, t)
    from lvs.config import Config, apply_config

    changes = apply_config(ipvs, Config(services=new.desired_table()), t)
    new.resync_flags()
    assert all("10.0.0.9" in c or "add real server to TCP 10.0.0.9:80" in c for c in changes), changes
    assert "-a -t 10.0.0.1:80 -r 10.1.0.2:8080" not in save_rules(ipvs, numeric=True)
    settle(new, t, t + 5, {})
    assert "-a -t 10.0.0.1:80 -r 10.1.0.2:8080 -m -w 1" in save_rules(ipvs, numeric=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.booleans()), min_size=1, max_size=60))
def test_table_always_matches_alive_state(steps: list[tuple[int, bool]]) -> None:
    """Whatever the outcomes, the table holds exactly the live real servers
    (inhibited ones at weight 0), as keepalived keeps it."""
    for inhibit in (False, True):
        ipvs, mon = build(vs_extra="    inhibit_on_failure" if inhibit else "")
        t = 10.0
        for which, good in steps:
            chk = mon.checkers[which]
            chk.running = True
            mon.result(chk, good, "x", t)
            t += 1
            table = dests(ipvs)
            for rs in mon.vss[0].rs:
                name = f"10.1.0.{rs.conf.addr & 0xFF}:8080"
                if rs.alive:
                    assert table.get(name) == rs.effective_weight
                elif inhibit:
                    assert table.get(name) == 0
                else:
                    assert name not in table
            assert all(rs.alive == (rs.num_failed_checkers == 0) for rs in mon.vss[0].rs)


def test_omega_scripts_and_log_all_failures() -> None:
    extra = "    omega\n    quorum_down /bin/qdown"
    rs2 = "        notify_down /bin/down2"
    _, mon = build(vs_extra=extra, rs2_extra=rs2)
    assert mon.shutdown_scripts() == ["/bin/down2", "/bin/qdown"]
    _, plain = build(rs2_extra=rs2)
    assert plain.shutdown_scripts() == []
    cfg = parse_keepalived(BASE.format(vs_extra="", rs2_extra="").replace(
        "retry 2", "retry 2\n            log_all_failures"), "k.conf")  # fmt: skip
    mon = HealthMonitor(IPVS(), cfg.services, random.Random(1))
    mon.start(0.0)
    t = settle(mon, 0, 4, {})
    settle(mon, t, t + 1.5, {"10.1.0.2:8080": False})
    assert any(
        o.text.startswith("TCP_CHECK attempt on service [10.1.0.2]:tcp:8080 failed") for o in mon.outbox
    )
