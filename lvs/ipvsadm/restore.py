"""``ipvsadm -R``: rules read from stdin, one invocation per line
(ipvsadm.c ``restore_table`` over config_stream.c ``config_stream_read``).

How the real tool cuts its input, reproduced here:

* Words are runs of characters other than space, tab, CR and LF (no
  quoting; vertical tab and form feed are part of words).  A word longer than
  4096 characters is cut into 4096-character words.
* Every word spelled exactly ``ipvsadm`` is dropped, wherever it stands.
* A line ends at LF.  A line left with no words is skipped.
* ``#`` is *not* special.  config_stream.c means to drop everything from a
  word containing ``#`` to the end of the line, but it looks for the ``#``
  in the blank that follows the word instead of in the word, so it never
  finds one: a comment line reaches the option parser as words (and, having
  no option, stops the whole run with popt's "Try `ipvsadm -h'..." and
  status 255), a trailing comment is an "unexpected argument".  That is why
  ``ipvsadm-restore`` strips ``^#`` lines with grep first.  Checked against
  the Debian ipvsadm 1.31 binary.
* At the end of the input: a last line without LF still counts, unless it
  ends in two or more blanks (the reader then meets the end while skipping
  blanks and throws the line away).

Each line then runs as its own ``ipvsadm`` invocation: errors that make
ipvsadm exit (usage errors, a nested ``-R``, ``-h``, a missing service in
``-L``) end the whole run with their status; errors it returns from (kernel
refusals, popt errors after the command) are printed and the run goes on.
The run's status is the last line's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["MAX_WORD", "read_invocations", "restore_table"]

#: config_stream.c's MAX_LINE_LENGTH: the longest word fscanf reads at once.
MAX_WORD = 4096
_BLANKS = " \t\r"
_SEPARATORS = " \t\r\n"
_DROPPED = "ipvsadm"


def read_invocations(text: str) -> Iterator[list[str]]:
    """The argument vectors (argv[0] excluded) ``ipvsadm -R`` reads from ``text``,
    one per line, empty ones included (the caller skips them)."""
    pos, n = 0, len(text)
    while True:
        words: list[str] = []
        ended = False  # the line reached its LF
        while pos < n:
            c = text[pos]
            if c in _SEPARATORS:
                # a blank where a word should start: skip blanks up to a word,
                # the LF that ends the line, or the end of the input
                while pos < n and text[pos] in _BLANKS:
                    pos += 1
                if pos == n:
                    return  # the line being read is lost
                if text[pos] == "\n":
                    pos += 1
                    ended = True
                    break
                continue
            end = pos
            while end < n and end - pos < MAX_WORD and text[end] not in _SEPARATORS:
                end += 1
            word = text[pos:end].split("\0", 1)[0]  # C strings end at NUL
            if word != _DROPPED:
                words.append(word)
            pos = end
            if pos < n and text[pos] in _SEPARATORS:
                sep = text[pos]
                pos += 1  # the one blank read with the word
                if sep == "\n":
                    ended = True
                    break
        if not ended and (pos >= n) and not words:
            return
        yield words
        if not ended:
            return


def restore_table(text: str, process: Callable[[list[str]], int]) -> int:
    """Run every non-empty line of ``text`` through ``process`` (one ipvsadm
    invocation, returning its status); the result is the last one's."""
    result = 0
    for args in read_invocations(text):
        if args:
            result = process(args)
    return result
