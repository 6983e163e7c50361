"""Hugging Face checkpoints: tensor names -> shardspec parameters (config.json: `hf_config`).

Layouts differ: a Hugging Face Linear weight is [out, in] and flattens heads
(`q_proj.weight` is [H*D, E]) while shardspec keeps `q_proj` as [E, H, D]; MoE
checkpoints store one tensor per expert where shardspec stacks them. A
`TensorMap` says how to view the checkpoint tensor(s) as the shardspec array,
so that any slice of the array can be read without reading the rest.
"""

from __future__ import annotations

import dataclasses
import re

from .config import LlamaConfig


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
