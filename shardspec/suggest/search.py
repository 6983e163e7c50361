"""Every strategy the DSL can say for N devices, compiled from shapes and ranked by the roofline."""

from __future__ import annotations

import dataclasses
import math

from ..errors import ShardspecError
from ..load import load
from ..model_info import ModelInfo
from ..models.config import MoEConfig
from ..plan import ShardingPlan, build_plan, compile
from ..sizes import divisors, pages_for
from .catalog import DeviceKind
from .roofline import Memory, StepCost, memory, step_cost
from .workload import Workload

DEFAULT_BATCHED_TOKENS = 512  # the strategy's default runtime.max_num_batched_tokens
PAGE_SIZE = 16  # the strategy's default kv_cache.page_size


@dataclasses.dataclass(frozen=True)
class Candidate:
    strategy: dict  # the strategy, as `--write` writes it
    plan: ShardingPlan | None  # None: it did not compile
    reason: str | None = None  # why it is rejected: does not compile, or does not fit
    memory: Memory | None = None
    decode: StepCost | None = None  # one decode step at the workload's batch
    prefill: StepCost | None = None  # one full prefill chunk
    ttft_ms: float | None = None
    tpot_ms: float | None = None  # a request's output time ÷ its tokens: decode steps and others' prefill chunks
    tokens_per_s_per_device: float | None = None
    missed: tuple[str, ...] = ()  # latency limits it misses

    @property
    def fits(self) -> bool:
        return self.reason is None

    @property
    def parallelism(self) -> dict:
        return self.strategy["parallelism"]

    def rank_key(self) -> tuple:
        """Fitting first, then meeting the limits, then throughput per device, then headroom."""
        if not self.fits:
            return (1, 0, 0.0, -self.memory.headroom if self.memory else math.inf)
        return (0, len(self.missed), -self.tokens_per_s_per_device, -self.memory.headroom)


def read_model(model: str, dtype: str) -> ModelInfo:
    """The model's parameters and geometry, read once (its abstract module is most of a
    compile's time): each candidate's plan is built from them."""
    return compile(load({"model": model, "devices": 1, "runtime": {"dtype": dtype}}), abstract_mesh=True).model


def search(
    info: ModelInfo, kind: DeviceKind, devices: int, hosts: int, wl: Workload, dtype: str, kv_dtype: str
) -> list[Candidate]:
    """Every candidate for `devices` of `kind` on `hosts` hosts, best first."""
    moe = isinstance(info.config, MoEConfig)
    found = [
        _evaluate(s, info, kind, wl, dtype) for s in strategies(info.name, devices, hosts, moe, wl, dtype, kv_dtype)
    ]
    return sorted(found, key=Candidate.rank_key)


