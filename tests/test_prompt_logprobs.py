"""Prompt log-probabilities (`prompt_logprobs`): every prompt token's, against the reference model."""

import jax
import numpy as np
import pytest

from shardspec import apply, compile, load
from shardspec.runtime.engine import Engine

from conftest import ROOT
from helpers import SERVING, dense_forward


@pytest.fixture(scope="module")
def plan():
    return compile(load(ROOT / "strategies" / "attention_dp.yaml", overrides=SERVING))  # 4 ranks, sharded vocab


def _reference_log_softmax(plan, tokens) -> np.ndarray:
    logits = dense_forward(apply(plan), [tokens])[0]
    return np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))


def test_every_prompt_tokens_logprob_is_the_reference_log_softmax(plan):
    engine = Engine(plan)
    rng = np.random.default_rng(1)
    shared = rng.integers(0, 512, 40).tolist()  # a cached prefix must not hide a prompt's tokens
    requests = [
        {"id": "warm", "prompt_token_ids": shared + [7], "max_tokens": 2},
        {
            "id": "long",
            "prompt_token_ids": shared + rng.integers(0, 512, 100).tolist(),
            "max_tokens": 3,
            "prompt_logprobs": 5,
            "logprobs": 1,
        },  # chunked: 140 tokens at 64 a step
        {"id": "short", "prompt_token_ids": [5, 9], "max_tokens": 1, "prompt_logprobs": 0},
        {"id": "none", "prompt_token_ids": [3, 4, 5], "max_tokens": 2},
    ]
    outputs = {o.id: o for o in engine.generate(requests)}
    assert outputs["none"].prompt_logprobs is None and outputs["warm"].prompt_logprobs is None
    for rid, top in [("long", 5), ("short", 0)]:
        out = outputs[rid]
        prompt = list(out.prompt_token_ids)
        want = _reference_log_softmax(plan, prompt)
        assert len(out.prompt_logprobs) == len(prompt) and out.prompt_logprobs[0] is None
        for p, entry in enumerate(out.prompt_logprobs[1:], 1):
            assert entry.token_id == prompt[p]
            assert abs(entry.logprob - want[p - 1, prompt[p]]) < 1e-4
            assert [t for t, _ in entry.top] == np.argsort(-want[p - 1])[:top].tolist()
            np.testing.assert_allclose([lp for _, lp in entry.top], np.sort(want[p - 1])[::-1][:top], atol=1e-4)
    first = outputs["long"].logprobs[0]  # the first output's logprob continues the prompt's
    last = _reference_log_softmax(plan, list(outputs["long"].prompt_token_ids))[-1]
    assert abs(first.logprob - last[first.token_id]) < 1e-4
    assert outputs["long"].to_json()["prompt_logprobs"][0] is None
