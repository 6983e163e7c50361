"""A Hugging Face checkpoint's config.json -> a shardspec config.

Supported model types and what each adds to the Llama decoder:

    llama      Llama 2/3 (rope_scaling llama3 or linear)    mistral    Mistral (sliding window)
    qwen2      q/k/v biases                                  qwen3      q/k RMSNorm over head_dim
    mixtral    MoE, top-k weights renormalised               qwen3_moe  MoE + q/k norm, norm_topk_prob

Every field read is typed and range-checked first (`hf_config.schema.json`), so a
zero head count, a string size or `hidden_size: 1e9` is a located user error
(`config.json: num_attention_heads: 0 is below the minimum 1`), never a
ZeroDivisionError or a loop over a billion layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shardspec._schema import schema_problems
from shardspec.errors import Problem, ShardspecError, Source, one_of, raise_all
from shardspec.files import MAX_CONFIG_BYTES, read_json_object

from .config import LlamaConfig, MoEConfig, RopeScaling

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe")

# The paged step gathers a whole block table per token, so serving lengths cost
# memory in proportion: checkpoints declaring 128K positions are served up to this.
MAX_SEQ_LEN = 8192

_SCHEMA = json.loads(Path(__file__).with_name("hf_config.schema.json").read_text(encoding="utf-8"))
_NEEDED = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"]
_NEEDED_MOE = {
    "mixtral": ["num_local_experts", "num_experts_per_tok"],
    "qwen3_moe": ["num_experts", "num_experts_per_tok", "moe_intermediate_size"],
}
_ROPE_NEEDS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def config_from_dir(directory: str | os.PathLike) -> LlamaConfig:
    """A shardspec config from a checkpoint directory's config.json (exit 2 on anything unsupported)."""
    path = Path(directory) / "config.json"
    file = str(path)
    raw = _read_config(path)
    model_type = raw["model_type"]
    heads = raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or _head_dim(raw, file)
    fields = dict(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        mlp_size=raw["intermediate_size"],
        rope_theta=float(_rope(raw).get("rope_theta") or 10000.0),
        rms_eps=float(raw.get("rms_norm_eps") or 1e-6),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        max_seq_len=_max_seq_len(raw),
        family=model_type,
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        qkv_bias=model_type == "qwen2",
        rope_scaling=_rope_scaling(raw, file),
        checkpoint=os.fspath(directory),
        eos_token_ids=_eos_token_ids(Path(directory), raw),
    )
    try:
        return _family_config(raw, fields)
    except ValueError as e:  # the config's own consistency checks (heads vs KV heads, top-k vs experts)
        raise ShardspecError(str(e), file=file) from None


def _read_config(path: Path) -> dict:
    """config.json, its fields typed and range-checked, every needed one present."""
    file = str(path)
    raw = _read_json(path, required=True)
    model_type = raw.get("model_type")
    if model_type == "qwen3_moe" and "num_experts" not in raw:  # transformers 5 writes Mixtral's name
        raw = {**raw, "num_experts": raw.get("num_local_experts")}
    if model_type not in SUPPORTED:
        raise ShardspecError(
            f"model_type {model_type!r} is not supported",
            file=file,
            path="model_type",
            hint=f"supported: {one_of(SUPPORTED)}",
        )
    raise_all(schema_problems(raw, Source(file), _SCHEMA))
    need = _NEEDED + _NEEDED_MOE.get(model_type, [])
    raise_all(
        [
            Problem(f"missing {key!r}", file=file, path=key, hint=f"a {model_type} config.json has it")
            for key in need
            if raw.get(key) is None
        ]
    )
    raise_all(_unsupported(raw, file))
    return raw


def _family_config(raw: dict, fields: dict) -> LlamaConfig:
    model_type = raw["model_type"]
    if model_type == "mixtral":
        return MoEConfig(
            **fields,
            num_experts=raw["num_local_experts"],
            experts_per_token=raw["num_experts_per_tok"],
            expert_mlp_size=raw["intermediate_size"],
            norm_topk_prob=True,
        )
    if model_type == "qwen3_moe":
        step, only = raw.get("decoder_sparse_step") or 1, set(raw.get("mlp_only_layers") or ())
        dense = tuple(i for i in range(raw["num_hidden_layers"]) if i in only or (i + 1) % step)
        return MoEConfig(
            **fields,
            num_experts=raw["num_experts"],
            experts_per_token=raw["num_experts_per_tok"],
            expert_mlp_size=raw["moe_intermediate_size"],
            norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
            dense_layers=dense,
        )
    return LlamaConfig(**fields)


