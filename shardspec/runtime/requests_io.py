"""Requests in (JSONL or keyword arguments, validated) and outputs out (JSONL)."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from .._schema import schema_problems
from ..errors import Problem, ShardspecError, Source, clip, raise_all
from ..files import MAX_REQUESTS_BYTES, parse_json, read_text, write_text
from ..sizes import RuntimeSizes
from .request import Output, Request, SamplingParams

_REQUEST_FIELDS = ("max_tokens", "ignore_eos", "stop_token_ids", "logprobs")  # as Request takes them
_SAMPLING_FIELDS = {"temperature": float, "top_k": int, "top_p": float, "seed": int}  # SamplingParams'
_SCHEMA = json.loads(Path(__file__).with_name("request.schema.json").read_text(encoding="utf-8"))


def make_request(
    fields: Mapping,
    *,
    default_id: str,
    vocab_size: int,
    limits: RuntimeSizes,
    where: Source | None = None,
    tokenizer=None,
) -> Request:
    """A validated Request from request-file fields; ShardspecError names each bad field.

    `limits` are the plan's (the longest request it serves); `tokenizer` (a
    checkpoint's, `shardspec.tokenizer`) turns `prompt` text into ids. A field
    left out takes `Request`'s (and `SamplingParams`') default, their one owner.
    """
    where = where or Source("<request>", {})
    raise_all(_non_finite(fields, where))  # JSON Schema's bounds let NaN through
    raise_all(schema_problems(dict(fields), where, _SCHEMA))
    problems: list[Problem] = []
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
    bad = [t for t in prompt if t >= vocab_size]
    if bad:
        problems.append(
            where.problem(
                "prompt_token_ids",
                f"token id {bad[0]} is outside the vocabulary",
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
    request = Request(str(fields.get("id", default_id)), prompt, sampling=sampling, **given)
    if too_long := limits.request_len_problem(len(prompt), request.max_tokens):
        problems.append(where.problem("max_tokens", *too_long))
    raise_all(problems)
    return request


def request_fields(request: Request) -> dict:
    """A Request as request-file fields: Request objects are checked by the same path as lines."""
    sampling = request.sampling
    fields = {
        "id": request.id,
        "prompt_token_ids": list(request.prompt_token_ids),
        "max_tokens": request.max_tokens,
        "ignore_eos": request.ignore_eos,
        "stop_token_ids": list(request.stop_token_ids),
        **{k: getattr(sampling, k) for k in _SAMPLING_FIELDS},
    }
    if request.stop:
        fields["stop"] = list(request.stop)
    if request.logprobs is not None:
        fields["logprobs"] = request.logprobs
    return fields


def _non_finite(fields: Mapping, where: Source) -> list[Problem]:
    return [
        where.problem(key, f"{value} is not a finite number", "give a number")
        for key, value in fields.items()
        if isinstance(value, float) and not math.isfinite(value)
    ]


MAX_PROBLEMS = 20  # bad lines reported from one file: a file of junk stops here, not after a million


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
