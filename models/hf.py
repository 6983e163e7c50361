"""Hugging Face checkpoints: tensor names -> shardspec parameters (config.json: `hf_config`).

Layouts differ: a Hugging Face Linear weight is [out, in] and flattens heads
(`q_proj.weight` is [H*D, E]) while shardspec keeps `q_proj` as [E, H, D]; MoE
checkpoints store one tensor per expert where shardspec stacks them. A
`TensorMap` says how to view the checkpoint tensor(s) as the shardspec array,
so that any slice of the array can be read without reading the rest.

MoE names per family (`layers.{i}.` prefix; experts x = 0..X-1):

    mixtral                   block_sparse_moe.gate.weight, block_sparse_moe.experts.{x}.w1|w3|w2.weight
    qwen2_moe, qwen3_moe      mlp.gate.weight, mlp.experts.{x}.gate_proj|up_proj|down_proj.weight
    qwen2_moe                 + mlp.shared_expert.{gate,up,down}_proj.weight, mlp.shared_expert_gate.weight
    deepseek_v2, deepseek_v3  mlp.gate.weight, mlp.experts.{x}.*, mlp.shared_experts.{gate,up,down}_proj.weight
    deepseek_v3               + mlp.gate.e_score_correction_bias
"""

from __future__ import annotations

import dataclasses
import re

from .config import DeepSeekConfig, LlamaConfig


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
    latent = re.fullmatch(
        r"self_attn\.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|(?:q_a|kv_a)_layernorm\.scale)", rest
    )
    if latent:
        return _latent_attention(config, prefix + "self_attn.", latent.group(1))
    attn = re.fullmatch(r"self_attn\.(q|k|v|o)_(proj|bias|norm\.scale)", rest)
    if attn:
        D = config.v_head_dim if isinstance(config, DeepSeekConfig) and attn.group(1) == "o" else config.head_dim
        return _attention(prefix + "self_attn.", *attn.groups(), D)
    mlp = re.fullmatch(r"mlp\.(gate_proj|up_proj|down_proj|router|score_correction_bias)", rest)
    if mlp:
        return _mlp(config, prefix, mlp.group(1), shape)
    shared = re.fullmatch(r"mlp\.shared_expert(?:\.(gate_proj|up_proj|down_proj)|_gate)", rest)
    if shared:
        return _shared_expert(config, prefix, shared.group(1))
    raise KeyError(f"no checkpoint tensor for parameter {path!r}")


def _attention(prefix: str, x: str, kind: str, D: int) -> TensorMap:
    if kind == "norm.scale":  # Qwen3 q_norm / k_norm: [D]
        return TensorMap((f"{prefix}{x}_norm.weight",))
    if kind == "bias":  # Qwen2: [H*D] -> [H, D]
        return TensorMap((f"{prefix}{x}_proj.bias",), split=(0, D))
    name = f"{prefix}{x}_proj.weight"
    if x == "o":  # [E, H*D] -> [E, H, D] -> [H, D, E]
        return TensorMap((name,), perm=(1, 2, 0), split=(1, D))
    return TensorMap((name,), perm=(2, 0, 1), split=(0, D))  # [H*D, E] -> [H, D, E] -> [E, H, D]


def _latent_attention(config: DeepSeekConfig, prefix: str, name: str) -> TensorMap:
    """DeepSeek's MLA projections (q_proj and o_proj are `_attention`'s)."""
    if name.endswith("layernorm.scale"):  # q_a_layernorm, kv_a_layernorm: [rank]
        return TensorMap((prefix + name.replace(".scale", ".weight"),))
    weight = prefix + name + ".weight"
    if name in ("q_a_proj", "kv_a_proj_with_mqa"):  # [rank, E] -> [E, rank]
        return TensorMap((weight,), perm=(1, 0))
    # q_b_proj [H*(nope+rope), q_lora] and kv_b_proj [H*(nope+v), kv_lora] -> [rank, H, per head]
    per_head = config.head_dim if name == "q_b_proj" else config.qk_nope_head_dim + config.v_head_dim
    return TensorMap((weight,), perm=(2, 0, 1), split=(0, per_head))


def _mlp(config: LlamaConfig, prefix: str, proj: str, shape) -> TensorMap:
    if len(shape) == 2 and proj != "router":  # a dense SwiGLU: [out, in] -> [in, out]
        return TensorMap((f"{prefix}mlp.{proj}.weight",), perm=(1, 0))
    if config.family == "mixtral":
        moe, names = prefix + "block_sparse_moe.", {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
    else:  # qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3
        moe, names = prefix + "mlp.", {k: k for k in ("gate_proj", "up_proj", "down_proj")}
    if proj == "router":  # [X, E] -> [E, X]
        return TensorMap((moe + "gate.weight",), perm=(1, 0))
    if proj == "score_correction_bias":  # DeepSeek-V3 (noaux_tc): [X], float32 in checkpoints
        return TensorMap((moe + "gate.e_score_correction_bias",))
    experts = tuple(f"{moe}experts.{x}.{names[proj]}.weight" for x in range(shape[0]))
    return TensorMap(experts, perm=(0, 2, 1), stacked=True)  # X × [out, in] -> [X, in, out]


def _shared_expert(config: LlamaConfig, prefix: str, proj: str | None) -> TensorMap:
    """Qwen2-MoE's `shared_expert` (and its gate), DeepSeek's `shared_experts` (one SwiGLU for all)."""
    if proj is None:  # Qwen2-MoE's shared_expert_gate: [1, E] -> [E, 1]
        return TensorMap((f"{prefix}mlp.shared_expert_gate.weight",), perm=(1, 0))
    module = "shared_experts" if config.family.startswith("deepseek") else "shared_expert"
    return TensorMap((f"{prefix}mlp.{module}.{proj}.weight",), perm=(1, 0))  # [out, in] -> [in, out]
