"""Requests in (JSONL or keyword arguments, validated) and outputs out (JSONL).

`request.schema.json` is the one source of a request's fields and bounds. It is
checked in time that does not grow with what a hostile line holds: C loops over
a token-id list say whether an id is bad, numpy which ones, and jsonschema words
only those; jsonschema checks every other rule (msgspec, its type built from
the same schema, lets a good request skip that walk), each list cut to one item
past its maxItems, at most MAX_PROBLEMS unknown keys; a prompt longer than the
plan serves is refused before any of its ids is checked (msgspec's pass over the
list is a C loop at a few ns an id).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import operator
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from jsonschema import ValidationError

from .._schema import error_problems, validator
from .._schema_fast import fast_check
from ..errors import Problem, ShardspecError, Source, clip, one_of, raise_all
from ..files import MAX_REQUESTS_BYTES, parse_json, read_text, write_text
from ..sizes import RuntimeSizes
from .request import Output, Request, SamplingParams, logit_bias_pairs
from .structured import Constraint, Grammars

_REQUEST_FIELDS = ("max_tokens", "ignore_eos", "stop_token_ids", "logprobs", "prompt_logprobs")  # as Request takes them
_SAMPLING_FIELDS = {  # SamplingParams'
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "seed": int,
    "presence_penalty": float,
    "frequency_penalty": float,
    "repetition_penalty": float,
    "min_tokens": int,
    "logit_bias": logit_bias_pairs,
}
_SCHEMA = json.loads(Path(__file__).with_name("request.schema.json").read_text(encoding="utf-8"))
_FIELDS = _SCHEMA["properties"]
MAX_PROBLEMS = 20  # bad lines from one file, unknown keys or bad ids from one line: junk stops here, not at a million

# Token-id lists: `_bad_ids` finds the bad items, their schema words each; jsonschema checks all else.
_ID_LISTS = ("prompt_token_ids", "stop_token_ids")
_ID_BOUNDS = {name: (_FIELDS[name]["items"]["minimum"], _FIELDS[name]["items"]["maximum"]) for name in _ID_LISTS}
_ID_CHECKS = {name: validator(_FIELDS[name]["items"]) for name in _ID_LISTS}
# The schema less the id lists' items: what jsonschema walks, in time that does not grow with a prompt.
_OTHER_RULES = {
    **_SCHEMA,
    "properties": {
        name: {key: rule for key, rule in field.items() if key != "items" or name not in _ID_LISTS}
        for name, field in _FIELDS.items()
    },
}
_CHECK = validator(_OTHER_RULES)
# msgspec: True for a good request, so _CHECK need not walk it. Without `structured_outputs` (a
# schema in a field, deeper than msgspec's type looks): a request that has one is checked by _CHECK.
_DEEP_FIELDS = ("structured_outputs",)
_FAST_CHECK = fast_check(
    {**_OTHER_RULES, "properties": {k: v for k, v in _OTHER_RULES["properties"].items() if k not in _DEEP_FIELDS}}
)
# The most items each list field takes (`stop`'s in its list alternative).
_MOST_ITEMS = {
    name: rule["maxItems"]
    for name, field in _FIELDS.items()
    for rule in (field, *field.get("anyOf", ()))
    if "maxItems" in rule
}
_FEWEST_NEW_TOKENS = _FIELDS["max_tokens"]["minimum"]


def make_request(
    fields: Mapping,
    *,
    default_id: str,
    vocab_size: int,
    limits: RuntimeSizes,
    where: Source | None = None,
    tokenizer=None,
    grammars: Grammars | None = None,
) -> Request:
    """A validated Request from request-file fields; ShardspecError names each bad field.

    `limits` are the plan's (the longest request it serves); `tokenizer` (a
    checkpoint's, `shardspec.tokenizer`) turns `prompt` text into ids; `grammars`
    (the engine's) compiles `structured_outputs` (without it, only their form is
    checked). A field left out takes `Request`'s (and `SamplingParams`') default,
    their one owner.
    """
    where = where or Source("<request>", {})
    raise_all(_field_problems(fields, where, limits))
    prompt = _prompt(fields, where, tokenizer)
    problems: list[Problem] = []
    if (bad := _outside_vocabulary(prompt, vocab_size)) is not None:
        problems.append(
            where.problem(
                "prompt_token_ids",
                f"token id {bad} is outside the vocabulary",
                f"ids must be below vocab_size {vocab_size}",
            )
        )
    given = {k: fields[k] for k in _REQUEST_FIELDS if k in fields}
    if "stop_token_ids" in given:
        given["stop_token_ids"] = tuple(given["stop_token_ids"])
    if "stop" in fields:
        stop = fields["stop"]
        given["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        if tokenizer is None:
            problems.append(
                where.problem("stop", "stop strings need a model with a tokenizer", "use stop_token_ids instead")
            )
    sampling = SamplingParams(**{k: _SAMPLING_FIELDS[k](fields[k]) for k in _SAMPLING_FIELDS if k in fields})
    if "structured_outputs" in fields:
        given["structured_outputs"] = constraint = Constraint.from_field(fields["structured_outputs"])
        problems += _constraint_problems(constraint, where, tokenizer, grammars)
    request = Request(str(fields.get("id", default_id)), prompt, sampling=sampling, **given)
    problems += _sampling_problems(request, where, vocab_size)
    if too_long := limits.request_len_problem(len(prompt), request.max_tokens):
        problems.append(where.problem("max_tokens", *too_long))
    raise_all(problems)
    return request


def _sampling_problems(request: Request, where: Source, vocab_size: int) -> list[Problem]:
    """What the schema cannot say of the sampling fields: logit_bias ids in the vocabulary,
    min_tokens within max_tokens."""
    sampling, problems = request.sampling, []
    if sampling.logit_bias and (bad := sampling.logit_bias[-1][0]) >= vocab_size:
        problems.append(
            where.problem(f"logit_bias.{bad}", "the token id is outside the vocabulary", f"ids below {vocab_size}")
        )
    if sampling.min_tokens > request.max_tokens:
        message = f"{sampling.min_tokens} is more than max_tokens {request.max_tokens}"
        problems.append(where.problem("min_tokens", message, "lower min_tokens"))
    return problems


def _constraint_problems(constraint: Constraint, where: Source, tokenizer, grammars: Grammars | None) -> list[Problem]:
    path = f"structured_outputs.{constraint.kind}"
    if tokenizer is None:
        return [where.problem(path, "structured outputs need a model with a tokenizer", "leave them out")]
    if grammars is not None and (problem := grammars.problem(constraint)) is not None:
        return [where.problem(path, clip(problem.strip().splitlines()[0], 300), "fix the grammar, regex or schema")]
    return []


def _field_problems(fields: Mapping, where: Source, limits: RuntimeSizes) -> list[Problem]:
    """The schema's problems with `fields`, found in time that does not grow with what they hold."""
    shown, left_out = _bounded(fields)
    if problems := _non_finite(shown, where):  # JSON Schema's bounds let NaN through
        return problems
    errors = [] if _FAST_CHECK(shown) else list(_CHECK.iter_errors(shown))
    too_long = _too_long(fields, limits)
    if too_long and not errors:  # refused before any id is read
        max_tokens = fields.get("max_tokens", Request.max_tokens)  # valid (no errors), or Request's default
        return [where.problem("max_tokens", *limits.request_len_problem(len(fields["prompt_token_ids"]), max_tokens))]
    more = []
    if left_out:
        unknown = f"{left_out + MAX_PROBLEMS:,} unknown keys, the first {MAX_PROBLEMS} shown"
        more.append(where.problem("", unknown, f"allowed: {one_of(_FIELDS)}"))
    if not too_long:  # per-id work only for a prompt the plan could serve
        for name in _ID_LISTS:
            found, bad = _id_errors(name, shown.get(name))
            errors += found
            if bad > MAX_PROBLEMS:
                more.append(where.problem(name, f"{bad:,} bad ids, the first {MAX_PROBLEMS} shown"))
    return error_problems(errors, where) + more


