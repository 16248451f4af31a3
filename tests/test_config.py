"""YAML configuration: errors name file, line and field; applying a file
changes only what differs, so unchanged services keep their connections."""

from __future__ import annotations

import pytest

from lvs.addr import parse_ip
from lvs.config import ConfigError, apply_config, parse_config
from lvs.constants import CONN_F_MASQ, IPPROTO_UDP
from lvs.core import FORWARD, Director
from lvs.model import Flow, ServiceKey
from lvsd.config import load_config

BASE = """
sysctl:
  expire_nodest_conn: 1
timeouts: {tcp: 901, tcpfin: 121, udp: 301}
services:
  - udp: 10.0.0.2:53
    scheduler: rr
    realservers:
      - {address: 10.1.0.1:53, method: masq, weight: 1}
      - {address: 10.1.0.2:53, method: masq, weight: 2}
  - tcp: 10.0.0.1:80
    scheduler: wlc
    persistent: 300
    netmask: 255.255.255.0
    realservers:
      - {address: 10.1.0.3:80, method: route}
"""


def key(proto: int, text: str, port: int) -> ServiceKey:
    af, addr = parse_ip(text)
    return ServiceKey(af, proto, addr, port)


def test_load_and_apply_builds_the_table() -> None:
    d = Director()
    changes = apply_config(d.ipvs, parse_config(BASE), 0.0)
    assert "sysctl expire_nodest_conn=1" in changes
    assert d.ipvs.get_timeouts() == (901, 121, 301)
    svc = d.ipvs.get(key(IPPROTO_UDP, "10.0.0.2", 53))
    assert svc is not None and svc.sched_name == "rr"
    assert [dst.weight for dst in svc.destinations] == [2, 1]  # last listed is newest, as with ipvsadm -a
    assert all(dst.fwd_method == CONN_F_MASQ for dst in svc.destinations)


def test_reapplying_an_unchanged_file_changes_nothing_and_keeps_connections() -> None:
    d = Director()
    cfg = parse_config(BASE)
    apply_config(d.ipvs, cfg, 0.0)
    af, vaddr = parse_ip("10.0.0.2")
    _, caddr = parse_ip("10.2.0.1")
    v = d.process_in(Flow(af, IPPROTO_UDP, caddr, 5000, vaddr, 53), 1.0, 0, 36)
    assert v.action == FORWARD
    assert apply_config(d.ipvs, cfg, 2.0) == []
    assert len(d.conns) == 1
    assert sum(x.inactconns for x in d.ipvs.get(key(IPPROTO_UDP, "10.0.0.2", 53)).destinations) == 1


def test_reload_applies_the_difference_only() -> None:
    d = Director()
    apply_config(d.ipvs, parse_config(BASE), 0.0)
    udp_before = d.ipvs.get(key(IPPROTO_UDP, "10.0.0.2", 53))
    changed = BASE.replace("{address: 10.1.0.2:53, method: masq, weight: 2}", "{address: 10.1.0.2:53, method: masq, weight: 5}")
    changed = changed.replace("      - {address: 10.1.0.3:80, method: route}\n", "      - {address: 10.1.0.4:80, method: route}\n")
    changes = apply_config(d.ipvs, parse_config(changed), 1.0)
    assert d.ipvs.get(key(IPPROTO_UDP, "10.0.0.2", 53)) is udp_before
    assert any(c.startswith("edit real server 10.1.0.2:53") for c in changes)
    assert any(c.startswith("delete real server 10.1.0.3:80") for c in changes)
    assert not any("service" in c and c.startswith(("add service", "delete service")) for c in changes)


def test_services_missing_from_the_file_are_deleted() -> None:
    d = Director()
    apply_config(d.ipvs, parse_config(BASE), 0.0)
    apply_config(d.ipvs, parse_config("services: []\n"), 1.0)
    assert not d.ipvs.services


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("services:\n  - tcp: 10.0.0.1:80\n    schedular: rr\n", "cfg.yaml:3: services[0]: unknown field 'schedular'"),
        ("services:\n  - tcp: 10.0.0.1\n", "cfg.yaml:2: services[0].tcp:"),
        ("services:\n  - tcp: 10.0.0.1:80\n    realservers:\n      - {address: 1.2.3.4:80, weight: -1}\n",
         "cfg.yaml:4: services[0].realservers[0].weight: must be an integer"),
        ("sysctl:\n  no_such: 1\n", "cfg.yaml:2: sysctl.no_such: unknown sysctl"),
        ("services:\n  - tcp: 10.0.0.1:0\n", "cfg.yaml:2: services[0]: Zero port specified for non-persistent service"),
        ("services: [\n", "cfg.yaml:2: not valid YAML"),
        ("services:\n  - tcp: 10.0.0.1:80\n    flags: [nosuch]\n", "invalid scheduler flag `nosuch'"),
        ("services:\n  - tcp: 10.0.0.1:80\n    realservers:\n      - {address: 1.2.3.4:80, method: masq, tunnel: {type: gre}}\n",
         "Tunnel options conflict with forward method"),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_field(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml")
    assert where in str(info.value)


def test_unknown_scheduler_fails_at_apply_and_keeps_earlier_state() -> None:
    d = Director()
    apply_config(d.ipvs, parse_config(BASE), 0.0)
    bad = BASE.replace("scheduler: wlc", "scheduler: nosuch")
    with pytest.raises(ConfigError, match="Scheduler or persistence engine not found"):
        apply_config(d.ipvs, parse_config(bad), 1.0)
    assert d.ipvs.get(key(6, "10.0.0.1", 80)).sched_name == "wlc"


def test_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="No such file"):
        load_config(str(tmp_path / "absent.yaml"))
