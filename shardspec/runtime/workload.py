"""The requests a run serves: a request file, or a synthetic workload, validated against the plan."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..plan import ShardingPlan
from ..tokenizer import load_tokenizer
from .request import Request
from .requests_io import make_request, read_requests


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """`num` requests with uniform random prompt and output lengths (inclusive spans) and tokens."""

    num: int
    input_len: tuple[int, int]
    output_len: tuple[int, int]
    seed: int = 0


def synthetic_requests(workload: Synthetic, vocab: int) -> list[dict]:
    """Request-file fields for `workload`; they ignore EOS so each runs its full length."""
    rng = np.random.default_rng(workload.seed)
    ins = rng.integers(workload.input_len[0], workload.input_len[1] + 1, workload.num)
    outs = rng.integers(workload.output_len[0], workload.output_len[1] + 1, workload.num)
    return [
        {
            "id": str(i),
            "prompt_token_ids": rng.integers(0, vocab, ins[i]).tolist(),
            "max_tokens": int(outs[i]),
            "ignore_eos": True,
        }
        for i in range(workload.num)
    ]


def requests_for(
    plan: ShardingPlan, *, prompts: str | None = None, synthetic: Synthetic | None = None
) -> list[Request]:
    """The validated requests of a request file (`prompts`) or else of `synthetic`.

    Every bad line or field is a ShardspecError before anything runs; limits
    (vocabulary, the longest request) are the plan's.
    """
    vocab, limits = plan.model.geometry.vocab_size, plan.runtime
    if prompts is not None:
        tokenizer = load_tokenizer(plan.model.checkpoint)  # `prompt` text, with a checkpoint's tokenizer
        return read_requests(prompts, vocab_size=vocab, limits=limits, tokenizer=tokenizer)
    if synthetic is None:
        raise ValueError("requests_for: give prompts or synthetic")
    return [
        make_request(r, default_id=r["id"], vocab_size=vocab, limits=limits)
        for r in synthetic_requests(synthetic, vocab)
    ]
