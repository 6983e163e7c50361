"""Hugging Face checkpoints against transformers itself.

tests/fixtures/hf/<type>/ are tiny random checkpoints with transformers' logits
and greedy continuations (made by tests/fixtures/make_hf_reference.py). Each is
loaded sharded under several strategies; greedy tokens must be identical and
logits agree within RTOL × max(1, max |logit|).
"""

import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from shardspec import ShardspecError, apply, compile, load
from shardspec.check import check
from shardspec.cli.main import app
from shardspec.models.config import DeepSeekConfig, MoEConfig, Routing
from shardspec.models.hf_config import deepseek_dense_layers, deepseek_routing, qwen_dense_layers
from shardspec.models.registry import build, resolve_config
from shardspec.runtime.engine import Engine

from conftest import ROOT
from helpers import SERVING, dense_forward

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
DENSE = ["llama", "mistral", "qwen2", "qwen3"]
MOE = ["mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3", "deepseek_v2"]
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
    mixtral, qwen, qwen2 = configs["mixtral"], configs["qwen3_moe"], configs["qwen2_moe"]
    assert isinstance(mixtral, MoEConfig) and mixtral.routing == Routing(norm_topk_prob=True)
    assert mixtral.expert_mlp_size == 32 and not mixtral.shared_mlp_size
    assert not qwen.routing.norm_topk_prob and qwen.dense_layers == (1,) and qwen.qk_norm
    assert qwen2.routing == Routing(norm_topk_prob=False) and qwen2.dense_layers == (0,)  # decoder_sparse_step 2
    assert qwen2.qkv_bias and not qwen2.qk_norm and (qwen2.num_experts, qwen2.expert_mlp_size) == (8, 32)
    assert qwen2.shared_mlp_size == 64 and qwen2.shared_expert_gate
    v3, v2 = configs["deepseek_v3"], configs["deepseek_v2"]
    assert isinstance(v3, DeepSeekConfig) and (v3.q_lora_rank, v3.kv_lora_rank, v3.head_dim) == (32, 32, 24)
    assert v3.routing.topk_method == "noaux_tc" and v3.routing.routed_scaling_factor == 2.5 and v3.mtp_layers == 1
    assert v3.rope_scaling.kind == "yarn" and v3.dense_layers == (0,) and v3.shared_mlp_size == 32
    assert v2.q_lora_rank is None and v2.rope_interleave and v2.routing.topk_method == "group_limited_greedy"
    assert v2.shared_mlp_size == 64 and v2.rope_scaling.mscale_all_dim == 0.707


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"shared_expert_intermediate_size": None},
            "shared_expert_intermediate_size: missing 'shared_expert_intermediate_size' "
            "(a qwen2_moe config.json has it)",
        ),
        ({"shared_expert_intermediate_size": 0}, "shared_expert_intermediate_size: 0 is below the minimum 1"),
        ({"qkv_bias": "yes"}, "qkv_bias: expected true or false or null, got 'yes'"),
        ({"topk_method": "top_p"}, "topk_method: 'top_p' is not one of greedy, group_limited_greedy or noaux_tc"),
        ({"scoring_func": "tanh"}, "scoring_func: 'tanh' is not one of softmax or sigmoid"),
        ({"n_group": 0}, "n_group: 0 is below the minimum 1"),
        ({"routed_scaling_factor": -1.0}, "routed_scaling_factor: -1.0 is not above 0"),
        ({"num_experts_per_tok": 9}, "experts_per_token 9 not in 1..8"),
    ],
)
def test_bad_moe_fields_of_config_json_exit_2_located(tmp_path, change, message):
    directory = shutil.copytree(FIXTURES / "qwen2_moe", tmp_path / "qwen2_moe")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    result = CliRunner().invoke(app, ["validate", str(ROOT / "strategies" / "tp.yaml"), "--model", str(directory)])
    assert result.exit_code == 2 and f"error: {directory / 'config.json'}: {message}" in result.stderr