def _bounded(fields: Mapping) -> tuple[dict, int]:
    """`fields` as jsonschema sees them, and how many unknown keys it does not: the known ones and the first
    MAX_PROBLEMS unknown ones, each list cut to one item past its maxItems (still too long, with the same
    problem, but not a million items to walk)."""
    names = [name for name in _FIELDS if name in fields]
    if len(names) < len(fields):
        names += itertools.islice((name for name in fields if name not in _FIELDS), MAX_PROBLEMS)
    shown = {name: fields[name] for name in names}
    for name, most in _MOST_ITEMS.items():
        if isinstance(value := shown.get(name), list) and len(value) > most:
            shown[name] = value[: most + 1]
    return shown, len(fields) - len(shown)


def _too_long(fields: Mapping, limits: RuntimeSizes) -> bool:
    """Whether the prompt's ids alone (max_tokens at the schema's fewest) are more than the plan serves."""
    ids = fields.get("prompt_token_ids")
    return isinstance(ids, list) and limits.request_len_problem(len(ids), _FEWEST_NEW_TOKENS) is not None


def _bad_ids(name: str, ids: list) -> list[int]:
    """Where token-id list `name` has an id its schema refuses: not an integer (a bool, a float, a string, a list)
    or out of its bounds (-1, 2**31)."""
    low, high = _ID_BOUNDS[name]
    # Nearly always every id is an int in bounds: C loops over the list say so sooner than building an array.
    if operator.countOf(map(type, ids), int) == len(ids) and (not ids or low <= min(ids) and max(ids) <= high):
        return []
    # The schema's integers: int and its subclasses, bool aside (True is an int to Python, and to numpy).
    integers = {kind for kind in set(map(type, ids)) if issubclass(kind, int) and not issubclass(kind, bool)}
    ints = np.fromiter(map(integers.__contains__, map(type, ids)), dtype=bool, count=len(ids))
    objects = np.fromiter(ids, dtype=object, count=len(ids))  # compared as Python compares: any int, no overflow
    bad = ~ints
    bad[ints] = (objects[ints] < low) | (objects[ints] > high)
    return np.flatnonzero(bad).tolist()


