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
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import _yaml
from ._overrides import apply_overrides
from ._schema import schema_problems
from .errors import SET_FILE, Problem, Source, clip, did_you_mean, one_of, raise_all
from .files import MAX_STRATEGY_BYTES, read_bytes
from .models import presets as _presets
from .path_regex import PatternError, compile_match
from .sizes import MAX_DEVICES, divisors, multihost_problem
from .strategy import BUILT_IN, MESH_AXES, KVCacheConfig, Parallelism, ParamOverride, Policy, RuntimeConfig, Strategy


def load(source: str | os.PathLike | Mapping, overrides: Mapping[str, object] | None = None) -> Strategy:
    """Read, check and freeze a strategy.

    `source`: a path; a str that ends in .yaml/.yml or names a file; else YAML
    text (reported as `<string>`); or a dict (`<dict>`, no lines).
    `overrides`: {"runtime.routing": "least_tokens"} from `--set`; each value is
    YAML text (non-strings are used as they are).
    Raises `ShardspecError` holding every problem found.
    """
    raw, src, name = _read(source)
    raise_all(apply_overrides(raw, overrides or {}))
    for path in overrides or ():  # problems there blame --set; their (stale) lines in the file are dropped
        src = src.overriding(path, SET_FILE)
    raise_all(schema_problems(raw, src))
    raise_all(_semantic_problems(raw, src))
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
    text = read_bytes(file, MAX_STRATEGY_BYTES, "check the path; it is relative to the working directory")
    data, lines = _yaml.parse_document(text, file)
    return data, Source(file, lines), Path(file).stem


def _looks_like_path(text: str) -> bool:
    if "\n" in text:
        return False
    if text and ":" not in text and "{" not in text:
        return True  # can only be YAML for a scalar or a list: a mistyped path is likelier
    return text.endswith((".yaml", ".yml")) or os.path.isfile(text)


def _semantic_problems(raw: dict, where: Source) -> list[Problem]:
    par = Parallelism(**raw.get("parallelism", {}))  # the schema has checked its keys and types
    return [
        *_check_devices(raw.get("devices"), par, where),
        *_check_attention_data(par, where),
        *_check_multihost(raw.get("multihost", {}), par, where),
        *_check_rules(raw.get("rules", {}), where),
        *_check_aliases(raw.get("mesh_aliases", {}), where),
        *_check_params(raw.get("params", []), where),
        *_check_model(raw.get("model"), where),
    ]


def _check_devices(devices: int | None, par: Parallelism, where: Source) -> list[Problem]:
    product = par.product
    if product > MAX_DEVICES:
        return [
            where.problem(
                "parallelism",
                f"data {par.data} x tensor {par.tensor} x expert {par.expert} = {product:,} devices, "
                f"more than the {MAX_DEVICES:,} shardspec lays out",
                "use smaller degrees of parallelism",
            )
        ]
    if devices is None or devices == product:
        return []
    return [
        where.problem(
            "parallelism",
            f"data {par.data} x tensor {par.tensor} x expert {par.expert} = {product} devices, but devices: {devices}",
            f"make data x tensor x expert = {devices}, or set devices: {product} (or leave it out)",
        )
    ]


def _check_attention_data(par: Parallelism, where: Source) -> list[Problem]:
    value, tensor = par.attention_data, par.tensor
    if value == "auto" or tensor % value == 0:
        return []
    return [
        where.problem(
            "parallelism.attention_data",
            f"{value} does not divide tensor={tensor}",
            f"use {one_of(divisors(tensor))}, or auto",
        )
    ]


def _check_multihost(multihost: dict, par: Parallelism, where: Source) -> list[Problem]:
    """Each cross-host factor must divide its axis, where the file fixes the axis."""
    attn = par.attention_data
    if attn != "auto" and par.tensor % attn == 0:
        sizes = par.mesh_shape(attn)
    else:  # attn_dp and model are known only at compile() (mesh.cross_host checks them there)
        sizes = {"data": par.data, "expert": par.expert}
    return [
        where.problem(f"multihost.{axis}", *problem)
        for axis, factor in multihost.items()
        if axis in sizes and (problem := multihost_problem(axis, factor, sizes[axis]))
    ]


