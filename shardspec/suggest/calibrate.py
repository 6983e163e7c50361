"""`suggest --calibrate`: the best candidates' steps measured on this process's devices.

Each candidate is compiled on the devices and its engine built (random parameters, or
the checkpoint's); its decode and prefill buckets are compiled, then timed as warm-up
times them for `runtime.step_costs: auto`: the median padding-only step
(`runtime/step_costs.py`). The measured
decode and prefill-chunk times replace the roofline's, and TTFT, TPOT and tokens/s
follow from them as they do from the roofline's. A padding-only step reads no KV
context, so the measurement leaves out the attention over the cache.
"""

from __future__ import annotations

import dataclasses

from ..devices import compile_on_devices
from ..errors import ShardspecError
from ..load import load
from ..runtime import step_costs
from ..runtime.engine import Engine
from . import Suggestion
from .search import Candidate, steps, timed


def calibrated(s: Suggestion, top: int) -> Suggestion:
    """`s` with its best `top` fitting candidates measured, ranked again among themselves
    (the others as the roofline left them, after them)."""
    fitting = [c for c in s.candidates if c.fits][:top]
    config = fitting[0].plan.model.config if fitting else None
    if config is not None and config.shape_only:
        raise ShardspecError(
            f"{s.model} is shape-only here: there are no parameters to run",
            path="--calibrate",
            hint="calibrate with a checkpoint directory or a preset that materialises (`shardspec models`)",
        )
    measured = sorted((_measured(c, s) for c in fitting), key=Candidate.rank_key)
    rest = [c for c in s.candidates if all(c is not f for f in fitting)]
    return dataclasses.replace(s, candidates=(*measured, *rest), measured=len(measured))


def _measured(c: Candidate, s: Suggestion) -> Candidate:
    plan, _, _ = compile_on_devices(load(c.strategy))
    engine = Engine(plan)
    (decode_tokens, _, _), (chunk, _, _) = steps(plan, s.workload)
    strides = sorted({decode_tokens, chunk})
    for stride in strides:  # compiled first: the timing is of the step alone
        engine.padding_step(stride)
    table = step_costs.measure(engine.padding_step, strides)
    decode = dataclasses.replace(c.decode, seconds=table[decode_tokens] / 1e3, bound="measured")
    prefill = dataclasses.replace(c.prefill, seconds=table[chunk] / 1e3, bound="measured")
    return timed(dataclasses.replace(c, plan=plan), decode, prefill, s.workload)
