"""`load()`: a strategy file (or text, or dict) -> a validated, frozen `Strategy`.

    parse (safe YAML, lines kept) -> --set overrides -> JSON Schema -> semantic
    checks -> frozen dataclasses with defaults filled in

Each stage reports every problem it finds at once, with file, line and YAML
path; a later stage runs only when the earlier ones found nothing, because it
trusts their result (the semantic checks rely on the schema's types).
No jax here: a strategy loads and validates instantly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

import jsonschema

from . import _yaml
from .errors import Problem, ShardspecError, Source, did_you_mean, one_of, raise_all
from .strategy import (MESH_AXES, KVCacheConfig, ParamOverride, Parallelism, Policy,
                       RuntimeConfig, Strategy)

from .models import axes as _axes, presets as _presets

_SCHEMA = Path(__file__).with_name("strategy.schema.json")
_SET = "--set"  # the "file" of problems caused by an override


def load(source: str | os.PathLike | Mapping, overrides: Mapping[str, object] | None = None
         ) -> Strategy:
    """Read, check and freeze a strategy.

    `source`: a path; a str that ends in .yaml/.yml or names a file; else YAML
    text (reported as `<string>`); or a dict (`<dict>`, no lines).
    `overrides`: {"runtime.routing": "least_tokens"} from `--set`; each value is
    YAML text (non-strings are used as they are).
    Raises `ShardspecError` holding every problem found.
    """
    raw, src, name = _read(source)
    overridden = tuple(overrides or ())
    raise_all(_apply_overrides(raw, overrides or {}))
    src = Source(src.file, {p: n for p, n in src.lines.items() if not _under_any(p, overridden)})
    where = _Where(src, overridden)
    raise_all(_schema_problems(raw, where))
    raise_all(_semantic_problems(raw, where))
    return _build(raw, src, name)


def _read(source) -> tuple[dict, Source, str]:
    """(raw data, Source with lines, default name)."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), Source("<dict>", {}), "strategy"
    if isinstance(source, str) and not _looks_like_path(source):
        data, lines = _yaml.parse_document(source, "<string>")
        return data, Source("<string>", lines), "strategy"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load() takes a path, YAML text or a dict, not {type(source).__name__}")
    file = os.fspath(source)
    try:
        data, lines = _yaml.parse_document(Path(file).read_bytes(), file)
    except FileNotFoundError:
        raise ShardspecError("file not found", file=file,
                             hint="check the path; it is relative to the working directory") from None
    except IsADirectoryError:
        raise ShardspecError("is a directory, not a strategy file", file=file) from None
    except OSError as e:
        raise ShardspecError(f"cannot read: {e.strerror}", file=file) from None
    return data, Source(file, lines), Path(file).stem


def _looks_like_path(text: str) -> bool:
    if "\n" in text:
        return False
    if text and ":" not in text and "{" not in text:
        return True  # can only be YAML for a scalar or a list: a mistyped path is likelier
    return text.endswith((".yaml", ".yml")) or os.path.isfile(text)


def _apply_overrides(raw: dict, overrides: Mapping[str, object]) -> list[Problem]:
    """Set each `key.path = value` into `raw`, creating missing mappings."""
    problems = []
    for key, value in overrides.items():
        parts = _split_key(key)
        if parts is None:
            problems.append(Problem(f"bad key path {key!r}", file=_SET,
                                    hint="write key.path=value, e.g. runtime.routing=least_tokens"))
            continue
        try:
            if isinstance(value, str):
                value = _yaml.parse_value(value, _SET)
            _set_path(raw, parts, value)
        except ShardspecError as e:
            problems += [Problem(p.message, path=key, file=_SET, hint=p.hint) for p in e.problems]
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
        raise ShardspecError(f"{here} is {_show(node)}, not a mapping")


@dataclasses.dataclass(frozen=True)
class _Where:
    """Makes Problems located in the file, or at `--set` for overridden paths."""

    source: Source
    overridden: tuple[str, ...]

    def problem(self, path: str, message: str, hint: str | None = None, at: str | None = None
                ) -> Problem:
        at = path if at is None else at  # the path whose line is shown
        if _under_any(at, self.overridden):
            return Problem(message, path=path, file=_SET, hint=hint or None)
        line = self.source.line(at)
        return Problem(message, path=path, file=self.source.file, line=line, hint=hint or None)


