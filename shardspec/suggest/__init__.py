"""`shardspec suggest`: the strategy to write for a model, a set of devices and a workload.

Every strategy the DSL can say for the devices is compiled from shapes (no device
is touched) and costed by a roofline (`roofline`): what fits in memory, then the
decode step's and a prefill chunk's time, ranked by output tokens per second per
device among the candidates that meet the latency limits.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from ..errors import ShardspecError
from ..model_factory import names_a_factory
from ..sizes import pages_for
from .catalog import DeviceKind, device_kinds, parse_devices
from .search import Candidate, read_model, search
from .workload import Workload, parse_span, workload

__all__ = ["Suggestion", "device_kinds", "parse_devices", "parse_span", "suggest", "workload"]


@dataclasses.dataclass(frozen=True)
class Suggestion:
    model: str
    kind: DeviceKind
    devices: int
    hosts: int
    workload: Workload
    dtype: str
    kv_dtype: str
    candidates: tuple[Candidate, ...]  # best first
    measured: int = 0  # the first `measured` candidates' steps were timed on devices (--calibrate)

    @property
    def best(self) -> int | None:
        """The index of the best candidate; None when nothing fits."""
        return 0 if self.candidates and self.candidates[0].fits else None


def suggest(
    model: str,
    kind: DeviceKind,
    devices: int,
    wl: Workload,
    *,
    hosts: int | None = None,
    dtype: str = "bfloat16",
    kv_dtype: str = "auto",
) -> Suggestion:
    """Every candidate strategy for `devices` of `kind` (on `hosts` hosts: by default as few
    as the kind's devices a host allow), ranked."""
    if names_a_factory(model):
        raise ShardspecError(
            "suggest plans shardspec's own models (a preset or a checkpoint), not an outside model's factory",
            path="--model",
            hint="see `shardspec models`",
        )
    info = read_model(model, dtype)
    if wl.longest > info.config.max_seq_len:
        raise ShardspecError(
            f"the longest request, {wl.prompt_max} + {wl.output_max} = {wl.longest} tokens, exceeds {model}'s "
            f"maximum length {info.config.max_seq_len}",
            path="--output-len",
            hint="shorten --prompt-len or --output-len, or choose a longer-context model",
        )
    hosts = _hosts(kind, devices, hosts)
    found = search(info, kind, devices, hosts, wl, dtype, kv_dtype)
    return Suggestion(model, kind, devices, hosts, wl, dtype, kv_dtype, tuple(found))


def _hosts(kind: DeviceKind, devices: int, hosts: int | None) -> int:
    if hosts is None:
        return math.ceil(devices / kind.devices_per_host)
    if devices % hosts or devices // hosts > kind.devices_per_host:
        raise ShardspecError(
            f"{devices} devices on {hosts} hosts is not a whole number of {kind.name} hosts of at most "
            f"{kind.devices_per_host}",
            path="--hosts",
            hint=f"use a divisor of {devices} that is at least {math.ceil(devices / kind.devices_per_host)}",
        )
    return hosts


def what_would_fit(s: Suggestion) -> str:
    """When nothing fits: fewer requests in flight, a smaller KV dtype or more devices, as the
    compiled candidates' bytes say."""
    compiled = [c for c in s.candidates if c.memory is not None]
    if not compiled:
        return "no candidate compiles for these devices (see each one's reason)"
    ideas = []
    kv_per_request = {c.strategy["name"]: _kv_per_request(c, s.workload) for c in compiled}
    in_flight = max(
        (c.memory.capacity - c.memory.params - c.memory.activations)
        // kv_per_request[c.strategy["name"]]
        * c.plan.dp_ranks
        for c in compiled
    )
    if in_flight >= 1:
        ideas.append(f"at most {int(in_flight)} requests in flight (--concurrency {int(in_flight)})")
    kv_now = jnp.dtype(compiled[0].plan.kv_cache.dtype).itemsize  # the KV dtype, auto resolved
    if kv_now > 1 and any(
        c.memory.params + c.memory.activations + c.memory.kv_cache / kv_now <= c.memory.capacity for c in compiled
    ):
        ideas.append("a float8 KV cache (--kv-dtype float8_e4m3fn)")
    least = min(c.memory.total * c.plan.device_count for c in compiled)
    ideas.append(f"about {math.ceil(least / compiled[0].memory.capacity)} or more devices")
    return "what would fit: " + "; or ".join(ideas)


def _kv_per_request(c: Candidate, wl: Workload) -> float:
    kv = c.plan.kv_cache
    return pages_for(wl.longest, kv.page_size) * kv.bytes_per_page_per_device
