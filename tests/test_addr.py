"""lvs.addr's pure inet_pton/inet_ntop against the C library's (through socket)."""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from lvs.addr import format_ip, inet_pton, parse_ip
from lvs.constants import AF_INET, AF_INET6


def libc_pton(af: int, text: str) -> int | None:
    try:
        return int.from_bytes(socket.inet_pton(af, text), "big")
    except (OSError, ValueError, UnicodeError):
        return None


def test_family_numbers_are_linux() -> None:
    assert (AF_INET, AF_INET6) == (socket.AF_INET, socket.AF_INET6)


ADDRESS_TEXT = st.text(alphabet="0123456789abcdefABCDEF:.%x \u0661", max_size=46)


@settings(max_examples=1500)
@given(ADDRESS_TEXT)
def test_pton_matches_libc_on_any_text(text: str) -> None:
    for af in (AF_INET, AF_INET6):
        assert inet_pton(af, text) == libc_pton(af, text)


def _v6_value(words: list[int]) -> int:
    value = 0
    for word in words:
        value = value << 16 | word
    return value


V6_VALUES = st.one_of(
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x1234]), min_size=8, max_size=8).map(_v6_value),
    st.integers(0, (1 << 128) - 1),
    st.integers(0, 0xFFFFFFFF).map(lambda v: 0xFFFF << 32 | v),  # IPv4-mapped
    st.integers(0, 0xFFFFFFFF),  # IPv4-compatible
)


@settings(max_examples=800)
@given(V6_VALUES)
def test_ntop6_matches_libc_and_round_trips(value: int) -> None:
    text = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    assert format_ip(AF_INET6, value) == text
    assert inet_pton(AF_INET6, text) == value
    for variant in (text.upper(), text.replace("::", ":0:", 1), text + ":", ":" + text, text.replace(":", "::", 1)):
        assert inet_pton(AF_INET6, variant) == libc_pton(AF_INET6, variant)


@given(st.integers(0, 0xFFFFFFFF))
def test_ntop4_matches_libc(value: int) -> None:
    text = socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    assert format_ip(AF_INET, value) == text
    assert parse_ip(text) == (AF_INET, value)


def test_parse_ip_refuses_what_inet_pton_refuses() -> None:
    for bad in ("10.1", "010.0.0.1", "1.2.3.4 ", "fe80::1%lo", "1:2:3:4:5:6:7:8::", ""):
        try:
            parse_ip(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} parsed")
