"""Multi-head latent attention: the absorbed form served from the latent cache against the
exact expanded form, its sharding and what explain says of it.

Checkpoints of the DeepSeek families are compared with transformers in test_hf.py; here
the model is shardspec's own preset, and the oracle is its expanded forward
(`DeepSeek.__call__`: every head's key and value built from the latent, as
transformers computes them).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shardspec import compile, load
from shardspec.explanation import explain_dict
from shardspec.flops import attention_channels, attention_params
from shardspec.hlo import hlo_report
from shardspec.models.config import RopeScaling
from shardspec.models.llama import rope_attention_factor, rope_frequencies
from shardspec.models.presets import PRESETS
from shardspec.models.registry import build
from shardspec.runtime.engine import Engine
from shardspec.runtime.request import Request

from conftest import ROOT
from helpers import SERVING, dense_forward

TINY = PRESETS["deepseek-v3-tiny"]
VARIANTS = {
    "v3": TINY,  # low-rank query, interleaved rope, grouped sigmoid routing, a dense first layer
    "full_rank_query_yarn": dataclasses.replace(
        TINY,
        q_lora_rank=None,
        rope_interleave=False,
        rope_scaling=RopeScaling("yarn", 4.0, original_max_position=64, mscale=0.707, mscale_all_dim=0.707),
    ),
}
# Absorbing W_UK into the query and W_UV after attention reorders float32 sums only.
RTOL = 2e-5


def _close(got, want):
    tolerance = RTOL * max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= tolerance, (np.abs(got - want).max(), tolerance)


@pytest.mark.parametrize("name", VARIANTS)
def test_absorbed_attention_equals_the_expanded_form(name):
    model = build(VARIANTS[name], seed=1)
    tokens = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 40))
    absorbed = dense_forward(model, tokens)  # the serving protocol: attention over the latents
    expanded = np.asarray(jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens)))
    _close(absorbed, expanded)


STRATEGIES = {
    "tp": {"tensor": 8, "attention_data": 1},  # the latent replicated on all 8 devices
    "attention_dp": {"tensor": 8},  # auto: 8 attention ranks, each device its own tokens
    "attention_dp_ep": {"tensor": 4, "expert": 2},
    "model_dp": {"data": 2, "tensor": 4, "attention_data": 1},
}


@pytest.fixture(scope="module")
def served_requests():
    rng = np.random.default_rng(5)
    return [
        Request(str(i), tuple(rng.integers(3, TINY.vocab_size, n).tolist()), max_tokens=10, ignore_eos=True)
        for i, n in enumerate((7, 30, 19, 52))
    ]


@pytest.fixture(scope="module")
def expanded_logits():
    """The expanded model's logits over prompt + continuation: one forward a request."""
    model = build(TINY)
    forward = jax.jit(lambda m, t: m(t))

    def logits(tokens):
        return np.asarray(forward(model, jnp.asarray(tokens)[None]))[0]

    return logits


def _assert_expanded_argmax(requests, outputs, expanded_logits):
    for request, out in zip(requests, outputs, strict=True):
        sequence = list(request.prompt_token_ids) + list(out.output_token_ids)
        logits = expanded_logits(sequence[:-1])[len(request.prompt_token_ids) - 1 :]
        assert list(out.output_token_ids) == logits.argmax(-1).tolist()


@pytest.mark.parametrize("name", STRATEGIES)
def test_served_greedy_tokens_are_the_expanded_forms_argmax(name, served_requests, expanded_logits):
    strategy = load({"model": "deepseek-v3-tiny", "parallelism": STRATEGIES[name]}, overrides=SERVING)
    outputs = Engine(compile(strategy)).generate(served_requests)
    _assert_expanded_argmax(served_requests, outputs, expanded_logits)


