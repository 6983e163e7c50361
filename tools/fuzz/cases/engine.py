"""The engine target: random add_request / abort / step sequences on shardspec.Engine, then drained."""

import math

from ..config import ENGINE_CONFIGS, VOCAB
from ..seeds import Seeds
from ..show import brief
from ..values import JSON_VALUES, REQUEST_FIELDS

HOSTILE_REQUEST = {  # Request / SamplingParams attribute -> hostile values
    "prompt_token_ids": [[], [10**6], [-1], [2**31], [2**63], [0] * 600, [1.5, 2.5], list(range(1, 49)), [511]],
    "max_tokens": [0, -1, 10**9, 2**63, 47, True, 1.5],
    "temperature": [math.nan, math.inf, -math.inf, -1.0, 1e308, 1e-45, 100.0],
    "top_k": [-5, 1, 512, 513, 2**31, 2**63],
    "top_p": [0.0, math.nan, -1.0, 2.0, 1e-300],
    "seed": [-1, 2**32, 2**64, 2**32 - 1],
    "stop_token_ids": [[10**6], [-1], list(range(100)), [2]],
    "logprobs": [21, -1, 10**6, 0, 20],
    "stop": [["a"], [""], ["\u2028"], ["x" * 1000], ["e", "t", "a"]],
    "id": ["", "\u2028", "x" * 10_000, "dup"],
}


def _engine_request(rng, k: int, tokenizer: bool) -> dict:
    """A Request as JSON: valid, or with one hostile attribute."""
    req = {
        "id": f"r{k}",
        "prompt_token_ids": [rng.randrange(VOCAB) for _ in range(rng.randint(1, 30))],
        "max_tokens": rng.randint(1, 10),
        "ignore_eos": rng.random() < 0.6,
    }
    if rng.random() < 0.5:
        req["temperature"] = rng.choice([0.0, 0.7, 1.5])
        req["top_k"] = rng.choice([0, 3, -1, 50])
        req["top_p"] = rng.choice([1.0, 0.9, 0.3])
        req["seed"] = rng.randrange(2**16)
    if rng.random() < 0.2:
        req["stop_token_ids"] = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.2:
        req["logprobs"] = rng.randint(0, 5)
    if tokenizer and rng.random() < 0.3:
        req["stop"] = [rng.choice(["a", "e", "the", " ", "\n"])]
    if rng.random() < 0.35:
        field = rng.choice(sorted(HOSTILE_REQUEST))
        if field == "stop" and not tokenizer and rng.random() < 0.7:
            field = "max_tokens"
        req[field] = rng.choice(HOSTILE_REQUEST[field])
        if req["id"] == "dup":
            req["id"] = "r0"
    return req


def gen_engine(rng, seeds: Seeds) -> dict:
    config = rng.choice(sorted(ENGINE_CONFIGS))
    tokenizer = config.startswith("hf_")
    ops, ids = [], []
    for k in range(rng.randint(2, 24)):
        roll = rng.random()
        if roll < 0.45:
            req = _engine_request(rng, k, tokenizer)
            ids.append(str(req["id"]))
            ops.append({"op": "add", "request": req})
        elif roll < 0.55:
            fields = _engine_request(rng, k, tokenizer)
            if rng.random() < 0.3:
                fields.pop("id")
            if tokenizer and rng.random() < 0.5:
                fields.pop("prompt_token_ids")
                fields["prompt"] = rng.choice(["hello world", "λ🙂", "a\u2028b", " ", "x" * 2000, ""])
            if rng.random() < 0.3:
                fields[rng.choice(REQUEST_FIELDS)] = rng.choice(JSON_VALUES)
            ops.append({"op": "add_fields", "fields": fields})
        elif roll < 0.75:
            target = rng.choice(ids) if ids and rng.random() < 0.8 else rng.choice(["nope", "", "r99"])
            ops.append({"op": "abort", "id": target})
        else:
            ops.append({"op": "step", "n": rng.randint(1, 6)})
    return {
        "kind": f"engine {config}",
        "desc": f"engine {config}: " + "; ".join(_op_text(op) for op in ops) + "; drain",
        "engine": config,
        "ops": ops,
    }


def _op_text(op: dict) -> str:
    if op["op"] == "step":
        return f"step x{op['n']}"
    if op["op"] == "abort":
        return f"abort({op['id']!r})"
    body = op.get("request") or op.get("fields")
    items = ", ".join(f"{k}={brief(v, 40)}" for k, v in body.items())
    return ("add(Request " if op["op"] == "add" else "add(**") + items + ")"
