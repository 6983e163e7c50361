"""Penalties, logit_bias and min_tokens: the device's rules against a numpy reference of each."""

import collections

import numpy as np
import pytest

from shardspec import apply, compile, load
from shardspec.runtime.engine import Engine
from shardspec.runtime.sampler import adjust

from conftest import ROOT
from helpers import SERVING, dense_forward


def reference_adjust(logits, prompt, outputs, *, presence=0.0, frequency=0.0, repetition=1.0, bias=(), masked=()):
    """vLLM's rules, one token at a time: bias (and -inf on `masked`), repetition on prompt and
    output tokens, then frequency and presence on output tokens."""
    out = np.array(logits, np.float32)
    for token, value in bias:
        out[token] += value
    out[list(masked)] = -np.inf
    for token in set(prompt) | set(outputs):
        out[token] = out[token] / repetition if out[token] > 0 else out[token] * repetition
    for token, count in collections.Counter(outputs).items():
        out[token] -= frequency * count + presence
    return out


def test_adjust_applies_each_rule_as_the_reference_does():
    rng = np.random.default_rng(0)
    V, rows = 50, []
    for presence, frequency, repetition in [(0.5, 0.0, 1.0), (0.0, 0.7, 1.0), (0.0, 0.0, 1.3), (-1.0, 0.3, 0.8)]:
        prompt, outputs = rng.integers(0, V, 6).tolist(), rng.integers(0, V, 9).tolist()
        bias = list(({3: 5.0} | {int(outputs[0]): -2.0}).items())  # a biased output token too
        rows.append((prompt, outputs, presence, frequency, repetition, bias, outputs[-1]))  # the last one pending
    W = 32
    logits = rng.normal(size=(len(rows), V)).astype(np.float32) * 3
    ids, counts, biases = np.full((len(rows), W), -1), np.full((len(rows), W), -1), np.zeros((len(rows), W))
    for i, (prompt, outputs, *_, bias, _) in enumerate(rows):
        known = collections.Counter(outputs[:-1])
        entries = {t: 0 for t in prompt} | dict(known)
        tokens = sorted(entries.keys() | {t for t, _ in bias})
        ids[i, : len(tokens)] = tokens
        counts[i, : len(tokens)] = [entries.get(t, -1) for t in tokens]
        biases[i, : len(tokens)] = [dict(bias).get(t, 0.0) for t in tokens]
    got = adjust(
        logits,
        ids.astype(np.int32),
        counts.astype(np.int32),
        biases.astype(np.float32),
        *(np.array([r[k] for r in rows], np.float32) for k in (2, 3, 4)),
        np.array([r[-1] for r in rows], np.int32),
    )
    for i, (prompt, outputs, presence, frequency, repetition, bias, _) in enumerate(rows):
        want = reference_adjust(
            logits[i], prompt, outputs, presence=presence, frequency=frequency, repetition=repetition, bias=bias
        )
        np.testing.assert_allclose(np.asarray(got[i]), want, rtol=1e-6, atol=1e-6)


RULES = {  # each request's rules, as request fields and as reference_adjust's arguments
    # A bias makes token 17 repeat; the penalty must hold it back.
    "presence": ({"presence_penalty": 1.5, "logit_bias": {"17": 5.0}}, {"presence": 1.5, "bias": [(17, 5.0)]}),
    "frequency": ({"frequency_penalty": 1.2, "logit_bias": {"17": 5.0}}, {"frequency": 1.2, "bias": [(17, 5.0)]}),
    "repetition": ({"repetition_penalty": 1.8}, {"repetition": 1.8}),
    "bias": ({"logit_bias": {"17": 8.0, "100": -100}}, {"bias": [(17, 8.0), (100, -100.0)]}),
    "mixed": (
        {"presence_penalty": -0.5, "frequency_penalty": 0.8, "repetition_penalty": 1.3, "logit_bias": {"17": 5.0}},
        {"presence": -0.5, "frequency": 0.8, "repetition": 1.3, "bias": [(17, 5.0)]},
    ),
}


def _reference_greedy(model, prompt, max_tokens, stops=(), min_tokens=0, **rules):
    """Greedy decoding of the dense reference model with the rules applied in numpy: every
    position read from a forward pass padded to one length (causal: padding changes nothing
    before it; one length: one compiled program for every call)."""
    length = 64
    assert len(prompt) + max_tokens <= length
    tokens = list(prompt)
    for i in range(max_tokens):
        logits = dense_forward(model, [tokens + [0] * (length - len(tokens))])[0, len(tokens) - 1]
        masked = stops if i < min_tokens else ()
        out = reference_adjust(logits, prompt, tokens[len(prompt) :], masked=masked, **rules)
        token = int(np.argmax(out))
        tokens.append(token)
        if token in stops:
            break
    return tokens[len(prompt) :]


@pytest.mark.parametrize(
    "strategy, async_scheduling",
    [("attention_dp", "false"), ("attention_dp", "true"), ("dp_tp", "true")],  # 4 ranks over attn_dp; over data
)
def test_greedy_tokens_with_rules_equal_the_reference(strategy, async_scheduling):
    overrides = SERVING | {"runtime.async_scheduling": async_scheduling}
    plan = compile(load(ROOT / "strategies" / f"{strategy}.yaml", overrides=overrides))
    engine = Engine(plan)
    model = apply(plan)
    rng = np.random.default_rng(2)
    prompts = {name: rng.integers(0, 512, 12 + 3 * i).tolist() for i, name in enumerate([*RULES, "min", "plain"])}
    plain = _reference_greedy(model, prompts["min"], 1)[0]  # min_tokens keeps this stop token back
    requests = [
        {"id": name, "prompt_token_ids": prompts[name], "max_tokens": 10, "ignore_eos": True, **fields}
        for name, (fields, _) in RULES.items()
    ] + [
        {
            "id": "min",
            "prompt_token_ids": prompts["min"],
            "max_tokens": 6,
            "ignore_eos": True,
            "stop_token_ids": [plain],
            "min_tokens": 4,
        },
        {"id": "plain", "prompt_token_ids": prompts["plain"], "max_tokens": 10, "ignore_eos": True},
    ]
    got = {o.id: list(o.output_token_ids) for o in engine.generate(requests)}
    for name, (_, rules) in RULES.items():
        assert got[name] == _reference_greedy(model, prompts[name], 10, **rules), name
        without = {"bias": rules["bias"]} if "bias" in rules and name != "bias" else {}  # the penalty left out
        assert got[name] != _reference_greedy(model, prompts[name], 10, **without), f"{name} changed nothing"
    assert got["min"] == _reference_greedy(model, prompts["min"], 6, stops=(plain,), min_tokens=4)
    assert plain not in got["min"][:4]
    assert got["plain"] == _reference_greedy(model, prompts["plain"], 10)
