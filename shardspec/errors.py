"""The one user-facing error type and the one place it is formatted.

Every problem a user can cause (a bad strategy, a bad request file, a bad flag)
becomes a `Problem`: where it is (file, line, YAML path), what is wrong (with the
bad value) and how to fix it. A `ShardspecError` carries one or more problems so
that a strategy with three mistakes reports all three at once.

    error: attn_dp.yaml:7: parallelism.attention_data: 3 does not divide tensor=8 (use 1, 2, 4 or 8, or auto)
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Problem:
    message: str
    path: str = ""
    file: str | None = None
    line: int | None = None
    hint: str | None = None

    def format(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        path = f"{self.path}: " if self.path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"error: {where}{path}{self.message}{hint}".translate(_ONE_LINE)


# Line breaks and control characters (in a file name or a value) shown escaped:
# a problem is always one line.
_ONE_LINE = {c: repr(chr(c))[1:-1] for c in [*range(32), 127, 0x85, 0x2028, 0x2029]}


class ShardspecError(Exception):
    """A user error: exit code 2 on the command line, one line per problem."""

    def __init__(self, problems: Problem | str | Iterable[Problem], **location):
        if isinstance(problems, str):
            problems = [Problem(problems, **location)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("ShardspecError needs at least one problem")
        super().__init__(self.format())

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)


def clip(text: str, limit: int = 40) -> str:
    """`text` quoted and cut to `limit` characters: a message shows the value, not all of a megabyte of it."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)'-style suffix text, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def one_of(choices: Iterable[object]) -> str:
    """Human list of valid choices: 'a, b or c'."""
    items = [str(c) for c in choices]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


SET_FILE = "--set"  # the "file" of problems caused by an override


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a strategy came from: its file name, the line of each YAML path, and the
    paths a flag set instead (`--set` or `--model`): a problem at one of them, or
    under one, blames that flag."""

    file: str = "<strategy>"
    lines: Mapping[str, int] = dataclasses.field(default_factory=dict, repr=False)
    overridden: Mapping[str, str] = dataclasses.field(default_factory=dict)  # YAML path -> flag that set it

    def line(self, path: str) -> int | None:
        """Line of `path`, else of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = _parent(path)

    def overriding(self, path: str, flag: str) -> Source:
        """This source with `path` set by `flag` (its line in the file no longer applies)."""
        lines = {p: n for p, n in self.lines.items() if not under_any(p, (path,))}
        return dataclasses.replace(self, lines=lines, overridden={**self.overridden, path: flag})

    def problem(self, path: str, message: str, hint: str | None = None, at: str | None = None) -> Problem:
        """A problem at YAML `path`, shown at the line of `at` (default: `path`).

        Under an overridden path: located at its flag (`--model` alone names what it
        set, so the path is dropped). A section one of whose keys a flag changed is
        located at the flag too, naming the file's line of the rest of it.
        """
        at = path if at is None else at
        flag = next((f for p, f in self.overridden.items() if under_any(at, (p,))), None)
        inside = [p for p in self.overridden if under_any(p, (at,))] if at else []
        if flag is None and inside:  # a section a flag changed: the change is the likely cause
            flag = self.overridden[inside[0]]
            if at in self.lines:
                message += f" ({', '.join(inside)} from {flag}, the rest from {self.file}:{self.lines[at]})"
        if flag is not None:
            return Problem(message, path=path if flag == SET_FILE else "", file=flag, hint=hint or None)
        return Problem(message, path=path, file=self.file, line=self.line(at), hint=hint or None)

    def error(self, path: str, message: str, hint: str | None = None) -> ShardspecError:
        return ShardspecError(self.problem(path, message, hint))


def under_any(path: str, prefixes: Iterable[str]) -> bool:
    """'parallelism.tensor' is under 'parallelism' (and under itself); 'params[0].axes' under 'params'."""
    return any(path == p or path.startswith((p + ".", p + "[")) for p in prefixes)


def _parent(path: str) -> str:
    """'params[0].match' -> 'params[0]' -> 'params' -> ''."""
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path.rpartition(".")[0]


def raise_all(problems: Sequence[Problem]) -> None:
    """Raise one error holding every problem, sorted by file position, if any."""
    if problems:
        ordered = sorted(problems, key=lambda p: (p.file or "", p.line or 0, p.path))
        raise ShardspecError(ordered)