def _under_any(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith((p + ".", p + "[")) for p in prefixes)


def _integer(_checker, value: object) -> bool:
    # Draft 2020-12 counts 8.0 as an integer; a strategy size must be written 8.
    return isinstance(value, int) and not isinstance(value, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _integer))


def _schema_problems(raw: dict, where: _Where) -> list[Problem]:
    validator = _Validator(json.loads(_SCHEMA.read_text(encoding="utf-8")))
    errors = sorted(validator.iter_errors(raw), key=lambda e: _sort_key(e.absolute_path))
    # dict.fromkeys: two missing keys are two schema errors but one message.
    return list(dict.fromkeys(p for e in errors for p in _friendly(e, where)))


def _sort_key(parts) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in parts)


def _friendly(e: jsonschema.ValidationError, where: _Where) -> list[Problem]:
    path = _yaml.join_path(e.absolute_path)
    if e.validator == "additionalProperties":
        allowed = list(e.schema.get("properties", {}))
        return [where.problem(path, f"unknown key {key!r}",
                              did_you_mean(key, allowed) or f"allowed: {one_of(allowed)}",
                              at=_yaml.join_path([*e.absolute_path, key]))
                for key in e.instance if key not in allowed]
    return [where.problem(path, *_message(e))]


def _message(e: jsonschema.ValidationError) -> tuple[str, str | None]:
    """(message, hint) for one schema error."""
    value, arg = e.instance, e.validator_value
    if e.validator == "type":
        return f"expected {_type_names(arg)}, got {_show(value)}", None
    if e.validator == "enum":
        return (f"{_show(value)} is not one of {one_of(arg)}",
                did_you_mean(value, arg) if isinstance(value, str) else None)
    if e.validator == "minimum":
        return f"{_show(value)} is below the minimum {arg}", None
    if e.validator == "maximum":
        return f"{_show(value)} is above the maximum {arg}", None
    if e.validator == "minLength":
        return "must not be empty", None
    if e.validator == "required":
        missing = " and ".join(repr(k) for k in arg if k not in value)
        return f"missing {missing}", "each entry needs " + " and ".join(f"{k}:" for k in arg)
    if e.validator == "anyOf":
        return _any_of_message(e)
    return e.message, None


def _any_of_message(e: jsonschema.ValidationError) -> tuple[str, str | None]:
    """`int | "auto"`: a range error for an int, else what the alternatives are."""
    for sub in e.context:
        if sub.validator not in ("type", "const"):
            return _message(sub)
    wanted = [_type_names(s["type"]) if "type" in s else _show(s["const"]) for s in e.validator_value]
    return f"expected {' or '.join(wanted)}, got {_show(e.instance)}", None