def _id_errors(name: str, ids: object) -> tuple[list[ValidationError], int]:
    """The schema's errors of the first MAX_PROBLEMS bad ids of token-id list `name` (at the paths jsonschema's
    own walk into the list gives them), and how many ids are bad."""
    if not isinstance(ids, list) or len(ids) > _MOST_ITEMS[name]:
        return [], 0  # not a list, or too long: the schema's one problem says so
    bad = _bad_ids(name, ids)
    errors = []
    for i in bad[:MAX_PROBLEMS]:
        for e in _ID_CHECKS[name].iter_errors(ids[i]):
            e.path.extendleft((i, name))  # (name, i, ...): as jsonschema's descent into a list prepends them
            errors.append(e)
    return errors, len(bad)


def _prompt(fields: Mapping, where: Source, tokenizer) -> tuple[int, ...]:
    """The prompt's ids: `prompt_token_ids`, or `prompt` text through the tokenizer; ShardspecError if neither."""
    if "prompt" in fields and "prompt_token_ids" in fields:
        raise_all([where.problem("prompt", "both prompt and prompt_token_ids given", "give one of them")])
    if "prompt" in fields and tokenizer is not None:
        prompt = tuple(tokenizer.encode(fields["prompt"]).ids)
    elif "prompt_token_ids" not in fields:
        hint = "give prompt_token_ids" if "prompt" in fields else "add prompt_token_ids: [1, 2, 3]"
        what = "prompt text needs a model with a tokenizer" if "prompt" in fields else "no prompt"
        raise_all([where.problem("prompt_token_ids", what, hint)])
    else:
        prompt = tuple(fields["prompt_token_ids"])
    if not prompt:
        raise_all([where.problem("prompt", "the prompt text encodes to no tokens", "give more text")])
    return prompt


def _outside_vocabulary(prompt: tuple[int, ...], vocab_size: int) -> int | None:
    """The first id at or past `vocab_size`, or None. max() over the ids: a C loop, and no array to build."""
    if max(prompt) < vocab_size:
        return None
    return next(t for t in prompt if t >= vocab_size)


def _non_finite(fields: Mapping, where: Source) -> list[Problem]:
    return [
        where.problem(key, f"{value} is not a finite number", "give a number")
        for key, value in fields.items()
        if isinstance(value, float) and not math.isfinite(value)
    ]


def read_requests(path: str | Path, *, vocab_size: int, limits: RuntimeSizes, tokenizer=None) -> list[Request]:
    """Every line of a JSONL file as a Request; the bad lines (up to MAX_PROBLEMS) reported at once, nothing run."""
    file = str(path)
    text = read_text(path, MAX_REQUESTS_BYTES, hint="check the --prompts path")
    requests, problems, ids = [], [], set()
    # Lines end at "\n" alone: str.splitlines() would also split at U+2028 or \x0c inside a JSON string.
    for number, line in enumerate(io.StringIO(text, newline="\n"), 1):
        if not line.strip():
            continue
        where = Source(file, {"": number})
        try:
            request = _request_line(line, where, vocab_size=vocab_size, limits=limits, tokenizer=tokenizer)
        except ShardspecError as e:
            problems += e.problems
        else:
            if request.id in ids:
                problems.append(where.problem("id", f"duplicate id {clip(request.id)}", "ids must be unique"))
            ids.add(request.id)
            requests.append(request)
        if len(problems) >= MAX_PROBLEMS:
            problems.append(Problem(f"stopped after {len(problems)} problems", file=file, line=number))
            break
    raise_all(problems)
    if not requests:
        raise ShardspecError("no requests in the file", file=file)
    return requests


def _request_line(line: str, where: Source, **limits) -> Request:
    """One JSONL line as a Request (its number is `where`'s line); ShardspecError if bad."""
    number = where.lines[""]
    try:
        fields = parse_json(line)
    except json.JSONDecodeError as e:
        raise ShardspecError(f"not JSON: {e.msg} (column {e.colno})", file=where.file, line=number) from None
    except ValueError as e:  # NaN / Infinity, an integer of thousands of digits, nesting too deep
        raise ShardspecError(f"not JSON: {e}", file=where.file, line=number) from None
    if not isinstance(fields, dict):
        raise ShardspecError("each line must be a JSON object", file=where.file, line=number)
    return make_request(fields, default_id=str(number), where=where, **limits)


def write_outputs(path: str | Path, outputs: Iterable[Output]) -> None:
    """Outputs as JSONL (`--output`); ShardspecError if the file cannot be written."""
    write_text(path, "".join(json.dumps(out.to_json()) + "\n" for out in outputs), "--output")
