"""Requests in (JSONL or keyword arguments, validated) and outputs out (JSONL)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from .._schema import schema_problems
from ..errors import Problem, ShardspecError, Source, raise_all
from .request import Output, Request, SamplingParams

_SCHEMA = json.loads(Path(__file__).with_name("request.schema.json").read_text(encoding="utf-8"))


def make_request(
    fields: Mapping,
    *,
    default_id: str,
    vocab_size: int,
    max_model_len: int,
    where: Source | None = None,
    tokenizer=None,
) -> Request:
    """A validated Request from request-file fields; ShardspecError names each bad field.

    `tokenizer` (a checkpoint's, `shardspec.tokenizer`) turns `prompt` text into ids.
    """
    where = where or Source("<request>", {})
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
    max_tokens = fields.get("max_tokens", 16)
    if len(prompt) + max_tokens > max_model_len:
        problems.append(
            where.problem(
                "max_tokens",
                f"prompt {len(prompt)} + max_tokens {max_tokens} exceeds the maximum length {max_model_len}",
                f"use max_tokens <= {max(max_model_len - len(prompt), 0)}",
            )
        )
    raise_all(problems)
    sampling = SamplingParams(
        float(fields.get("temperature", 0.0)),
        int(fields.get("top_k", 0)),
        float(fields.get("top_p", 1.0)),
        int(fields.get("seed", 0)),
    )
    return Request(
        str(fields.get("id", default_id)),
        prompt,
        max_tokens,
        sampling,
        bool(fields.get("ignore_eos", False)),
        tuple(fields.get("stop_token_ids", ())),
    )


def read_requests(path: str | Path, *, vocab_size: int, max_model_len: int, tokenizer=None) -> list[Request]:
    """Every line of a JSONL file as a Request; all bad lines reported at once, nothing run."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ShardspecError("file not found", file=file, hint="check the --prompts path") from None
    except UnicodeDecodeError as e:
        raise ShardspecError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=file) from None
    requests, problems, ids = [], [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = Source(file, {"": number})
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(Problem(f"not JSON: {e.msg} (column {e.colno})", file=file, line=number))
            continue
        if not isinstance(fields, dict):
            problems.append(Problem("each line must be a JSON object", file=file, line=number))
            continue
        try:
            request = make_request(
                fields,
                default_id=str(number),
                vocab_size=vocab_size,
                max_model_len=max_model_len,
                where=where,
                tokenizer=tokenizer,
            )
        except ShardspecError as e:
            problems += e.problems
            continue
        if request.id in ids:
            problems.append(where.problem("id", f"duplicate id {request.id!r}", "ids must be unique"))
        ids.add(request.id)
        requests.append(request)
    raise_all(problems)
    if not requests:
        raise ShardspecError("no requests in the file", file=file)
    return requests


def write_outputs(path: str | Path, outputs: Iterable[Output]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for out in outputs:
            f.write(json.dumps(out.to_json()) + "\n")
