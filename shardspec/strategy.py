"""The validated, frozen form of a strategy file (DESIGN §3).

Only `load()` builds these; everything downstream trusts them. No jax here, so a
strategy loads instantly. Values that depend on the model (`attention_data:
auto`, `num_pages: auto`) stay symbolic until `compile()`.
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Literal, Mapping

from .errors import Source

# The mesh axes, always all four, in this order (size-1 axes are kept).
MESH_AXES = ("data", "attn_dp", "expert", "model")

AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Parallelism:
    data: int = 1  # model-wise DP replicas
    tensor: int = 1  # one replica's tensor group (= attn_dp x model)
    attention_data: int | Literal["auto"] = AUTO  # attention-only DP inside the tensor group
    expert: int = 1  # expert parallelism

    @property
    def product(self) -> int:
        return self.data * self.tensor * self.expert


@dataclasses.dataclass(frozen=True)
class Policy:
    unmatched: Literal["error", "replicate"] = "error"
    indivisible: Literal["error", "replicate", "pad"] = "error"


@dataclasses.dataclass(frozen=True)
class KVCacheConfig:
    dtype: str = "bfloat16"
    page_size: int = 16
    num_pages: int | Literal["auto"] = AUTO


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    dtype: str = "float32"
    max_num_seqs: int = 64  # per DP rank
    max_num_batched_tokens: int = 512  # per DP rank, per step
    routing: Literal["balanced", "least_tokens", "round_robin"] = "balanced"
    async_scheduling: bool = True


@dataclasses.dataclass(frozen=True)
class ParamOverride:
    """`params:` entry: parameters whose path matches `match` get these logical axes."""

    match: str
    axes: tuple[str | None, ...]
    index: int  # position in `params:`, for error locations


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    model: str | None
    devices: int | None
    parallelism: Parallelism
    multihost: Mapping[str, int]  # mesh axis -> cross-host factor
    rules: Mapping[str, tuple[str, ...]]  # logical axis -> mesh axes (() = replicated)
    params: tuple[ParamOverride, ...]
    policy: Policy
    kv_cache: KVCacheConfig
    runtime: RuntimeConfig
    expect: Mapping[str, Mapping[str, int]]
    source: Source = dataclasses.field(default_factory=Source, compare=False)

    def __post_init__(self):
        for name in ("multihost", "rules", "expect"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def device_count(self) -> int:
        """Devices the strategy runs on: `devices:` or the product of parallelism."""
        return self.devices if self.devices is not None else self.parallelism.product

    def resolve_attention_data(self, kv_heads: int) -> tuple[int, str]:
        """(attention_data, why) for a model with `kv_heads` KV heads.

        auto = tensor / gcd(tensor, kv_heads): the widest split of the tensor group
        into attention-DP ranks that still leaves each KV head stored once.
        """
        tensor = self.parallelism.tensor
        value = self.parallelism.attention_data
        if value != AUTO:
            return int(value), f"attention_data = {value}: set in the strategy"
        auto = tensor // math.gcd(tensor, kv_heads)
        return auto, f"attention_data = {auto}: tensor {tensor} / gcd({tensor}, kv_heads {kv_heads})"

    def with_model(self, model: str) -> "Strategy":
        return dataclasses.replace(self, model=model)
