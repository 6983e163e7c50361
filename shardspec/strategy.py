"""The validated, frozen form of a strategy file (DESIGN §3).

Only `load()` builds these; everything downstream trusts them. No jax here, so a
strategy loads instantly. Values that depend on the model (`attention_data:
auto`, `num_pages: auto`) stay symbolic until `compile()`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Literal

from .errors import Source

# The mesh axes, always all four, in this order (size-1 axes are kept).
MESH_AXES = ("data", "attn_dp", "expert", "model")

AUTO = "auto"
# `rules: {heads: default}`: the built-in rule of that name. shardspec's own models get every
# built-in rule; an outside model's parameters only those its strategy asks for by name.
BUILT_IN = "default"


class FrozenMap(Mapping):
    """An immutable, hashable mapping: a strategy is a value, and equal values hash equal."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping = ()):
        self._items = {k: FrozenMap(v) if isinstance(v, Mapping) else v for k, v in dict(items).items()}

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self) -> Iterator:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


@dataclasses.dataclass(frozen=True)
class Parallelism:
    data: int = 1  # model-wise DP replicas
    tensor: int = 1  # one replica's tensor group (= attn_dp x model)
    attention_data: int | Literal["auto"] = AUTO  # attention-only DP inside the tensor group
    expert: int = 1  # expert parallelism

    @property
    def product(self) -> int:
        """Devices the parallelism spans: data × tensor × expert."""
        return self.data * self.tensor * self.expert

    def mesh_shape(self, attention_data: int) -> dict[str, int]:
        """The mesh shape, in MESH_AXES order: `model` = tensor / attention_data (it divides)."""
        return {
            "data": self.data,
            "attn_dp": attention_data,
            "expert": self.expert,
            "model": self.tensor // attention_data,
        }


@dataclasses.dataclass(frozen=True)
class Policy:
    unmatched: Literal["error", "replicate"] = "error"
    indivisible: Literal["error", "replicate", "pad"] = "error"
    # A rules: name the model does not use: a warning (one strategy may serve several models),
    # an error where it looks like a typo of a name the model uses, or always with "error".
    unused_rules: Literal["warn", "error"] = "warn"


@dataclasses.dataclass(frozen=True)
class KVCacheConfig:
    dtype: str = AUTO  # auto: the runtime dtype (resolved by compile())
    page_size: int = 16
    num_pages: int | Literal["auto"] = AUTO
    prefix_caching: bool = True


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    dtype: str = "float32"
    max_model_len: int | None = None  # longest prompt + output; None: the model's maximum
    max_num_seqs: int = 64  # per DP rank
    max_num_batched_tokens: int = 512  # per DP rank, per step
    routing: Literal["balanced", "least_load", "cache_first", "least_tokens", "round_robin"] = "balanced"
    max_waiting: int = 1024  # the server's queue bound: requests waiting over all DP ranks
    moe_dispatch: Literal["sparse", "dense"] = "sparse"  # sparse: each token meets its chosen experts only
    async_scheduling: bool = True
    step_costs: Literal["auto"] | tuple[tuple[int, float], ...] = AUTO  # (tokens, ms) points; auto: measured
    kv_growth_reserve: Literal["auto"] | int = AUTO  # output tokens admission keeps pages for, a running sequence


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
    rules: Mapping[str, tuple[str, ...] | str]  # logical axis -> mesh axes (() = replicated), or BUILT_IN
    params: tuple[ParamOverride, ...]
    activations: tuple[str, ...]  # names the model uses only in its forward (its own constraints)
    units: Mapping[str, int]  # logical name -> elements in one unit (merged heads × head_dim)
    mesh_aliases: Mapping[str, tuple[str, ...]]  # a library's mesh axis name -> the plan's axes (() = size 1)
    policy: Policy
    kv_cache: KVCacheConfig
    runtime: RuntimeConfig
    expect: Mapping[str, Mapping[str, int]]
    source: Source = dataclasses.field(default_factory=Source, compare=False)

    def __post_init__(self):
        for name in ("multihost", "rules", "expect", "units", "mesh_aliases"):
            object.__setattr__(self, name, FrozenMap(getattr(self, name)))

    def __repr__(self) -> str:
        p = self.parallelism
        return (
            f"Strategy(name={self.name!r}, model={self.model!r}, data×tensor×expert={p.data}×{p.tensor}×{p.expert}, "
            f"attention_data={p.attention_data})"
        )

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

    def program_view(self) -> Strategy:
        """This strategy as compiled programs see it: on equal models and devices, equal
        views compile to equal programs. Left out: the name and the model's name (the plan
        keys the model by its parameters), what only the host-side runtime reads (routing,
        the queue bound, async scheduling, step costs, the growth reserve, prefix caching) and
        the collective budget."""
        runtime = dataclasses.replace(
            self.runtime,
            routing="balanced",
            max_waiting=0,
            async_scheduling=False,
            step_costs=AUTO,
            kv_growth_reserve=AUTO,
        )
        kv_cache = dataclasses.replace(self.kv_cache, prefix_caching=False)
        return dataclasses.replace(self, name="", model=None, kv_cache=kv_cache, runtime=runtime, expect={})

    def with_model(self, model: str) -> Strategy:
        """This strategy on `model` (`--model`): a problem with it is located at `--model`."""
        return dataclasses.replace(self, model=model, source=self.source.overriding("model", "--model"))
