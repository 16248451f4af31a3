"""The C library's number and address readers as glibc does them, for the
parts of ipvsadm that lean on them: ``strtol``/``strtoul`` (option values,
``/proc/net/ip_vs_conn`` fields), ``atoi``, ``sscanf``'s ``%hX`` and ``%d``,
and the lax ``inet_aton``."""

from __future__ import annotations

__all__ = ["C_SPACE", "DIGITS", "HEX_DIGITS", "atoi", "inet_aton", "scan_d", "scan_hx", "strtol", "strtoul"]

DIGITS = "0123456789"
HEX_DIGITS = "0123456789abcdefABCDEF"
#: isspace() in the C locale
C_SPACE = " \t\n\v\f\r"
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
ULONG_MAX = 2**64 - 1


def _scan(text: str, base: int) -> tuple[bool, int | None, str]:
    """What every strto* reads: C blanks, a sign, for base 16 a ``0x`` (only
    when a hex digit follows it), then digits of ``base``.  Returns (negative,
    magnitude or None when no digit was read, the text after the digits)."""
    i, n = 0, len(text)
    while i < n and text[i] in C_SPACE:
        i += 1
    negative = False
    if i < n and text[i] in "+-":
        negative = text[i] == "-"
        i += 1
    digits = DIGITS if base == 10 else HEX_DIGITS
    if base == 16 and text[i : i + 2] in ("0x", "0X") and i + 2 < n and text[i + 2] in HEX_DIGITS:
        i += 2
    start = i
    while i < n and text[i] in digits:
        i += 1
    if i == start:
        return negative, None, text
    significant = text[start:i].lstrip("0")
    if len(significant) > 20:  # beyond any long: saturate (and int() refuses 4300+ digits)
        return negative, ULONG_MAX + 1, text[i:]
    return negative, int(significant or "0", base), text[i:]


def strtol(text: str, base: int = 10) -> tuple[int | None, str]:
    """``strtol(text, &end, base)``: the value (saturated at LONG_MIN/LONG_MAX
    as ERANGE does) and what is left after it; value None when no digit was
    read (end == text)."""
    negative, magnitude, rest = _scan(text, base)
    if magnitude is None:
        return None, rest
    value = -magnitude if negative else magnitude
    return max(LONG_MIN, min(LONG_MAX, value)), rest


def strtoul(text: str, base: int = 10) -> int:
    """``strtoul(text, NULL, base)`` on a 64-bit host: 0 when no digit, ULONG_MAX
    on overflow, a negated value wrapped to unsigned."""
    negative, magnitude, _rest = _scan(text, base)
    if magnitude is None:
        return 0
    if magnitude > ULONG_MAX:
        return ULONG_MAX
    return (-magnitude) & ULONG_MAX if negative else magnitude


def atoi(text: str) -> int:
    """glibc ``atoi``: strtol's value truncated to a C int."""
    value, _rest = strtol(text)
    if value is None:
        return 0
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def scan_hx(token: str) -> int | None:
    """``sscanf``'s ``%hX``: strtoul base 16 kept to an unsigned short; None
    when nothing converts."""
    if _scan(token, 16)[1] is None:
        return None
    return strtoul(token, 16) & 0xFFFF


def scan_d(token: str) -> int | None:
    """``sscanf``'s ``%d``: strtol base 10 kept to an int; None when nothing
    converts."""
    if strtol(token)[0] is None:
        return None
    return atoi(token)


def inet_aton(text: str) -> int | None:
    """glibc (2.36) ``inet_aton``: ``a.b.c.d``, ``a.b.c``, ``a.b`` or ``a``, each
    part decimal, octal (leading 0) or hex (0x, then at least one hex digit),
    none above 2**32-1; the last part fills the remaining bytes; a blank ends
    the address and whatever follows it is ignored.  Returns the address as a
    host-order integer, or None."""
    parts: list[int] = []
    i, n = 0, len(text)
    val = 0
    while True:
        if i >= n or text[i] not in DIGITS:
            return None
        base = 10
        val = 0
        digit = False
        if text[i] == "0":
            i += 1
            if i < n and text[i] in "xX":
                base = 16
                i += 1
            else:
                base = 8
                digit = True
        while i < n:
            c = text[i]
            if c in DIGITS:
                if base == 8 and c in "89":
                    return None
                val = val * base + int(c)
            elif base == 16 and c in HEX_DIGITS:
                val = (val << 4) | int(c, 16)
            else:
                break
            if val > 0xFFFFFFFF:
                return None
            digit = True
            i += 1
        if not digit:
            return None
        if i < n and text[i] == ".":
            if len(parts) > 2 or val > 0xFF:
                return None
            parts.append(val)
            i += 1
            continue
        break
    if i < n and text[i] not in C_SPACE:
        return None
    if val > (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)[len(parts)]:
        return None
    result = val
    for k, part in enumerate(parts):
        result |= part << (24 - 8 * k)
    return result