def _check_rules(rules: dict, where: Source) -> list[Problem]:
    problems = []
    for logical, value in rules.items():
        path = f"rules.{logical}"  # any logical name: compile() checks it against the model's
        if value == BUILT_IN:  # the built-in rule, asked for by name (compile() checks there is one)
            continue
        mesh = [value] if isinstance(value, str) else value or []
        for i, axis in enumerate(mesh):
            at = path if isinstance(value, str) else f"{path}[{i}]"
            if axis not in MESH_AXES:
                problems.append(_unknown(where, at, "mesh axis", axis, MESH_AXES))
            elif axis in mesh[:i]:
                problems.append(
                    where.problem(
                        at, f"mesh axis {axis!r} appears twice", "a mesh axis can shard a dimension only once"
                    )
                )
    return problems


def _check_aliases(aliases: dict, where: Source) -> list[Problem]:
    """Each alias names mesh axes, none twice over all aliases, and is not itself a mesh axis's name."""
    problems, taken = [], {}
    for alias, value in aliases.items():
        path = f"mesh_aliases.{alias}"
        if alias in MESH_AXES:
            problems.append(where.problem(path, f"{alias!r} is the plan's own mesh axis", "alias another name"))
        for axis in [value] if isinstance(value, str) else value or []:
            if axis not in MESH_AXES:
                problems.append(_unknown(where, path, "mesh axis", axis, MESH_AXES))
            elif axis in taken:
                problems.append(where.problem(path, f"mesh axis {axis!r} is already {taken[axis]!r}", "alias it once"))
            taken[axis] = alias
    return problems


def _check_params(params: list, where: Source) -> list[Problem]:
    problems = []
    for i, entry in enumerate(params):
        try:
            compile_match(entry["match"])
        except PatternError as e:
            problems.append(where.problem(f"params[{i}].match", f"invalid regex {clip(entry['match'])}: {e}", e.hint))
    return problems


def _check_model(model: str | None, where: Source) -> list[Problem]:
    """A preset, or a directory: a Hugging Face checkpoint, whose files compile() checks."""
    if model is None or model in _presets.PRESETS or os.path.isdir(model):
        return []
    close = did_you_mean(model, _presets.PRESETS)
    hint = (
        f"{close} see `shardspec models`"
        if close
        else (f"use a preset ({one_of(_presets.PRESETS)}) or a checkpoint directory")
    )
    return [where.problem("model", f"unknown model {model!r}", hint)]


def _unknown(where: Source, path: str, kind: str, name: str, valid: Iterable[str]) -> Problem:
    valid = list(valid)
    return where.problem(path, f"unknown {kind} {name!r}", did_you_mean(name, valid) or f"use {one_of(valid)}")


def _runtime(raw: dict) -> RuntimeConfig:
    costs = raw.get("step_costs", "auto")
    if costs != "auto":  # [{tokens, ms}, ...] -> ((tokens, ms), ...): hashable, like every other key
        raw = {**raw, "step_costs": tuple((point["tokens"], float(point["ms"])) for point in costs)}
    return RuntimeConfig(**raw)


def _build(raw: dict, source: Source, default_name: str) -> Strategy:
    """Dataclasses with their own defaults for every key the file leaves out."""
    rules = {
        k: v if v == BUILT_IN else (v,) if isinstance(v, str) else tuple(v or ())
        for k, v in raw.get("rules", {}).items()
    }
    params = tuple(ParamOverride(p["match"], tuple(p["axes"]), i) for i, p in enumerate(raw.get("params", [])))
    expect = raw.get("expect", {})
    return Strategy(
        name=raw.get("name", default_name),
        model=raw.get("model"),
        devices=raw.get("devices"),
        parallelism=Parallelism(**raw.get("parallelism", {})),
        multihost=raw.get("multihost", {}),
        rules=rules,
        params=params,
        activations=tuple(raw.get("activations", ())),
        mesh_aliases={
            k: (v,) if isinstance(v, str) else tuple(v or ()) for k, v in raw.get("mesh_aliases", {}).items()
        },
        units=raw.get("units", {}),
        policy=Policy(**raw.get("policy", {})),
        kv_cache=KVCacheConfig(**raw.get("kv_cache", {})),
        runtime=_runtime(raw.get("runtime", {})),
        expect=expect,
        source=source,
    )