def test_an_outside_module_declaring_a_latent_cache_is_served_from_it(served_requests, expanded_logits):
    # Compiled as anyone's model: the plan knows only its parameters and decoder_geometry(), and
    # an outside model's parameters get a built-in rule only where the strategy asks by name.
    model = build(TINY)
    built_in = dict.fromkeys(("vocab", "embed", "mlp", "heads", "head_dim", "expert", "expert_mlp"), "default")
    plan = compile(load({"parallelism": {"tensor": 8}, "rules": built_in}, overrides=SERVING), model)
    assert plan.kv_cache.is_latent and plan.attention_data == 8 and plan.kv_cache.replication == 1
    outputs = Engine(plan, model).generate(served_requests)
    _assert_expanded_argmax(served_requests, outputs, expanded_logits)


def _kv(parallelism, model="deepseek-v3"):
    plan = compile(
        load({"model": model, "parallelism": parallelism, "runtime": {"dtype": "bfloat16"}}), abstract_mesh=True
    )
    return explain_dict(plan)["kv_cache"]


def test_the_latent_is_replicated_over_a_tensor_group_and_not_under_attention_dp():
    tp = _kv({"tensor": 8, "attention_data": 1})
    dp = _kv({"tensor": 8})  # auto: one latent a token, no head to split: every device its own rank
    assert tp["kind"] == dp["kind"] == "latent" and tp["latent_dim"] == 512
    assert tp["bytes_per_token_per_layer"] == (512 + 64) * 2  # bfloat16
    assert (tp["kv_head_replication"], dp["kv_head_replication"]) == (8, 1)
    # The same pages a rank; under TP every device stores all of its rank's tokens.
    assert tp["bytes_per_page_per_device"] == dp["bytes_per_page_per_device"] == 61 * 16 * 576 * 2


def test_the_flops_ideal_counts_the_absorbed_attention_xla_compiles():
    # By hand for deepseek-v3-tiny: q_a 128·64, q_b 64·8·24, kv_a 128·40, kv_b 32·8·(16+16), o 8·16·128;
    # a context position costs QKᵀ over latent + rope key (40) and PV over the latent (32).
    assert attention_params(TINY) == 128 * 64 + 64 * 8 * 24 + 128 * 40 + 32 * 8 * 32 + 8 * 16 * 128
    assert attention_channels(TINY) == (40, 32)
    report = hlo_report(compile(load(ROOT / "strategies" / "mla_attention_dp_ep.yaml", overrides=SERVING)))
    # XLA's count is the ideal plus the sampler and the routing (2.08× here, 2.25× for
    # moe_attention_dp_ep); an ideal that counted the attention expanded (24 and 16 channels
    # a head: 2.32×) or left it out (2.72×) is off by more than that.
    assert 1.0 <= report["prefill"]["flops_over_ideal"] < 2.2, report["prefill"]


# transformers 5.24's `_compute_yarn_parameters` for head_dim 16: its float32 inverse frequencies
# (8 significant digits) and attention factor.
YARN_REFERENCE = [
    (
        dict(theta=1e4, scaling=RopeScaling("yarn", 4.0, original_max_position=64)),
        [1.0, 0.23717082, 0.049999997, 0.0079056947, 0.0024999999, 0.00079056947, 0.00025000001, 7.9056947e-05],
        1.138629436111989,  # 0.1 ln(4) + 1: no mscale given
    ),
    (
        dict(
            theta=1e6,
            scaling=RopeScaling(
                "yarn", 8.0, original_max_position=512, beta_fast=16, beta_slow=2, mscale=0.707, mscale_all_dim=0.707
            ),
        ),
        [1.0, 0.12596145, 0.013176158, 0.00070292666, 0.00012500001, 2.2228493e-05, 3.9528468e-06, 7.0292668e-07],
        1.0,  # mscale / mscale_all_dim
    ),
]


@pytest.mark.parametrize("given, frequencies, factor", YARN_REFERENCE)
def test_yarn_rope_is_what_transformers_computes(given, frequencies, factor):
    config = dataclasses.replace(
        PRESETS["llama3-tiny"], head_dim=16, rope_theta=given["theta"], rope_scaling=given["scaling"]
    )
    np.testing.assert_allclose(rope_frequencies(config), frequencies, rtol=1e-6)
    assert rope_attention_factor(config) == pytest.approx(factor)
