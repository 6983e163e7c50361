"""Hugging Face checkpoints against transformers itself.

tests/fixtures/hf/<type>/ are tiny random checkpoints with transformers' logits
and greedy continuations (made by tests/fixtures/make_hf_reference.py). Each is
loaded sharded under several strategies; greedy tokens must be identical and
logits agree within RTOL × max(1, max |logit|).
"""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from shardspec import apply, compile, load
from shardspec.check import check
from shardspec.cli.main import app
from shardspec.models.config import MoEConfig
from shardspec.models.registry import build, resolve_config
from shardspec.runtime.engine import Engine

from conftest import ROOT
from helpers import SERVING, dense_forward

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
DENSE = ["llama", "mistral", "qwen2", "qwen3"]
MOE = ["mixtral", "qwen3_moe"]
# float32: the measured worst difference from transformers is ~3e-7 of the largest
# logit (reduction order only); 1e-5 leaves 30x headroom and catches any real error.
RTOL = 1e-5
STRATEGIES = {
    "tp": {"tensor": 8, "attention_data": 1},
    "model_dp": {"data": 2, "tensor": 4, "attention_data": 1},
    "attention_dp": {"tensor": 8},  # auto: attn_dp 4 × model 2 for 2 KV heads
    "ep": {"tensor": 2, "attention_data": 1, "expert": 4},
    "attention_dp_ep": {"data": 2, "tensor": 2, "expert": 2},  # model DP × attention DP (auto 1) × EP
}
CASES = [(t, s) for t in DENSE + MOE for s in STRATEGIES if t in MOE or "ep" not in s]
SMALL = {"max_num_batched_tokens": 64, "max_num_seqs": 8}  # helpers.SERVING's (kv_cache float32 below)


def _reference(model_type):
    return np.load(FIXTURES / model_type / "reference.npz")


def _strategy(model_type, parallelism, **sections):
    runtime = {**SMALL, **sections.pop("runtime", {})}
    return load(
        {
            "model": str(FIXTURES / model_type),
            "parallelism": parallelism,
            "kv_cache": {"dtype": "float32"},
            "runtime": runtime,
            **sections,
        }
    )


def _sequence(ref, i):
    """Prompt + continuation[:-1]: the positions transformers' logits were taken at."""
    return np.concatenate([ref[f"prompt_{i}"], ref[f"greedy_{i}"][:-1]])


def _assert_logits_match(got, want):
    assert (got.argmax(-1) == want.argmax(-1)).all()
    tolerance = RTOL * max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= tolerance, (np.abs(got - want).max(), tolerance)


@pytest.mark.parametrize("model_type,name", CASES, ids=[f"{t}-{s}" for t, s in CASES])
def test_sharded_logits_equal_transformers(model_type, name):
    ref = _reference(model_type)
    plan = compile(_strategy(model_type, STRATEGIES[name]))
    got = dense_forward(apply(plan), _batch(ref), plan.layout)
    for i in range(2):
        _assert_logits_match(got[i, : len(_sequence(ref, i))], ref[f"logits_{i}"])


@pytest.mark.parametrize("model_type", MOE)
def test_dense_moe_dispatch_logits_equal_transformers_too(model_type):
    # The sparse dispatch (the default) runs in every case above; dense is the reference.
    ref = _reference(model_type)
    plan = compile(_strategy(model_type, STRATEGIES["ep"], runtime={"moe_dispatch": "dense"}))
    got = np.asarray(apply(plan)(jnp.asarray(_batch(ref)), layout=plan.layout))  # eager, as the README calls it
    for i in range(2):
        _assert_logits_match(got[i, : len(_sequence(ref, i))], ref[f"logits_{i}"])


def _batch(ref, rows=8):
    """Both sequences, right-padded to one length (causal: padding never reaches them), repeated
    to `rows` so that every DP width divides the batch; one shape, one compile."""
    seqs = [_sequence(ref, i) for i in range(2)]
    width = max(map(len, seqs))
    return np.stack([np.pad(seqs[r % 2], (0, width - len(seqs[r % 2]))) for r in range(rows)])


@pytest.mark.parametrize("model_type", DENSE + MOE)
def test_served_greedy_tokens_equal_transformers(model_type):
    name = "attention_dp_ep" if model_type in MOE else "attention_dp"
    engine = Engine(compile(_strategy(model_type, STRATEGIES[name])))
    ref = _reference(model_type)
    outputs = engine.generate(
        [
            {"prompt_token_ids": ref[f"prompt_{i}"].tolist(), "ignore_eos": True, "max_tokens": len(ref[f"greedy_{i}"])}
            for i in range(2)
        ]
    )
    assert [list(o.output_token_ids) for o in outputs] == [ref[f"greedy_{i}"].tolist() for i in range(2)]