_TYPE_NAMES = {"integer": "an integer", "string": "a string", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null", "number": "a number"}


def _type_names(types: str | list[str]) -> str:
    types = [types] if isinstance(types, str) else types
    return one_of(_TYPE_NAMES[t] for t in types)


def _show(value: object) -> str:
    """A value as the user wrote it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (str, int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value} (a {type(value).__name__})"


def _semantic_problems(raw: dict, where: _Where) -> list[Problem]:
    par = {"data": 1, "tensor": 1, "attention_data": "auto", "expert": 1, **raw.get("parallelism", {})}
    return [
        *_check_devices(raw.get("devices"), par, where),
        *_check_attention_data(par, where),
        *_check_multihost(raw.get("multihost", {}), par, where),
        *_check_rules(raw.get("rules", {}), where),
        *_check_params(raw.get("params", []), where),
        *_check_model(raw.get("model"), where),
    ]


def _check_devices(devices: int | None, par: dict, where: _Where) -> list[Problem]:
    product = par["data"] * par["tensor"] * par["expert"]
    if devices is None or devices == product:
        return []
    return [where.problem(
        "parallelism",
        f"data {par['data']} x tensor {par['tensor']} x expert {par['expert']} = {product} "
        f"devices, but devices: {devices}",
        f"make data x tensor x expert = {devices}, or set devices: {product} (or leave it out)")]


def _check_attention_data(par: dict, where: _Where) -> list[Problem]:
    value, tensor = par["attention_data"], par["tensor"]
    if value == "auto" or tensor % value == 0:
        return []
    return [where.problem("parallelism.attention_data", f"{value} does not divide tensor={tensor}",
                          f"use {one_of(_divisors(tensor))}, or auto")]


def _check_multihost(multihost: dict, par: dict, where: _Where) -> list[Problem]:
    """Each cross-host factor must divide its axis, where the file fixes the axis."""
    sizes = {"data": par["data"], "expert": par["expert"]}
    attn, tensor = par["attention_data"], par["tensor"]
    if attn != "auto" and tensor % attn == 0:  # else attn_dp/model are known only at compile()
        sizes.update(attn_dp=attn, model=tensor // attn)
    return [where.problem(f"multihost.{axis}", f"{factor} does not divide {axis}={sizes[axis]}",
                          f"use {one_of(_divisors(sizes[axis]))}")
            for axis, factor in multihost.items() if axis in sizes and sizes[axis] % factor]


def _check_rules(rules: dict, where: _Where) -> list[Problem]:
    problems = []
    for logical, value in rules.items():
        path = f"rules.{logical}"
        if logical not in _axes.LOGICAL_AXES:
            problems.append(_unknown(where, path, "logical axis", logical, _axes.LOGICAL_AXES))
        mesh = [value] if isinstance(value, str) else value or []
        for i, axis in enumerate(mesh):
            at = path if isinstance(value, str) else f"{path}[{i}]"
            if axis not in MESH_AXES:
                problems.append(_unknown(where, at, "mesh axis", axis, MESH_AXES))
            elif axis in mesh[:i]:
                problems.append(where.problem(at, f"mesh axis {axis!r} appears twice",
                                              "a mesh axis can shard a dimension only once"))
    return problems


def _check_params(params: list, where: _Where) -> list[Problem]:
    problems = []
    for i, entry in enumerate(params):
        try:
            re.compile(entry["match"])
        except re.error as e:
            problems.append(where.problem(f"params[{i}].match",
                                          f"invalid regex {entry['match']!r}: {e}"))
        for j, axis in enumerate(entry["axes"]):
            if axis is not None and axis not in _axes.LOGICAL_AXES:
                problems.append(_unknown(where, f"params[{i}].axes[{j}]", "logical axis", axis,
                                         (*_axes.LOGICAL_AXES, "null")))
    return problems


def _check_model(model: str | None, where: _Where) -> list[Problem]:
    if model is None or model in _presets.PRESETS or os.path.isdir(model):
        return []
    close = did_you_mean(model, _presets.PRESETS)
    hint = f"{close} see `shardspec models`" if close else (
        f"use a preset ({one_of(_presets.PRESETS)}) or a checkpoint directory")
    return [where.problem("model", f"unknown model {model!r}", hint)]


def _unknown(where: _Where, path: str, kind: str, name: str, valid: Iterable[str]) -> Problem:
    valid = list(valid)
    return where.problem(path, f"unknown {kind} {name!r}",
                         did_you_mean(name, valid) or f"use {one_of(valid)}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]



def _build(raw: dict, source: Source, default_name: str) -> Strategy:
    """Dataclasses with their own defaults for every key the file leaves out."""
    rules = {k: (v,) if isinstance(v, str) else tuple(v or ()) for k, v in raw.get("rules", {}).items()}
    params = tuple(ParamOverride(p["match"], tuple(p["axes"]), i)
                   for i, p in enumerate(raw.get("params", [])))
    expect = {k: MappingProxyType(dict(v)) for k, v in raw.get("expect", {}).items()}
    return Strategy(
        name=raw.get("name", default_name),
        model=raw.get("model"),
        devices=raw.get("devices"),
        parallelism=Parallelism(**raw.get("parallelism", {})),
        multihost=raw.get("multihost", {}),
        rules=rules,
        params=params,
        policy=Policy(**raw.get("policy", {})),
        kv_cache=KVCacheConfig(**raw.get("kv_cache", {})),
        runtime=RuntimeConfig(**raw.get("runtime", {})),
        expect=expect,
        source=source,
    )
