"""Short printable renderings of values that may be huge."""

import json


def brief(value, limit: int = 60) -> str:
    """A short printable rendering of a (maybe huge) value."""
    text = value if isinstance(value, str) else json.dumps(value) if jsonable(value) else repr(value)
    if len(text) > limit:
        head = repr(text[:24]) if isinstance(value, str) else text[:24]
        return f"{head}…({len(text)} chars)"
    return repr(text) if isinstance(value, str) else text


def jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