@pytest.mark.parametrize("model_type", ["llama", "qwen3_moe"])
def test_unsharded_reference_model_and_check_use_the_checkpoint(model_type):
    ref = _reference(model_type)
    model = build(resolve_config(str(FIXTURES / model_type)))
    _assert_logits_match(dense_forward(model, _sequence(ref, 0)[None])[0], ref["logits_0"])
    result = check(compile(_strategy(model_type, STRATEGIES["tp"])))
    assert result.passed and result.max_abs_diff < 1e-4, result.summary()


def test_padding_policy_loads_exactly():
    """3 devices: attention replicated, mlp / vocab / expert_mlp zero-padded (policy.indivisible: pad)."""
    ref = _reference("mixtral")
    plan = compile(
        _strategy(
            "mixtral",
            {"tensor": 3, "attention_data": 1},
            devices=3,
            rules={"heads": None, "kv_heads": None},
            policy={"indivisible": "pad"},
        )
    )
    assert plan.param("lm_head").stored_shape == (64, 513)
    assert plan.param("layers.0.mlp.gate_proj").stored_shape == (8, 64, 33)
    got = dense_forward(apply(plan), _batch(ref, rows=2), plan.layout)
    _assert_logits_match(got[1], ref["logits_1"])


def test_config_json_maps_each_family():
    configs = {t: resolve_config(str(FIXTURES / t)) for t in DENSE + MOE}
    assert configs["llama"].rope_scaling.kind == "llama3" and configs["llama"].eos_token_ids == (2, 3)
    assert configs["qwen2"].qkv_bias and configs["qwen2"].tie_embeddings
    assert configs["qwen3"].qk_norm and not configs["qwen3"].qkv_bias
    assert configs["mistral"].max_seq_len == 256  # inside its 4096 sliding window
    mixtral, qwen = configs["mixtral"], configs["qwen3_moe"]
    assert isinstance(mixtral, MoEConfig) and mixtral.norm_topk_prob and mixtral.expert_mlp_size == 32
    assert not qwen.norm_topk_prob and qwen.dense_layers == (1,) and qwen.qk_norm


def test_prompt_text_in_and_text_out_with_the_checkpoint_tokenizer():
    ref = _reference("llama")
    engine = Engine(compile(_strategy("llama", STRATEGIES["tp"])))
    out = engine.generate([{"prompt": str(ref["text"]), "max_tokens": 8, "ignore_eos": True}])[0]
    assert list(out.prompt_token_ids) == ref["text_prompt"].tolist()
    assert list(out.output_token_ids) == ref["text_greedy"].tolist()
    assert out.text == str(ref["text_output"])


def test_every_eos_of_generation_config_stops_a_request():
    """generation_config.json lists two EOS ids; the second stops generation as well."""
    ref = _reference("llama")
    greedy = ref["greedy_0"].tolist()
    stop = greedy[3]
    config = dataclasses.replace(resolve_config(str(FIXTURES / "llama")), eos_token_ids=(511, stop))
    if 511 in greedy[:4]:
        pytest.skip("the fixture's continuation holds the first EOS id")
    engine = Engine(compile(_strategy("llama", STRATEGIES["tp"]), config))
    out = engine.generate([{"prompt_token_ids": ref["prompt_0"].tolist(), "max_tokens": 8}])[0]
    assert out.finish_reason == "stop" and list(out.output_token_ids) == greedy[: greedy.index(stop) + 1]


def test_shardspec_run_on_a_checkpoint_directory(tmp_path):
    ref = _reference("llama")
    prompts = tmp_path / "in.jsonl"
    prompts.write_text(
        json.dumps({"id": "t", "prompt": str(ref["text"]), "max_tokens": 8, "ignore_eos": True})
        + "\n"
        + json.dumps({"prompt_token_ids": ref["prompt_1"].tolist(), "max_tokens": 8, "ignore_eos": True})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(ROOT / "strategies" / "attention_dp.yaml"),
            "--model",
            str(FIXTURES / "llama"),
            "--prompts",
            str(prompts),
            "--output",
            str(out),
            *(arg for key, value in SERVING.items() for arg in ("--set", f"{key}={value}")),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["output_token_ids"] == ref["text_greedy"].tolist() and rows[0]["text"] == str(ref["text_output"])
    assert rows[1]["output_token_ids"] == ref["greedy_1"].tolist()
