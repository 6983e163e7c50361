"""JSON Schema validation (strategies, request files), with errors a person can act on."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Union

import jsonschema
import msgspec

from . import _yaml
from .errors import Problem, Source, clip, did_you_mean, one_of

SCHEMA_FILE = Path(__file__).with_name("strategy.schema.json")


def _integer(_checker, value: object) -> bool:
    # Draft 2020-12 counts 8.0 as an integer; a strategy size must be written 8.
    return isinstance(value, int) and not isinstance(value, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _integer),
)


def schema_problems(raw: object, where: Source, schema: dict | None = None) -> list[Problem]:
    """Every schema error of `raw` as a Problem; `schema` defaults to the strategy schema."""
    if schema is None:
        schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return error_problems(validator(schema).iter_errors(raw), where)


def validator(schema: dict) -> jsonschema.protocols.Validator:
    """A validator of `schema` with shardspec's integers (8, not 8.0), for a caller that keeps one: building
    it costs more than checking a small value."""
    return _Validator(schema)


def error_problems(errors: Iterable[jsonschema.ValidationError], where: Source) -> list[Problem]:
    """Schema errors of one document as Problems, in the order of their paths; the errors may come from several
    validators (parts of the document checked apart), each error's path taken from the document's root."""
    errors = sorted(errors, key=lambda e: _sort_key(e.absolute_path))
    # dict.fromkeys: two missing keys are two schema errors but one message.
    return list(dict.fromkeys(p for e in errors for p in _friendly(e, where)))


def fast_check(schema: dict) -> Callable[[object], bool]:
    """A test of `schema` through msgspec, many times faster than a validator on a small JSON value: True only
    where the schema holds; False where it may not, the validator then deciding (and wording why).

    The msgspec type is built here, once, from the schema itself: a keyword it does not translate raises
    ValueError (and a type msgspec refuses, msgspec's TypeError or ValueError), so the two never part in silence."""
    kind = _union(schema, _ROOT)
    msgspec.inspect.type_info(kind)  # msgspec's refusals (a bound past int64) now, not at the first value checked

    def check(value: object) -> bool:
        # msgspec takes a tuple or a set for a list and any mapping for a dict, the schema only a list and a dict:
        # the exact types here, of the value and its fields (deeper, the type holds no list or dict).
        if type(value) not in _JSON_TYPES:
            return False
        if type(value) is dict and not _JSON_TYPES.issuperset(map(type, value.values())):
            return False
        try:
            msgspec.convert(value, kind, strict=True)
        except (msgspec.ValidationError, UnicodeEncodeError):  # the second: a lone surrogate ("\ud800") not as a str
            return False
        return True

    return check


_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "examples"}
_JSON_TYPES = frozenset({dict, list, str, int, float, bool, type(None)})  # as json.loads makes them
_BOUNDS = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}
_SIZES = {"minLength": "min_length", "maxLength": "max_length", "minItems": "min_length", "maxItems": "max_length"}
# The keywords translated, by the JSON type they apply to.
_KEYWORDS = {
    "integer": _BOUNDS.keys(),
    "number": _BOUNDS.keys(),
    "string": {"minLength", "maxLength"},
    "array": {"minItems", "maxItems", "items"},
    "object": {"properties", "additionalProperties"},
    "boolean": set(),
    "null": set(),
}
# Where a value sits: the one fast_check is given, a field of it (both of types fast_check looks at), or deeper.
_ROOT, _FIELD, _DEEP = "root", "field", "deep"


def _union(schema: dict, place: str) -> object:
    return Union[tuple(_alternatives(schema, place).values())]  # noqa: UP007 (built from a tuple, not written)


def _alternatives(schema: dict, place: str) -> dict[str, object]:
    """`schema` as msgspec types by kind ("integer", "float", "string", ...): a msgspec union holds one of each."""
    if not isinstance(schema, dict):  # true, false; a list of items (draft 4)
        raise ValueError(f"not translated to msgspec: a schema that is not an object ({schema!r})")
    rules = {key: arg for key, arg in schema.items() if key not in _ANNOTATIONS}
    if "anyOf" in rules:
        _refuse(rules.keys() - {"anyOf"}, "beside anyOf")
        return _merge(_alternatives(alternative, place) for alternative in rules["anyOf"])
    if "type" not in rules:
        raise ValueError(f"not translated to msgspec: a schema without type or anyOf ({sorted(rules)})")
    types = [rules["type"]] if isinstance(rules["type"], str) else rules["type"]
    _refuse(set(types) - _KEYWORDS.keys(), "types")
    _refuse(rules.keys() - {"type"} - set().union(*(_KEYWORDS[name] for name in types)), f"for type {types}")
    return _merge(_of_type(name, rules, place) for name in types)


