"""Sharded safetensors loading: each device gets its own shard, host memory stays
near one tensor, and every bad checkpoint exits 2 naming the file and tensor."""

import gc
import json
import shutil
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures.synthetic import llama_config, write_checkpoint
from flax import nnx
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from shardspec import ShardspecError, apply, compile, load
from shardspec.cli.main import app
from shardspec.explanation import explain
from shardspec.models.registry import build, resolve_config

from conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
TP = str(ROOT / "strategies" / "tp.yaml")


def _copy(tmp_path, model_type):
    return shutil.copytree(FIXTURES / model_type, tmp_path / model_type)


def _validate(directory):
    """`shardspec validate` on the checkpoint: (exit code, stderr)."""
    result = CliRunner().invoke(app, ["validate", TP, "--model", str(directory)])
    return result.exit_code, result.stderr


def _flat(state):
    return {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(state)}


def test_each_device_holds_exactly_its_shard_of_the_checkpoint():
    directory = str(FIXTURES / "mixtral")
    plan = compile(load({"model": directory, "parallelism": {"data": 2, "tensor": 2, "expert": 2}}))
    sharded = _flat(nnx.state(apply(plan)))
    with jax.default_device(jax.devices()[0]):
        whole = _flat(nnx.state(build(resolve_config(directory))))
    for layout in plan.params:
        value = sharded[layout.path]
        assert value.sharding.is_equivalent_to(plan.sharding(layout.spec), value.ndim)
        full = np.asarray(whole[layout.path])
        for shard in value.addressable_shards:
            assert shard.data.nbytes == layout.bytes_per_device
            np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])


def test_host_memory_stays_near_one_tensor_not_the_model(tmp_path):
    write_checkpoint(tmp_path, llama_config(vocab=8192, hidden=512, mlp=2048, layers=8), file_bytes=16 << 20)
    plan = compile(load({"model": str(tmp_path), "parallelism": {"tensor": 8}}))
    largest = max(p.nbytes for p in plan.params)  # float32, as loaded
    model_bytes = sum(p.nbytes for p in plan.params)
    tracemalloc.start()
    try:
        model = apply(plan)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(jax.tree.leaves(nnx.state(model))) == len(plan.params)
    # On CPU a device may keep a staged shard as its own memory (`held`, which is
    # device memory there); what loading needs on top is one shard at a time.
    staging = peak - held
    assert staging < largest / 2 and largest < model_bytes / 6, (staging, largest, model_bytes)


def test_a_sharded_multi_file_synthetic_checkpoint_round_trips(tmp_path):
    write_checkpoint(tmp_path, llama_config(), dtype="float16", file_bytes=64 << 10)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    plan = compile(load({"model": str(tmp_path), "parallelism": {"tensor": 4, "data": 2}}))
    got = _flat(nnx.state(apply(plan)))
    tensors = {}
    for file in tmp_path.glob("*.safetensors"):
        tensors.update(load_file(file))
    want = tensors["model.layers.1.self_attn.o_proj.weight"].astype(np.float32)  # [E, H*D]
    np.testing.assert_array_equal(
        np.asarray(got["layers.1.self_attn.o_proj"]), want.reshape(64, 8, 16).transpose(1, 2, 0)
    )


# -- bad checkpoints ---------------------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path):
    directory = _copy(tmp_path, "llama")
    (directory / "model-00002-of-00004.safetensors").unlink()
    code, err = _validate(directory)
    assert code == 2
    assert f"error: {directory / 'model-00002-of-00004.safetensors'}: missing file" in err


def test_a_truncated_file_is_named_and_nothing_is_loaded(tmp_path):
    directory = _copy(tmp_path, "mistral")
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, err = _validate(directory)
    assert code == 2 and f"error: {directory / 'model.safetensors'}: cannot read" in err
    before = len(jax.live_arrays())
    with pytest.raises(ShardspecError):
        apply(compile(load({"model": str(directory), "parallelism": {"tensor": 8}})))
    assert len(jax.live_arrays()) == before


def test_a_shape_that_disagrees_with_config_json_names_file_and_tensor(tmp_path):
    directory = _copy(tmp_path, "qwen2")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    code, err = _validate(directory)
    assert code == 2
    assert (
        f"error: {directory / 'model.safetensors'}: model.layers.0.mlp.down_proj.weight: shape [64, 128] "
        "disagrees with config.json (expected [64, 96] for layers.0.mlp.down_proj)"
    ) in err.splitlines()


def test_a_missing_tensor_is_named(tmp_path):
    directory = _copy(tmp_path, "qwen3_moe")
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.0.mlp.experts.5.up_proj.weight"]
    save_file(tensors, str(directory / "model.safetensors"))
    code, err = _validate(directory)
    assert code == 2
    assert err == (
        f"error: {directory}: missing tensor model.layers.0.mlp.experts.5.up_proj.weight "
        "(shardspec's layers.0.mlp.up_proj)\n"
    )