V3 = {"model_type": "deepseek_v3", "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2}


def test_deepseek_routing_reads_each_family_as_transformers_does():
    assert deepseek_routing(V3, "config.json") == Routing(
        scoring="sigmoid",
        topk_method="noaux_tc",
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        norm_epsilon=1e-20,
        routed_scaling_factor=2.5,
        float32_router=True,
    )
    v2 = {**V3, "model_type": "deepseek_v2", "topk_method": "group_limited_greedy", "routed_scaling_factor": 16.0}
    # transformers never renormalises DeepSeek-V2 (norm_topk_prob is ignored) and always scales.
    assert deepseek_routing({**v2, "norm_topk_prob": True}, "config.json") == Routing(
        topk_method="group_limited_greedy",
        n_group=4,
        topk_group=2,
        norm_topk_prob=False,
        routed_scaling_factor=16.0,
        float32_router=True,
    )
    lite = {**v2, "topk_method": "greedy", "n_group": None, "topk_group": None, "routed_scaling_factor": None}
    assert deepseek_routing(lite, "config.json") == Routing(norm_topk_prob=False, float32_router=True)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"n_group": 3}, "n_group: n_group 3 does not divide n_routed_experts 16 (use 1, 2, 4, 8 or 16)"),
        ({"topk_group": 5}, "topk_group: topk_group 5 is more than n_group 4"),
        (
            {"n_group": 16},
            "n_group: noaux_tc scores a group by its best 2 experts; n_group 16 leaves 1 a group (at most 8 groups)",
        ),
        (
            {"num_experts_per_tok": 9},
            "num_experts_per_tok: num_experts_per_tok 9 is more than the 8 experts of topk_group 2 groups (at most 8)",
        ),
        (
            {"topk_method": "greedy"},
            "topk_method: topk_method 'greedy' is not supported (deepseek_v3 routes by noaux_tc)",
        ),
        (
            {"scoring_func": "softmax"},
            "scoring_func: scoring_func 'softmax' is not supported (deepseek_v3 scores by sigmoid)",
        ),
        (
            {"model_type": "deepseek_v2", "topk_method": "group_limited_greedy", "n_group": None},
            "n_group: missing 'n_group' (group_limited_greedy routing needs it)",
        ),
    ],
)
def test_deepseek_routing_errors_are_located(change, message):
    with pytest.raises(ShardspecError) as error:
        deepseek_routing({**V3, **change}, "config.json")
    assert str(error.value) == f"error: config.json: {message}"


def test_dense_layers_of_each_family():
    assert qwen_dense_layers(4, 2, ()) == (0, 2)  # decoder_sparse_step 2: every second layer MoE
    assert qwen_dense_layers(4, 1, [3]) == (3,)
    assert deepseek_dense_layers(4, 1) == (0,)  # first_k_dense_replace 1 (DeepSeek-V2-Lite)
    assert deepseek_dense_layers(6, 1, 2) == (0, 1, 3, 5)  # and MoE only where layer % moe_layer_freq == 0


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


def test_shardspec_run_serves_a_deepseek_checkpoint_under_the_mla_strategy(tmp_path):
    ref = _reference("deepseek_v3")
    prompts = tmp_path / "in.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt_token_ids": ref[f"prompt_{i}"].tolist(), "max_tokens": 8, "ignore_eos": True}) + "\n"
            for i in range(2)
        )
    )
    out = tmp_path / "out.jsonl"
    args = ["run", str(ROOT / "strategies" / "mla_attention_dp_ep.yaml"), "--model", str(FIXTURES / "deepseek_v3")]
    args += ["--prompts", str(prompts), "--output", str(out)]
    args += [arg for key, value in SERVING.items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["output_token_ids"] for r in rows] == [ref[f"greedy_{i}"].tolist() for i in range(2)]
