"""Checking a request: `make_request` against the full-schema check it replaced, and refusing a 10 MB line.

`make_request` checks a request's token ids without jsonschema (C loops, numpy to
find the bad ones) and the other fields with msgspec (its type built from the same schema), jsonschema walking them
only where msgspec says no; the reference (`full_schema_check` below) is what it did before: jsonschema over every
field, each token id included. At each prompt
length, a round times each on the same 10 requests (an id, 64 new tokens,
temperature, top_p, seed; each its own ids) checked in a row, the two in turn,
against a plan that serves the longest. Each time is the median over rounds; the
ratio is the median over rounds of the reference's time ÷ make_request's in the
same round. The reference is the schema check alone, without the rest of the
old `make_request` (which `make_request`'s time includes): the ratio understates
the gain a little.

Then the seconds to refuse one line of 10 MiB through `read_requests` (read,
`parse_json`, `make_request`, the parsed line freed), median of --runs, for each
shape in SHAPES: goal under 1 s each. Prints one JSON object.

    python benchmarks/request_check.py [--sizes 16,100,1000,10000] [--rounds 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from shardspec import ShardspecError
from shardspec._schema import schema_problems
from shardspec.errors import Source, raise_all
from shardspec.runtime.requests_io import _SCHEMA, make_request, read_requests
from shardspec.sizes import RuntimeSizes

VOCAB = 128_256  # llama3's
MiB = 1 << 20


def full_schema_check(fields: dict) -> None:
    """The reference: the old `make_request`'s schema check, jsonschema over every field and token id."""
    raise_all(schema_problems(dict(fields), Source("<request>", {}), _SCHEMA))


def _plan(longest: int) -> RuntimeSizes:
    """A plan serving requests of up to `longest` tokens (one rank's pages hold them)."""
    return RuntimeSizes(1, 16, longest // 16, max_model_len=longest, max_num_seqs=8, max_num_batched_tokens=2048)


BLOCK = 10  # requests checked in a row per timing: a stream of them, as a request file or a server gives them


def _requests(n: int) -> list[dict]:
    """BLOCK requests of `n` prompt tokens, each with its own id, token ids and seed."""
    rng = random.Random(n)
    return [
        {
            "id": f"request-{i}",
            "prompt_token_ids": [rng.randrange(VOCAB) for _ in range(n)],
            "max_tokens": 64,
            "temperature": 0.7,
            "top_p": 0.95,
            "seed": i,
        }
        for i in range(BLOCK)
    ]


def _us_each(check, block: list[dict]) -> float:
    """µs per request to check `block` in a row."""
    start = time.perf_counter()
    for fields in block:
        check(fields)
    return (time.perf_counter() - start) * 1e6 / len(block)


def measure_check(n: int, rounds: int, limits: RuntimeSizes) -> dict:
    block = _requests(n)
    check = functools.partial(make_request, default_id="0", vocab_size=VOCAB, limits=limits)
    _us_each(check, block), _us_each(full_schema_check, block)  # both accept every request (and are warm)
    times = {"make_request": [], "full_schema": []}
    gc.disable()  # as timeit does: a collection the reference's garbage set off would land in either's time
    try:
        for _ in range(max(5, rounds * 100 // max(n, 100))):  # fewer rounds where the reference takes long
            times["make_request"].append(_us_each(check, block))
            times["full_schema"].append(_us_each(full_schema_check, block))
    finally:
        gc.enable()
    med = {k: round(statistics.median(v), 1) for k, v in times.items()}
    # Per round, then the median: the two times of a round share the machine's load of that moment.
    med["ratio"] = round(statistics.median(f / m for f, m in zip(times["full_schema"], times["make_request"])), 1)
    return med


def _ten_mb(head: str, item: str, last: str) -> str:
    """A JSON line of about 10 MB: `head`, `item` repeated, `last`, closed."""
    return head + item * ((10 * MiB - len(head)) // len(item)) + last + "]}"


# name -> (the line, the longest request the plan serves); every one is refused.
SHAPES = {
    "2.6M ids, over the length limit": lambda: (_ten_mb('{"prompt_token_ids": [', "42, ", "42"), 16_384),
    "a 10 MB prompt string, no tokenizer": lambda: (json.dumps({"prompt": "lorem ipsum " * (10 * MiB // 12)}), 16_384),
    # A plan serving 4M tokens: every id is read.
    "1.7M ids, one bad at the end, every id read": lambda: (
        _ten_mb('{"prompt_token_ids": [', "1234, ", '"x"'),
        4 * MiB,
    ),
    "2.6M empty lists as ids": lambda: (_ten_mb('{"prompt_token_ids": [', "[], ", "[]"), 16_384),
    "2.1M stop strings": lambda: (_ten_mb('{"prompt_token_ids": [1], "stop": [', '"a", ', '"a"'), 16_384),
    "750K unknown keys": lambda: ("{" + ", ".join(f'"k{i}": 1' for i in range(750_000)) + "}", 16_384),
}


def measure_refusal(name: str, runs: int, folder: Path) -> dict:
    line, longest = SHAPES[name]()
    path = folder / "line.jsonl"
    path.write_text(line + "\n")
    times, said = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        try:
            read_requests(path, vocab_size=VOCAB, limits=_plan(longest))
        except ShardspecError as e:
            said = e.problems[0].message
        else:
            raise AssertionError(f"{name}: accepted")
        times.append(time.perf_counter() - start)
    return {"mb": round(len(line) / 1e6, 1), "seconds": round(statistics.median(times), 3), "first_problem": said}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,100,1000,10000")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="runs per 10 MB shape")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]
    limits = _plan(16 * (max(sizes) // 16 + 5))  # the longest prompt + 64 new tokens
    checks = {}
    for n in sizes:
        checks[str(n)] = r = measure_check(n, args.rounds, limits)
        print(
            f"{n:>6} ids: make_request {r['make_request']} µs, full schema {r['full_schema']} µs, {r['ratio']}x",
            file=sys.stderr,
        )
    refusals = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in SHAPES:
            refusals[name] = r = measure_refusal(name, args.runs, Path(folder))
            print(f"{name}: {r['seconds']} s ({r['first_problem']})", file=sys.stderr)
    out = {
        "benchmark": "request_check",
        "unit": "µs per request check (median); s to refuse a line (median)",
        "goal": {"ratio_at_100": 20, "refuse_10mb_s": 1.0},
        "runs": args.runs,
        "checks": checks,
        "refuse_10mb": refusals,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