def test_an_unsupported_dtype_is_named(tmp_path):
    directory = _copy(tmp_path, "qwen3")
    tensors = load_file(directory / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int8)
    save_file(tensors, str(directory / "model.safetensors"))
    code, err = _validate(directory)
    assert code == 2 and "model.norm.weight: dtype I8 is not supported (bf16, fp16 or fp32)" in err


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"model_type": "gpt2"},
            "model_type: model_type 'gpt2' is not supported (supported: llama, mistral, "
            "qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe, deepseek_v2 or deepseek_v3)",
        ),
        ({"hidden_act": "gelu"}, "hidden_act: hidden_act 'gelu' is not supported (only silu (SwiGLU))"),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 4.0}}, "rope_scaling: rope scaling 'longrope' is not"),
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            "rope_scaling: yarn rope scaling needs original_max_position_embeddings",
        ),
        (
            {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
            "quantization_config: a quantized checkpoint (fp8) is not supported",
        ),
        ({"hidden_size": None}, "hidden_size: missing 'hidden_size'"),
    ],
)
def test_config_json_problems_exit_2(tmp_path, change, message):
    directory = _copy(tmp_path, "llama")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    code, err = _validate(directory)
    assert code == 2 and f"error: {directory / 'config.json'}: {message}" in err


def test_a_directory_without_config_json_exits_2(tmp_path):
    code, err = _validate(tmp_path)
    assert code == 2 and err == (
        f"error: {tmp_path / 'config.json'}: file not found (a Hugging Face checkpoint directory needs config.json)\n"
    )


def test_hub_style_qwen3_moe_config_names_its_experts_num_experts(tmp_path):
    directory = _copy(tmp_path, "qwen3_moe")
    config = json.loads((directory / "config.json").read_text())
    config["num_experts"] = config.pop("num_local_experts")
    (directory / "config.json").write_text(json.dumps(config))
    assert resolve_config(str(directory)).num_experts == 8
    assert _validate(directory)[0] == 0


def test_validate_accepts_every_fixture():
    for directory in sorted(FIXTURES.iterdir()):
        assert _validate(directory)[0] == 0, directory


def test_multi_token_prediction_layers_past_the_last_layer_are_not_read(tmp_path):
    directory = _copy(tmp_path, "deepseek_v3")  # its file holds model.layers.2.* (MTP) beside layers 0-1
    assert "model.layers.2.eh_proj.weight" in load_file(directory / "model.safetensors")
    assert resolve_config(str(directory)).mtp_layers == 1 and _validate(directory)[0] == 0


def test_a_float32_router_stays_float32_in_a_bf16_runtime():
    # DeepSeek routes in float32 (transformers keeps gate.weight and the selection bias so).
    strategy = {"model": str(FIXTURES / "deepseek_v3"), "parallelism": {"tensor": 8}, "runtime": {"dtype": "bfloat16"}}
    plan = compile(load(strategy))
    state = _flat(nnx.state(apply(plan)))
    assert state["layers.1.mlp.router"].dtype == state["layers.1.mlp.score_correction_bias"].dtype == np.float32
    assert state["layers.1.mlp.gate_proj"].dtype == jnp.bfloat16


def test_a_bf16_checkpoint_loads_bit_exact_into_a_bf16_runtime():
    directory = FIXTURES / "mistral"
    plan = compile(load({"model": str(directory), "parallelism": {"tensor": 8}, "runtime": {"dtype": "bfloat16"}}))
    got = _flat(nnx.state(apply(plan)))["layers.0.mlp.gate_proj"]
    want = load_file(directory / "model.safetensors")["model.layers.0.mlp.gate_proj.weight"]  # [F, E]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), want.T)


def test_a_long_context_checkpoint_is_served_as_long_as_a_rank_holds(tmp_path):
    directory = _copy(tmp_path, "llama")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 131072}))
    assert resolve_config(str(directory)).max_seq_len == 131072  # no cap below the model's own

    def sizes(**kv_cache):
        strategy = load({"model": str(directory), "kv_cache": {"page_size": 16, **kv_cache}})
        return compile(strategy, abstract_mesh=True)

    roomy = sizes(num_pages=8192)  # 131,072 tokens a rank: the model's whole length
    assert roomy.runtime.max_model_len == roomy.runtime.max_request_len == 131072
    short = sizes(num_pages=256)  # 4,096 tokens a rank: block tables stop there
    assert short.runtime.max_model_len == 4097 and short.runtime.max_pages_per_seq == 257
    text = explain(short)
    assert "max_model_len: 4097 (the 4097 tokens one DP rank's KV pages hold (256 pages of 16; the model " in text
    assert "allows 131072: more kv_cache.num_pages, a smaller kv_cache.dtype or attention DP hold more)" in text
