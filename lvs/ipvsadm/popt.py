"""libpopt 1.19's option parsing as ipvsadm uses it (no aliases, no config
files, no ``POSIXLY_CORRECT``).

``--long``, ``--long=value``, bundled short letters (``-Ln``), a short
option's value glued (``-w5``, ``-w=5``) or in the next argument (taken even
when it starts with ``-``), an optional value taken only when the next
argument does not start with ``-``, ``--`` ending the options, every other
word kept as a leftover, and ``!#:+`` in a value replaced by the next free
word.  Long names must be spelled out in full; a single dash always means
short letters (ipvsadm has no one-dash long options).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "NONE",
    "OPTIONAL",
    "REASON",
    "STRING",
    "NoWordToTake",
    "Opt",
    "OptionTable",
    "Popt",
    "PoptError",
]

#: argument kinds (POPT_ARG_NONE, POPT_ARG_STRING, POPT_ARG_STRING|POPT_ARGFLAG_OPTIONAL)
NONE, STRING, OPTIONAL = 0, 1, 2

# popt's error codes and their texts (poptStrerror).
ERROR_NOARG = -10
ERROR_BADOPT = -11
ERROR_UNWANTEDARG = -12
REASON = {
    ERROR_NOARG: "missing argument",
    ERROR_BADOPT: "unknown option",
    ERROR_UNWANTEDARG: "option does not take an argument",
}
#: popt's "next argument" expansion in a value
EXPAND = "!#:+"


@dataclass(frozen=True)
class Opt:
    long: str
    short: str  # one letter, or "" for long-only options
    kind: int
    tag: str  # what poptGetNextOpt hands back


class OptionTable:
    """An option table: popt takes the first entry of a name or a letter."""

    def __init__(self, options: tuple[Opt, ...]) -> None:
        self.by_long: dict[str, Opt] = {}
        self.by_short: dict[str, Opt] = {}
        for opt in options:
            self.by_long.setdefault(opt.long, opt)
            if opt.short:
                self.by_short.setdefault(opt.short, opt)


class PoptError(Exception):
    """poptGetNextOpt returned an error ``code`` (see :data:`REASON`)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class NoWordToTake(Exception):
    """``!#:+`` with no free word left but option words after it: the real
    popt loops forever there."""


class Popt:
    """A popt context over one argument vector (argv[0] excluded)."""

    def __init__(self, table: OptionTable, args: list[str]) -> None:
        self.table = table
        self.args = args
        self.next = 0
        self.chars: str | None = None  # rest of a bundle of short letters
        self.rest_leftover = False  # after "--"
        self.leftovers: list[str] = []
        self.taken: set[int] = set()  # words consumed by "!#:+"

    def bad_option(self) -> str:
        """poptBadOption: the word read last."""
        return self.args[self.next - 1] if self.next > 0 else ""

    def next_opt(self) -> tuple[Opt, str | None] | None:
        """poptGetNextOpt: the next option and its value, None at the end;
        raises :class:`PoptError` (or :class:`NoWordToTake`)."""
        args = self.args
        while True:
            long_arg: str | None = None
            opt: Opt | None = None
            if self.chars is None:
                if self.next == len(args):
                    return None
                if self.next in self.taken:
                    self.next += 1
                    continue
                word = args[self.next]
                self.next += 1
                if self.rest_leftover or not word.startswith("-") or word == "-":
                    self.leftovers.append(word)
                    continue
                if word == "--":
                    self.rest_leftover = True
                    continue
                if word.startswith("--"):
                    name, eq, value = word[2:].partition("=")
                    if eq:
                        long_arg = value
                    opt = self.table.by_long.get(name)
                    if opt is None:
                        raise PoptError(ERROR_BADOPT)
                else:
                    self.chars = word[1:]
            if opt is None:
                assert self.chars is not None
                letter, rest = self.chars[0], self.chars[1:]
                self.chars = rest or None
                opt = self.table.by_short.get(letter)
                if opt is None:
                    raise PoptError(ERROR_BADOPT)
            return opt, self._value(opt, long_arg)

    def _value(self, opt: Opt, long_arg: str | None) -> str | None:
        if opt.kind == NONE:
            if long_arg is not None or (self.chars is not None and self.chars.startswith("=")):
                raise PoptError(ERROR_UNWANTEDARG)
            return None
        if long_arg is not None:
            return self._expand(long_arg)
        if self.chars is not None:
            glued = self.chars[1:] if self.chars.startswith("=") else self.chars
            self.chars = None
            return self._expand(glued)
        if self.next == len(self.args):
            if opt.kind == OPTIONAL:
                return None
            raise PoptError(ERROR_NOARG)
        word = self.args[self.next]
        if opt.kind == OPTIONAL and word.startswith("-"):
            return None
        self.next += 1
        return self._expand(word)

    def _expand(self, value: str) -> str:
        """popt's expandNextArg: each ``!#:+`` becomes the next word that is
        neither an option nor already taken (the same word for all of them)."""
        if EXPAND not in value:
            return value
        out: list[str] = []
        found: str | None = None
        i = 0
        while i < len(value):
            if value.startswith(EXPAND, i):
                if found is None:
                    found = self._take_next_word()
                if found is not None:
                    out.append(found)
                    i += len(EXPAND)
                    continue
            out.append(value[i])
            i += 1
        return "".join(out)

    def _take_next_word(self) -> str | None:
        if self.next == len(self.args):
            return None
        for i in range(self.next, len(self.args)):
            if i in self.taken or self.args[i].startswith("-"):
                continue
            self.taken.add(i)
            return self.args[i]
        raise NoWordToTake
