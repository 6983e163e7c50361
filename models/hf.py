"""Hugging Face checkpoints: config.json -> a shardspec config, and tensor names -> parameters.

Supported model types and what each adds to the Llama decoder:

    llama      Llama 2/3 (rope_scaling llama3 or linear)    mistral    Mistral (sliding window)
    qwen2      q/k/v biases                                  qwen3      q/k RMSNorm over head_dim
    mixtral    MoE, top-k weights renormalised               qwen3_moe  MoE + q/k norm, norm_topk_prob

Layouts differ: a Hugging Face Linear weight is [out, in] and flattens heads
(`q_proj.weight` is [H*D, E]) while shardspec keeps `q_proj` as [E, H, D]; MoE
checkpoints store one tensor per expert where shardspec stacks them. A
`TensorMap` says how to view the checkpoint tensor(s) as the shardspec array,
so that any slice of the array can be read without reading the rest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from shardspec.errors import Problem, ShardspecError, one_of, raise_all

from .config import LlamaConfig, MoEConfig, RopeScaling

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe")

# The paged step gathers a whole block table per token, so serving lengths cost
# memory in proportion: checkpoints declaring 128K positions are served up to this.
MAX_SEQ_LEN = 8192


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """How checkpoint tensors make up one shardspec array.

    virtual = the tensor (or, `stacked`, the per-expert tensors stacked on a new
    leading axis), with dim `split[0]` of size a × `split[1]` viewed as [a, split[1]];
    the shardspec array is virtual.transpose(perm).
    """

    names: tuple[str, ...]
    perm: tuple[int, ...] | None = None  # None = identity
    split: tuple[int, int] | None = None
    stacked: bool = False

    def virtual_axes(self, ndim: int) -> tuple[int, ...]:
        return self.perm or tuple(range(ndim))

    def hf_shape(self, shape) -> tuple[int, ...]:
        """The shape each checkpoint tensor must have for a shardspec array of `shape`."""
        virtual = [0] * len(shape)
        for axis, v in enumerate(self.virtual_axes(len(shape))):
            virtual[v] = shape[axis]
        if self.stacked:
            virtual = virtual[1:]
        if self.split:
            d = self.split[0]
            virtual[d : d + 2] = [virtual[d] * virtual[d + 1]]
        return tuple(virtual)


def config_from_dir(directory: str | os.PathLike) -> LlamaConfig:
    """A shardspec config from a checkpoint directory's config.json (exit 2 on anything unsupported)."""
    path = Path(directory) / "config.json"
    raw = _read_json(path, required=True)
    file = str(path)
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
    need = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"]
    need += {
        "mixtral": ["num_local_experts", "num_experts_per_tok"],
        "qwen3_moe": ["num_experts", "num_experts_per_tok", "moe_intermediate_size"],
    }.get(model_type, [])
    raise_all(
        [
            Problem(f"missing {key!r}", file=file, path=key, hint=f"a {model_type} config.json has it")
            for key in need
            if raw.get(key) is None
        ]
    )
    raise_all(_unsupported(raw, file))
    heads = raw["num_attention_heads"]
    fields = dict(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        mlp_size=raw["intermediate_size"],
        rope_theta=float(_rope(raw).get("rope_theta") or 10000.0),
        rms_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        max_seq_len=_max_seq_len(raw),
        family=model_type,
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        qkv_bias=model_type == "qwen2",
        rope_scaling=_rope_scaling(raw, file),
        checkpoint=os.fspath(directory),
        eos_token_ids=_eos_token_ids(Path(directory), raw),
    )
    if model_type == "mixtral":
        return MoEConfig(
            **fields,
            num_experts=raw["num_local_experts"],
            experts_per_token=raw["num_experts_per_tok"],
            expert_mlp_size=raw["intermediate_size"],
            norm_topk_prob=True,
        )
    if model_type == "qwen3_moe":
        step, only = raw.get("decoder_sparse_step", 1), set(raw.get("mlp_only_layers") or ())
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


