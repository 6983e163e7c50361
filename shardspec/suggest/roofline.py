"""What a plan costs on a device kind, from shapes alone: memory per device and a step's time.

A step's time on each device is

    max(FLOPs ÷ peak, bytes read from HBM ÷ HBM bandwidth) + its collectives' time

with the FLOPs of `shardspec.flops` (the work the step needs, split evenly over the
devices), the bytes of the parameters the step touches on a device (a MoE layer's
experts only where a token is routed to one) plus the KV cache its requests read,
and each collective's time a ring's: latency + (all-reduce 2(n-1)/n, all-gather and
all-to-all (n-1)/n, reduce-scatter (n-1)) × its result bytes ÷ the link bandwidth of
the axes it spans (across hosts where `multihost:` spreads one of them).

Assumed: compute and HBM reads overlap fully, and collectives overlap neither;
kernels reach their peak. Ignored: activations' HBM traffic, the host's time
between steps, work a tensor group repeats (KV heads replicated over model).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from ..flops import step_flops
from ..models.axes import EXPERT
from ..plan import ShardingPlan
from .catalog import DeviceKind
from .collectives import Collective, group_size, step_collectives

UTILIZATION = 0.9  # of a device's memory a plan may fill (vLLM's gpu_memory_utilization default)


@dataclasses.dataclass(frozen=True)
class StepCost:
    seconds: float
    flops: float  # per device
    hbm_bytes: float  # read per device
    parts: dict[str, float]  # seconds: "FLOPs", "HBM" and each collective kind over its axes
    bound: str  # the largest part

    @property
    def ms(self) -> float:
        return self.seconds * 1e3


@dataclasses.dataclass(frozen=True)
class Memory:
    params: int  # bytes per device
    kv_cache: int
    activations: int
    capacity: float  # what the plan may fill: HBM × UTILIZATION

    @property
    def total(self) -> int:
        return self.params + self.kv_cache + self.activations

    @property
    def headroom(self) -> float:
        """Bytes left per device (negative: what does not fit)."""
        return self.capacity - self.total

    @property
    def dominant(self) -> str:
        parts = {"parameters": self.params, "KV cache": self.kv_cache, "activations": self.activations}
        return max(parts, key=parts.get)


def memory(plan: ShardingPlan, kind: DeviceKind) -> Memory:
    """Parameters and the plan's KV pages (sized for the workload) per device, and the
    largest step's activations: per token, the FFN's input, output and hidden (gate, up
    and their product, the tensor group's share) and the residual, with the sampled rows'
    float32 logits."""
    cfg, shape, sizes = plan.model.config, plan.mesh_shape, plan.runtime
    params = sum(p.bytes_per_device for p in plan.params)
    group = shape["attn_dp"] * shape["model"]
    ffn = max(cfg.mlp_size, getattr(cfg, "expert_mlp_size", 0) * getattr(cfg, "experts_per_token", 0))
    tokens = sizes.max_num_batched_tokens * shape["attn_dp"]  # one replica's, in the FFN layout
    per_token = (4 * cfg.hidden_size + 3 * math.ceil(ffn / group)) * jnp.dtype(plan.dtype).itemsize
    logits = sizes.max_request_stride * shape["attn_dp"] * cfg.vocab_size * 4
    return Memory(params, plan.kv_cache.bytes_per_device(), tokens * per_token + logits, kind.hbm_bytes * UTILIZATION)


def step_cost(
    plan: ShardingPlan, kind: DeviceKind, tokens_per_rank: int, requests_per_rank: int, context: float, dtype: str
) -> StepCost:
    """One step in which each DP rank runs `tokens_per_rank` tokens (its bucket) of
    `requests_per_rank` requests, each token attending to `context` earlier ones."""
    R, N = plan.dp_ranks, plan.device_count
    flops = step_flops(plan.model.config, tokens_per_rank * R, requests_per_rank * R, round(context)) / N
    kv = plan.kv_cache
    kv_read = requests_per_rank * context * kv.bytes_per_page_per_device / kv.page_size
    hbm = _params_read(plan, tokens_per_rank) + kv_read
    parts = {"FLOPs": flops / kind.peak(dtype), "HBM": hbm / kind.hbm_bandwidth}
    for c, runs in step_collectives(plan, tokens_per_rank, requests_per_rank * R):
        name = f"{c.kind} over {' × '.join(a for a in c.axes if plan.mesh_shape[a] > 1)}"
        parts[name] = parts.get(name, 0.0) + runs * collective_seconds(plan, kind, c)
    seconds = max(parts["FLOPs"], parts["HBM"]) + sum(v for k, v in parts.items() if k not in ("FLOPs", "HBM"))
    return StepCost(seconds, flops, hbm, parts, max(parts, key=parts.get))


def collective_seconds(plan: ShardingPlan, kind: DeviceKind, c: Collective) -> float:
    n = group_size(plan, c)
    if n == 1:
        return 0.0
    moved = {"all-reduce": 2 * (n - 1) / n, "reduce-scatter": n - 1}.get(c.kind, (n - 1) / n) * c.nbytes
    across = any(plan.strategy.multihost.get(a, 1) > 1 for a in c.axes)
    bandwidth = kind.across_hosts_bandwidth if across else kind.inside_host_bandwidth
    return kind.collective_latency + moved / bandwidth


def _params_read(plan: ShardingPlan, tokens_per_rank: int) -> float:
    """Parameter bytes a device reads in a step: all but a MoE layer's experts, and of
    those the share a step's tokens reach (an expert no token is routed to is not read)."""
    cfg = plan.model.config
    experts = sum(p.bytes_per_device for p in plan.params if EXPERT in p.axes)
    rest = sum(p.bytes_per_device for p in plan.params) - experts
    if not experts:
        return rest
    tokens = tokens_per_rank * plan.mesh_shape["attn_dp"]  # a replica's: what its expert shards see
    reached = 1 - (1 - cfg.experts_per_token / cfg.num_experts) ** tokens
    if plan.strategy.runtime.moe_dispatch == "dense":
        reached = 1.0  # every expert computes every token
    return rest + experts * reached
