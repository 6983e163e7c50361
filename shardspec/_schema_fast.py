"""A JSON Schema as a msgspec type: a fast test that a value holds, with jsonschema left to
word why one does not (`_schema.py`).

msgspec checks a small JSON value in C, many times faster than a jsonschema
validator walks it; the type is built from the schema itself, so the schema
file stays the one source of the rules. A keyword not translated here is
refused when the type is built (an import error, never a silent difference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Union

import msgspec


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
    "object": {"properties", "additionalProperties", "maxProperties", "propertyNames"},
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
    if name == "object" and place == _FIELD and isinstance(rules.get("additionalProperties"), dict):
        return {"object": _mapping(rules)}
    if name == "object":
        _refuse(rules.keys() & {"maxProperties", "propertyNames"}, "beside properties")
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


def _mapping(rules: dict) -> object:
    """An object whose every value follows one schema, as a field of the root (whose values fast_check
    looks at; deeper, msgspec would take any mapping): a dict, its keys as propertyNames
    says (a pattern only), its size at most maxProperties."""
    _refuse(rules.keys() & {"properties"}, "beside a schema for additionalProperties")
    names = rules.get("propertyNames", {})
    _refuse(names.keys() - {"pattern"}, "in propertyNames")
    key = _annotated(str, {"pattern": names["pattern"]} if "pattern" in names else {})
    size = {"max_length": rules["maxProperties"]} if "maxProperties" in rules else {}
    return _annotated(dict[key, _union(rules["additionalProperties"], _DEEP)], size)


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