def _head_dim(raw: dict, file: str) -> int:
    """hidden_size / num_attention_heads, which must divide, when head_dim is not given."""
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    if hidden % heads:
        raise ShardspecError(
            f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
            file=file,
            path="hidden_size",
            hint="give head_dim",
        )
    return hidden // heads


def _read_json(path: Path, required: bool = False) -> dict:
    """A JSON object file of the checkpoint; {} for an optional one that is not there."""
    if not required and not os.path.lexists(path):
        return {}
    return read_json_object(path, MAX_CONFIG_BYTES, hint="a Hugging Face checkpoint directory needs config.json")


def _unsupported(raw: dict, file: str) -> list[Problem]:
    """Switches of these families that shardspec's models do not implement."""
    problems = []
    if raw.get("hidden_act", "silu") != "silu":
        problems.append(
            Problem(
                f"hidden_act {raw['hidden_act']!r} is not supported",
                file=file,
                path="hidden_act",
                hint="only silu (SwiGLU)",
            )
        )
    for key in ("attention_bias", "mlp_bias"):  # Llama / Qwen3 options that add an o_proj or MLP bias
        if raw.get(key) and raw.get("model_type") != "qwen2":
            problems.append(Problem(f"{key}: true is not supported", file=file, path=key))
    if (raw.get("partial_rotary_factor") or 1.0) != 1.0:
        problems.append(Problem("partial_rotary_factor is not supported", file=file, path="partial_rotary_factor"))
    return problems


def _rope(raw: dict) -> dict:
    """RoPE settings: transformers 5 writes `rope_parameters`, older files `rope_theta` + `rope_scaling`."""
    params = dict(raw.get("rope_parameters") or {})
    if "rope_theta" in raw:
        params["rope_theta"] = raw["rope_theta"]
    if raw.get("rope_scaling"):
        params.update(raw["rope_scaling"])
    return params


def _rope_scaling(raw: dict, file: str) -> RopeScaling | None:
    params = _rope(raw)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return None
    if kind not in _ROPE_NEEDS:
        raise ShardspecError(
            f"rope scaling {kind!r} is not supported",
            file=file,
            path="rope_scaling",
            hint="supported: default, linear or llama3",
        )
    missing = [key for key in _ROPE_NEEDS[kind] if params.get(key) is None]
    if missing:
        raise ShardspecError(
            f"{kind} rope scaling needs {one_of(missing)}", file=file, path="rope_scaling", hint="see the model card"
        )
    if kind == "linear":
        return RopeScaling("linear", float(params["factor"]))
    return RopeScaling(
        "llama3",
        float(params["factor"]),
        float(params["low_freq_factor"]),
        float(params["high_freq_factor"]),
        int(params["original_max_position_embeddings"]),
    )


def _max_seq_len(raw: dict) -> int:
    """The longest sequence served: the model's limit, capped (MAX_SEQ_LEN) and, with a
    sliding window, kept inside the window so full causal attention is exact."""
    limit = min(raw.get("max_position_embeddings") or MAX_SEQ_LEN, MAX_SEQ_LEN)
    windowed = raw.get("model_type") in ("mistral", "mixtral") or raw.get("use_sliding_window")
    if windowed and raw.get("sliding_window"):
        limit = min(limit, raw["sliding_window"])
    return limit


def _eos_token_ids(directory: Path, raw: dict) -> tuple[int, ...]:
    """generation_config.json's eos_token_id (what generate() stops on), else config.json's."""
    path = directory / "generation_config.json"
    generation = _read_json(path)
    raise_all(schema_problems({"eos_token_id": generation.get("eos_token_id")}, Source(str(path)), _SCHEMA))
    eos = generation.get("eos_token_id")
    if eos is None:
        eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos if isinstance(eos, list) else [eos])
