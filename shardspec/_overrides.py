"""`--set key.path=value` overrides, applied to the raw strategy before validation."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

from . import _yaml
from ._schema import show
from .errors import SET_FILE, Problem, ShardspecError


def apply_overrides(raw: dict, overrides: Mapping[str, object]) -> list[Problem]:
    """Set each `key.path = value` into `raw`, creating missing mappings."""
    problems = []
    for key, value in overrides.items():
        parts = _split_key(key)
        if parts is None:
            problems.append(
                Problem(
                    f"bad key path {key!r}",
                    file=SET_FILE,
                    hint="write key.path=value, e.g. runtime.routing=least_tokens",
                )
            )
            continue
        try:
            if isinstance(value, str):
                value = _yaml.parse_value(value, SET_FILE)
            _set_path(raw, parts, value)
        except ShardspecError as e:
            problems += [Problem(p.message, path=key, file=SET_FILE, hint=p.hint) for p in e.problems]
    return problems


def _split_key(key: str) -> list[str | int] | None:
    """'params[0].match' -> ['params', 0, 'match']; None if malformed."""
    if not re.fullmatch(r"[\w-]+(\[\d+\])*(\.[\w-]+(\[\d+\])*)*", key):
        return None
    return [int(i) if i else name for name, i in re.findall(r"([\w-]+)|\[(\d+)\]", key)]


def _set_path(node: dict, parts: list[str | int], value: object) -> None:
    for i, (part, nxt) in enumerate(zip(parts, parts[1:])):
        child = node[part] if isinstance(part, int) else node.get(part, [] if isinstance(nxt, int) else {})
        _check_container(child, nxt, parts[: i + 1])
        # Copy on the way down: an alias makes two keys share one object, and
        # `--set` changes only the path it names.
        child = copy.copy(child)
        node[part] = child
        node = child
    node[parts[-1]] = value


def _check_container(node: object, part: str | int, done: list[str | int]) -> None:
    here = _yaml.join_path(done)
    if isinstance(part, int):
        if not isinstance(node, list) or not 0 <= part < len(node):
            raise ShardspecError(f"{here} has no item [{part}]")
    elif not isinstance(node, dict):
        raise ShardspecError(f"{here} is {show(node)}, not a mapping")