def _of_type(name: str, rules: dict, place: str) -> dict[str, object]:
    """JSON type `name` of a schema of `rules` (each keyword applies to its type only)."""
    if name in ("array", "object") and place == _DEEP:
        # msgspec would take a tuple or a mapping there, and fast_check does not look so deep.
        raise ValueError(f"not translated to msgspec: an {name} in a list or in a field")
    if name in ("integer", "number"):
        bounds = {_BOUNDS[key]: arg for key, arg in rules.items() if key in _BOUNDS}
        found = {"integer": _annotated(int, _exact(bounds, int))}  # strict: not 8.0, not True
        if name == "number":  # an int checked as an int (exactly, not rounded to a float); a float, not a bool
            found["float"] = _annotated(float, _exact(bounds, float))
        return found
    sizes = {_SIZES[key]: arg for key, arg in rules.items() if key in _SIZES}
    if name == "string":
        return {"string": _annotated(str, sizes)}  # lengths in code points, as JSON Schema's
    if name == "array":
        items = rules.get("items")
        return {"array": _annotated(list if items is None else list[_union(items, _DEEP)], sizes)}
    if name == "object":
        return {"object": _struct(rules, _FIELD if place == _ROOT else _DEEP)}
    return {name: {"boolean": bool, "null": type(None)}[name]}


def _struct(rules: dict, inner: str) -> type:
    """An object as a Struct: a field per property, each optional; its name any string (renamed from f0, f1...)."""
    extra = rules.get("additionalProperties", True)
    if extra not in (True, False):
        raise ValueError("not translated to msgspec: additionalProperties other than true or false")
    properties = rules.get("properties", {})
    fields = [(f"f{i}", _union(field, inner), None) for i, field in enumerate(properties.values())]
    rename = {f"f{i}": name for i, name in enumerate(properties)}
    return msgspec.defstruct("Object", fields, rename=rename, forbid_unknown_fields=not extra)


def _exact(bounds: dict[str, object], kind: type) -> dict[str, object]:
    """`bounds` as msgspec compares them with a `kind` value; ValueError where that would not be exact (0.5 for
    an int, 2**63 - 1 for a float)."""
    exact = {key: kind(arg) for key, arg in bounds.items()}
    _refuse({f"{key}={arg!r}" for key, arg in bounds.items() if exact[key] != arg}, f"as bounds of a {kind.__name__}")
    return exact


def _annotated(kind: type, meta: dict[str, object]) -> object:
    return Annotated[kind, msgspec.Meta(**meta)] if meta else kind


def _merge(parts: Iterable[dict[str, object]]) -> dict[str, object]:
    merged: dict[str, object] = {}
    for part in parts:
        # msgspec would check a value against both (not either) of two alternatives of one kind.
        _refuse(part.keys() & merged.keys(), "twice in a union")
        merged.update(part)
    return merged


def _refuse(names: set[str], why: str) -> None:
    if names:
        raise ValueError(f"not translated to msgspec: {', '.join(sorted(names))} {why}")


def _sort_key(parts) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in parts)


def _friendly(e: jsonschema.ValidationError, where: Source) -> list[Problem]:
    if e.validator == "anyOf" and (inner := _inner(e)) is not None:
        return _friendly(inner, where)  # located at the key inside the alternative that fits
    path = _yaml.join_path(e.absolute_path)
    if e.validator == "additionalProperties":
        allowed = list(e.schema.get("properties", {}))
        return [
            where.problem(
                path,
                f"unknown key {key!r}",
                did_you_mean(key, allowed) or f"allowed: {one_of(allowed)}",
                at=_yaml.join_path([*e.absolute_path, key]),
            )
            for key in e.instance
            if key not in allowed
        ]
    return [where.problem(path, *_message(e))]


def _message(e: jsonschema.ValidationError) -> tuple[str, str | None]:
    """(message, hint) for one schema error."""
    value, arg = e.instance, e.validator_value
    if e.validator == "type":
        return f"expected {_type_names(arg)}, got {show(value)}", None
    if e.validator == "enum":
        return (
            f"{show(value)} is not one of {one_of(arg)}",
            did_you_mean(value, arg) if isinstance(value, str) else None,
        )
    if e.validator == "minimum":
        return f"{show(value)} is below the minimum {arg}", None
    if e.validator == "maximum":
        return f"{show(value)} is above the maximum {arg}", None
    if e.validator in ("minLength", "minItems"):
        return "must not be empty", None
    if e.validator in ("maxLength", "maxItems"):
        return f"{show(value)} is longer than {arg}", None
    if e.validator == "exclusiveMinimum":
        return f"{show(value)} is not above {arg}", None
    if e.validator == "required":
        missing = " and ".join(repr(k) for k in arg if k not in value)
        return f"missing {missing}", "each entry needs " + " and ".join(f"{k}:" for k in arg)
    if e.validator == "anyOf":
        return _any_of_message(e)
    return e.message, None


def _inner(e: jsonschema.ValidationError) -> jsonschema.ValidationError | None:
    """`int | "auto"`, `"auto" | [{...}]`: the error inside the alternative of the value's
    kind (a range, a key), or None when the value is of no alternative's kind."""
    return next((sub for sub in e.context if sub.validator not in ("type", "const")), None)


def _any_of_message(e: jsonschema.ValidationError) -> tuple[str, str | None]:
    """What the alternatives are (a value of none of their kinds)."""
    wanted = [_type_names(s["type"]) if "type" in s else show(s["const"]) for s in e.validator_value]
    return f"expected {' or '.join(wanted)}, got {show(e.instance)}", None


_TYPE_NAMES = {
    "integer": "an integer",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
    "number": "a number",
}


def _type_names(types: str | list[str]) -> str:
    types = [types] if isinstance(types, str) else types
    return one_of(_TYPE_NAMES[t] for t in types)


def show(value: object) -> str:
    """A value as the user wrote it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, int) and abs(value) >= 10**40:  # repr of a 5,000-digit int raises
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value} (a {type(value).__name__})"
