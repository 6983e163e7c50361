"""One-device offline generation: shardspec against transformers' batched greedy `generate`.

The same checkpoint (tests/fixtures/hf/llama: a tiny random Llama written by
transformers) and the same 32 requests (8–15-token prompts, 32 tokens out,
greedy, EOS ignored), float32 on one CPU device, measured side by side in one
run: tokens/s of each, best of REPEATS alternating runs after a warm-up, and
how many sequences came out token for token the same. Needs the bench extra
(torch, transformers). Goal: shardspec ≥ 1× transformers.

    python benchmarks/vs_transformers.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "tests" / "fixtures" / "hf" / "llama"
REPEATS, REQUESTS, MAX_TOKENS = 3, 32, 32


def prompts(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 512, int(rng.integers(8, 16))).tolist() for _ in range(REQUESTS)]


def shardspec_runner():
    from shardspec import compile, load
    from shardspec.runtime.engine import Engine

    strategy = load(
        {
            "devices": 1,
            "parallelism": {"tensor": 1},
            "runtime": {"max_num_seqs": REQUESTS, "max_num_batched_tokens": 512},
        }
    )
    engine = Engine(compile(strategy, str(CHECKPOINT), devices=jax.devices()[:1]))
    engine.warmup()

    def run(batch):
        outputs = engine.generate(
            [{"prompt_token_ids": p, "max_tokens": MAX_TOKENS, "ignore_eos": True} for p in batch]
        )
        return [list(o.output_token_ids) for o in outputs]

    return run


def transformers_runner():
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()

    def run(batch):
        width = max(map(len, batch))  # left padding, as batched generation needs
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=MAX_TOKENS,
                min_new_tokens=MAX_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        return out[:, width:].tolist()

    return run


def main() -> dict:
    batch = prompts()
    runners = {"shardspec": shardspec_runner(), "transformers": transformers_runner()}
    tokens, best = {}, dict.fromkeys(runners, float("inf"))
    for name, run in runners.items():
        tokens[name] = run(batch)  # warm-up (and the tokens compared below)
    for _ in range(REPEATS):
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            best[name] = min(best[name], time.perf_counter() - start)
    generated = REQUESTS * MAX_TOKENS
    rate = {name: round(generated / best[name], 1) for name in runners}
    same = sum(a == b for a, b in zip(tokens["shardspec"], tokens["transformers"]))
    out = {
        "benchmark": "vs_transformers",
        "requests": REQUESTS,
        "max_tokens": MAX_TOKENS,
        "tokens_per_s": rate,
        "shardspec_over_transformers": round(rate["shardspec"] / rate["transformers"], 2),
        "identical_sequences": same,
    }
    print(
        f"shardspec {rate['shardspec']} tok/s, transformers {rate['transformers']} tok/s "
        f"({out['shardspec_over_transformers']}x); {same}/{REQUESTS} sequences identical",
        file=sys.stderr,
    )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
