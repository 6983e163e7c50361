"""The requests a run serves: a request file, or a synthetic workload, validated against the plan."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import Problem, ShardspecError, raise_all
from ..plan import ShardingPlan
from ..sizes import RuntimeSizes
from ..tokenizer import load_tokenizer
from .request import Request
from .requests_io import make_request, read_requests

MAX_SYNTHETIC_REQUESTS = 1_000_000


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """`num` requests with uniform random prompt and output lengths (inclusive spans) and tokens.

    The fields are `shardspec run`'s flags (--num-requests, --input-len, --output-len,
    --seed), and problems with them are reported there.
    """

    num: int
    input_len: tuple[int, int]
    output_len: tuple[int, int]
    seed: int = 0

    def check(self, limits: RuntimeSizes) -> None:
        """ShardspecError (at the flag) for a workload the plan cannot serve, before any is built."""
        problems = []
        if not 1 <= self.num <= MAX_SYNTHETIC_REQUESTS:
            problems.append(
                Problem(f"{self.num} requests", path="--num-requests", hint=f"use 1 to {MAX_SYNTHETIC_REQUESTS:,}")
            )
        for flag, (low, high) in (("--input-len", self.input_len), ("--output-len", self.output_len)):
            if not 1 <= low <= high:
                given = f"{low}:{high}" if low != high else str(low)
                message = f"{given!r} is not a length or a range LOW:HIGH"
                problems.append(Problem(message, path=flag, hint="e.g. 16:96, both at least 1"))
        raise_all(problems)
        prompt, output = self.input_len[1], self.output_len[1]
        if too_long := limits.request_len_problem(prompt, output):
            room = limits.max_request_len - output  # for the prompt, beside the longest output
            flag, hint = (
                ("--input-len", f"make it at most {room}") if room >= 1 else ("--output-len", "make it shorter")
            )
            raise ShardspecError(f"the longest request: {too_long[0]}", path=flag, hint=hint)


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
    synthetic.check(limits)
    return [
        make_request(r, default_id=r["id"], vocab_size=vocab, limits=limits)
        for r in synthetic_requests(synthetic, vocab)
    ]