def _read_json(path: Path, required: bool = False) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not required:
            return {}
        raise ShardspecError(
            "not found: a Hugging Face checkpoint directory needs config.json", file=str(path)
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardspecError(f"not valid JSON: {e}", file=str(path)) from None
    if not isinstance(data, dict):
        raise ShardspecError("must hold a JSON object", file=str(path))
    return data


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
    if raw.get("partial_rotary_factor", 1.0) != 1.0:
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
    if kind == "linear":
        return RopeScaling("linear", float(params["factor"]))
    if kind == "llama3":
        return RopeScaling(
            "llama3",
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
    raise ShardspecError(
        f"rope scaling {kind!r} is not supported",
        file=file,
        path="rope_scaling",
        hint="supported: default, linear or llama3",
    )


def _max_seq_len(raw: dict) -> int:
    """The longest sequence served: the model's limit, capped (MAX_SEQ_LEN) and, with a
    sliding window, kept inside the window so full causal attention is exact."""
    limit = min(int(raw.get("max_position_embeddings") or MAX_SEQ_LEN), MAX_SEQ_LEN)
    windowed = raw.get("model_type") in ("mistral", "mixtral") or raw.get("use_sliding_window")
    if windowed and raw.get("sliding_window"):
        limit = min(limit, int(raw["sliding_window"]))
    return limit


def _eos_token_ids(directory: Path, raw: dict) -> tuple[int, ...]:
    """generation_config.json's eos_token_id (what generate() stops on), else config.json's."""
    eos = _read_json(directory / "generation_config.json").get("eos_token_id")
    if eos is None:
        eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))


# -- tensor names ---------------------------------------------------------------------------

_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def tensor_map(config: LlamaConfig, path: str, shape: tuple[int, ...]) -> TensorMap:
    """Where the shardspec parameter `path` (of the model's `shape`) lives in the checkpoint."""
    top = {
        "embed_tokens": TensorMap(("model.embed_tokens.weight",)),
        "norm.scale": TensorMap(("model.norm.weight",)),
        "lm_head": TensorMap(("lm_head.weight",), perm=(1, 0)),
    }  # [V, E] -> [E, V]
    if path in top:
        return top[path]
    layer, rest = _LAYER.fullmatch(path).groups()
    prefix = f"model.layers.{layer}."
    if rest in ("input_layernorm.scale", "post_attention_layernorm.scale"):
        return TensorMap((prefix + rest.replace(".scale", ".weight"),))
    attn = re.fullmatch(r"self_attn\.(q|k|v|o)_(proj|bias|norm\.scale)", rest)
    if attn:
        return _attention(prefix + "self_attn.", *attn.groups(), config.head_dim)
    mlp = re.fullmatch(r"mlp\.(gate_proj|up_proj|down_proj|router)", rest)
    if mlp is None:
        raise KeyError(f"no checkpoint tensor for parameter {path!r}")
    return _mlp(config, prefix, mlp.group(1), shape)


def _attention(prefix: str, x: str, kind: str, D: int) -> TensorMap:
    if kind == "norm.scale":  # Qwen3 q_norm / k_norm: [D]
        return TensorMap((f"{prefix}{x}_norm.weight",))
    if kind == "bias":  # Qwen2: [H*D] -> [H, D]
        return TensorMap((f"{prefix}{x}_proj.bias",), split=(0, D))
    name = f"{prefix}{x}_proj.weight"
    if x == "o":  # [E, H*D] -> [E, H, D] -> [H, D, E]
        return TensorMap((name,), perm=(1, 2, 0), split=(1, D))
    return TensorMap((name,), perm=(2, 0, 1), split=(0, D))  # [H*D, E] -> [H, D, E] -> [E, H, D]


def _mlp(config: LlamaConfig, prefix: str, proj: str, shape) -> TensorMap:
    if len(shape) == 2 and proj != "router":  # a dense SwiGLU: [out, in] -> [in, out]
        return TensorMap((f"{prefix}mlp.{proj}.weight",), perm=(1, 0))
    if config.family == "mixtral":
        moe, names = prefix + "block_sparse_moe.", {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
    else:
        moe, names = prefix + "mlp.", {k: k for k in ("gate_proj", "up_proj", "down_proj")}
    if proj == "router":  # [X, E] -> [E, X]
        return TensorMap((moe + "gate.weight",), perm=(1, 0))
    experts = tuple(f"{moe}experts.{x}.{names[proj]}.weight" for x in range(shape[0]))
    return TensorMap(experts, perm=(0, 2, 1), stacked=True)  # X × [out, in] -> [X, in, out]
