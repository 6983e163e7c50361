"""`params[i].match` patterns, searched in time linear in the path.

Python's `re` backtracks: `(.*.*)*x` takes exponential time on a path without an
`x`, and a pattern can overflow (`a{4294967296}`) or recurse (1,200 nested groups)
while it compiles. RE2 compiles in bounded memory and matches in linear time, so
a strategy can never hang `compile()`. The syntax is Python's, less what needs
backtracking (lookarounds, backreferences); RE2 names those in its error. (The
schema caps a pattern at 1,000 characters; RE2 also bounds its compiled size.)
"""

from __future__ import annotations

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print each bad pattern to stderr; it is reported as a Problem


class PatternError(ValueError):
    """Why a pattern cannot be used (`str(e)`), and how to write it instead (`e.hint`)."""

    def __init__(self, reason: str, hint: str):
        super().__init__(reason)
        self.hint = hint


def compile_match(pattern: str) -> re2._Regexp:
    """The compiled pattern; PatternError when RE2 cannot take it."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        reason = e.args[0] if e.args else b"invalid"
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        backtracking = "perl operator" in reason or "escape" in reason  # (?=...), (?<!...), \\1
        hint = "RE2 takes Python's syntax without lookarounds or backreferences" if backtracking else ""
        raise PatternError(reason, hint) from None
