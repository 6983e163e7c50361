"""JSON Schema validation (strategies, request files), with errors a person can act on."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import jsonschema

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