def strategies(model: str, devices: int, hosts: int, moe: bool, wl: Workload, dtype: str, kv_dtype: str):
    """data × expert × tensor = devices, attention_data any divisor of tensor; across hosts,
    the placements that spread data and expert over them (never a tensor group), or where
    none can, one that spreads the tensor group too (its collectives then cross hosts)."""
    for data in divisors(devices):
        for expert in divisors(devices // data) if moe else [1]:
            tensor = devices // data // expert
            for attention_data in divisors(tensor):
                axes = {"data": data, "expert": expert, "attn_dp": attention_data, "model": tensor // attention_data}
                for multihost in _placements(hosts, axes):
                    yield _strategy(model, devices, axes, multihost, wl, dtype, kv_dtype)


def _placements(hosts: int, axes: dict[str, int]) -> list[dict[str, int]]:
    """`multihost:` factors (over hosts) of `axes` (mesh axis -> size) that multiply to `hosts`."""
    if hosts == 1:
        return [{}]
    out = []
    for over_data in divisors(hosts):
        over_expert = hosts // over_data
        if axes["data"] % over_data == 0 and axes["expert"] % over_expert == 0:
            out.append({a: f for a, f in (("data", over_data), ("expert", over_expert)) if f > 1})
    if out:
        return out
    spread, left = {}, hosts  # outermost axes first
    for axis in ("data", "expert", "attn_dp", "model"):
        factor = math.gcd(left, axes[axis])
        if factor > 1:
            spread[axis], left = factor, left // factor
    return [spread] if left == 1 else []


def _strategy(model: str, devices: int, axes: dict, multihost: dict, wl: Workload, dtype: str, kv_dtype: str):
    """The candidate's strategy: its parallelism, and the KV pages and batch its busiest rank needs."""
    data, attention_data, expert = axes["data"], axes["attn_dp"], axes["expert"]
    tensor = attention_data * axes["model"]
    per_rank = math.ceil(wl.concurrency / (data * attention_data))  # the busiest rank's requests in flight
    name = f"d{data}-t{tensor}-a{attention_data}-e{expert}" + "".join(f"-{a}{f}h" for a, f in multihost.items())
    strategy = {
        "name": name,
        "model": model,
        "devices": devices,
        "parallelism": {"data": data, "tensor": tensor, "attention_data": attention_data, "expert": expert},
        "kv_cache": {
            "dtype": kv_dtype,
            "page_size": PAGE_SIZE,
            "num_pages": per_rank * pages_for(wl.longest, PAGE_SIZE),
        },
        "runtime": {
            "dtype": dtype,
            "max_num_seqs": per_rank,
            "max_num_batched_tokens": max(DEFAULT_BATCHED_TOKENS, per_rank),
            "max_model_len": wl.longest,
        },
    }
    if multihost:
        strategy["multihost"] = multihost
    return strategy


def _evaluate(strategy: dict, info: ModelInfo, kind: DeviceKind, wl: Workload, dtype: str) -> Candidate:
    try:
        plan = build_plan(load(strategy), info, abstract_mesh=True)
    except ShardspecError as e:
        return Candidate(strategy, None, reason=f"does not compile: {e.problems[0].message}")
    mem = memory(plan, kind)
    if mem.headroom < 0:
        short = f"needs {_gb(mem.total)} GB a device, has {_gb(mem.capacity)} ({mem.dominant} the most)"
        return Candidate(strategy, plan, reason=f"does not fit: {short}", memory=mem)
    decode, prefill = steps(plan, wl)
    decode_cost = step_cost(plan, kind, *decode, dtype)
    prefill_cost = step_cost(plan, kind, *prefill, dtype)
    return timed(Candidate(strategy, plan, memory=mem), decode_cost, prefill_cost, wl)


def steps(plan: ShardingPlan, wl: Workload) -> tuple[tuple[int, int, float], tuple[int, int, float]]:
    """(tokens a rank, requests a rank, context) of the decode step at the workload's batch
    (its token bucket) and of a full prefill chunk (the prompts it packs, half-way through)."""
    sizes = plan.runtime
    per_rank = sizes.max_num_seqs
    chunk = sizes.max_num_batched_tokens
    prefill_rows = max(1, min(per_rank, round(chunk / wl.prompt_mean)))
    decode = (sizes.token_stride(per_rank), per_rank, wl.prompt_mean + wl.output_mean / 2)
    return decode, (chunk, prefill_rows, wl.prompt_mean / 2)


def timed(c: Candidate, decode: StepCost, prefill: StepCost, wl: Workload) -> Candidate:
    """`c` with its decode and prefill steps costed, and what follows from them: a prompt's
    chunks (TTFT), a rank's cycle (prefill its requests' prompts in full chunks, then decode
    their outputs together) per output token (TPOT), and tokens/s per device."""
    plan, sizes = c.plan, c.plan.runtime
    per_rank, chunk = sizes.max_num_seqs, sizes.max_num_batched_tokens
    ttft = math.ceil(wl.prompt_mean / chunk) * prefill.ms
    cycle = per_rank * wl.prompt_mean / chunk * prefill.seconds + wl.output_mean * decode.seconds
    tokens_per_s = plan.dp_ranks * per_rank * wl.output_mean / cycle / plan.device_count
    tpot = cycle / wl.output_mean * 1e3
    missed = tuple(
        name
        for name, limit, got in (("TTFT", wl.max_ttft_ms, ttft), ("TPOT", wl.max_tpot_ms, tpot))
        if limit is not None and got > limit
    )
    return dataclasses.replace(
        c,
        decode=decode,
        prefill=prefill,
        ttft_ms=ttft,
        tpot_ms=tpot,
        tokens_per_s_per_device=tokens_per_s,
        missed=missed,
    )


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f}"
