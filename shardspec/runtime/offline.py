"""Serving a fixed request stream to the end: what `shardspec run` and benchmarks call.

    requests (every process the same) -> Engine -> warm-up -> serve -> outputs in input order

Across processes each process serves the same requests with the same
deterministic scheduler; digests of the requests (a user error when they
differ) and of the outputs (never expected to differ) are compared.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from .. import distributed
from ..plan import ShardingPlan
from .engine import Engine
from .request import Output, Request


@dataclasses.dataclass(frozen=True)
class Served:
    outputs: tuple[Output, ...]  # in input order
    metrics: dict  # `run --json`'s object (runtime/metrics.py)


def serve(
    plan: ShardingPlan,
    requests: Sequence[Request],
    *,
    seed: int = 0,
    model=None,
    on_output: Callable[[Output], None] | None = None,
    status: Callable[[str], AbstractContextManager] | None = None,
) -> Served:
    """Serve `requests` on a plan compiled on devices, with `model` (an outside servable
    module), else shardspec's model of the plan (initialised with `seed`, or its checkpoint).
    `on_output` sees each output as it finishes; `status(text)` wraps the warm-up (e.g. a spinner)."""
    distributed.agree(repr(list(requests)), "requests", hint="give every process the same --prompts file and flags")
    engine = Engine(plan, model, seed=seed)
    with (status or (lambda _: contextlib.nullcontext()))("compiling the step for every token bucket"):
        engine.warmup()
    outputs = engine.generate(requests, on_output=on_output)
    if differ := distributed.disagreeing(repr(outputs)):  # the scheduler is deterministic: a bug
        raise RuntimeError(f"processes {differ} served other outputs than process 0")
    return Served(tuple(outputs), engine.metrics.to_json())
