"""A trace through the real scheduler and packer on a clock of modelled step times.

The model is replaced by a deterministic token per (sequence, output index), so
every count is exact. Each step advances the clock by what the step-cost table
says its stride costs (`runtime/step_costs.py`); requests arrive at given
times, and idle time jumps to the next arrival. Reported: the modelled time to
serve the whole trace (`modelled_s`), the device's busy part of it, each
request's modelled latency (arrival to last token) and time to first token
(arrival to the step that sampled it), steps and padding. `replay` runs the
recorded strides as real compiled steps of an engine, for a measured time
beside the modelled one.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from shardspec.runtime.packer import pack
from shardspec.runtime.request import Output, Request
from shardspec.runtime.scheduler import DPScheduler
from shardspec.sizes import RuntimeSizes

FollowUp = Callable[[Output], Sequence[tuple[float, Request]]]  # (delay ms, next request) after a finish


@dataclasses.dataclass(frozen=True)
class Config:
    """One column of a benchmark: a routing policy and how steps are formed."""

    routing: str
    prefix_caching: bool = True
    timed_steps: bool = True  # `balanced` forms steps by the cost table (else by padding)
    balance_steps: bool | None = None  # None: the policy's default (balanced: on, baselines: lockstep)


def simulate(
    sizes: RuntimeSizes,
    arrivals: Sequence[tuple[float, Request]],
    config: Config,
    costs_ms: Mapping[int, float],
    follow_up: FollowUp | None = None,
) -> dict:
    sched = DPScheduler(
        sizes, routing=config.routing, prefix_caching=config.prefix_caching, balance_steps=config.balance_steps
    )
    queue = [(at, i, r) for i, (at, r) in enumerate(arrivals)]
    heapq.heapify(queue)
    arrived, latency = {}, []
    arrived_seq, first_token = {}, {}  # by seq id: arrival, and the clock when its first token came
    clock, strides, real, padded, finished, added, idle = 0.0, [], 0, 0, 0, len(queue), 0
    while queue or sched.has_unfinished():
        while queue and queue[0][0] <= clock:
            at, _, request = heapq.heappop(queue)
            arrived[request.id] = at
            arrived_seq[sched.add_request(request)] = at
        schedule = sched.schedule(costs_ms if config.timed_steps else None)
        if not len(schedule):
            done = sched.take_finished()
            if not done and queue:
                clock = max(clock, queue[0][0])
            idle = 0 if done or queue else idle + 1
            assert idle < 100, "the scheduler made no progress"
        else:
            packed = pack(schedule, sizes, check=False)  # the scheduler's steps, as the engine packs them
            strides.append(packed.token_stride)
            clock += costs_ms[packed.token_stride]
            real, padded = real + packed.real_tokens, padded + packed.padded_tokens
            rows = np.flatnonzero(schedule.sample)
            tokens = (schedule.seq_ids[rows] * 7919 + schedule.output_index[rows] * 104729) % 1000
            for seq in schedule.seq_ids[rows][schedule.output_index[rows] == 0].tolist():
                first_token.setdefault(seq, clock)
            done = sched.update(schedule, tokens)
        finished += len(done)
        latency += [clock - arrived[out.id] for out in done]
        for out in done if follow_up else ():
            for delay, request in follow_up(out):
                heapq.heappush(queue, (clock + delay, added, request))
                added += 1
    assert finished == added, (finished, added)
    ttft = [first_token[seq] - at for seq, at in arrived_seq.items() if seq in first_token]
    stats = sched.stats()
    return {
        "modelled_s": round(clock / 1e3, 4),
        "busy_s": round(sum(costs_ms[s] for s in strides) / 1e3, 4),
        "mean_latency_s": round(float(np.mean(latency)) / 1e3, 4),
        "p90_latency_s": round(float(np.percentile(latency, 90)) / 1e3, 4),
        "mean_ttft_s": round(float(np.mean(ttft)) / 1e3, 4),
        "p90_ttft_s": round(float(np.percentile(ttft, 90)) / 1e3, 4),
        "steps": len(strides),
        "padding_efficiency": round(real / padded, 4),
        "real_tokens": real,
        "computed_tokens": padded,
        "cached_prompt_tokens": sum(stats["cached_tokens"]),
        "computed_prompt_tokens": sum(stats["prefill_tokens"]),
        "preemptions": stats["preemptions"],
        "requests": finished,
        "strides": strides,
    }


def replay(engine, strides: Sequence[int]) -> float:
    """Seconds the engine's compiled step takes to run `strides`, one padding-only step each."""
    start = time.perf_counter()
    for stride in strides:
        engine.padding_step(stride)
    return time.perf_counter() - start
