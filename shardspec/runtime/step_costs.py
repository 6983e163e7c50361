"""What a step costs, per token bucket: the model `balanced` forms steps with.

On an accelerator a step reads every weight once whatever its token count, so
a step has a fixed cost plus what its padded stride costs; fewer, fuller steps
can beat evenly padded ones. The table holds one time per token bucket (the
stride every rank is padded to), in milliseconds:

- `runtime.step_costs: auto` (the default): measured at warm-up, which runs
  every bucket's step already to compile it: each bucket is timed over a few
  more padding-only steps (their median). Across processes
  process 0's table is the one every process uses, so their schedulers stay
  identical;
- `runtime.step_costs: [{tokens: 8, ms: 2.1}, {tokens: 512, ms: 9.5}]`: given,
  and interpolated linearly between the given sizes (constant beyond them).
  A given table makes scheduling deterministic from run to run.

Without a table (a scheduler used on its own, an engine not warmed up)
`balanced` keeps padding low instead (`step_budget.balanced_budget`).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from .. import distributed

TIMED_RUNS = 5  # padding-only steps timed per bucket at warm-up


def interpolated(points: Sequence[tuple[int, float]], buckets: Sequence[int]) -> dict[int, float]:
    """{bucket: ms} from (tokens, ms) points, linear between them, constant beyond."""
    pts = sorted(points)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return {b: round(float(np.interp(b, xs, ys)), 4) for b in buckets}


def measure(run_bucket: Callable[[int], None], buckets: Sequence[int]) -> dict[int, float]:
    """{bucket: ms}: the median of TIMED_RUNS calls of `run_bucket(stride)` (which blocks
    until the step is done; the median, not the fastest: a schedule pays the typical
    step, noise included), process 0's on every process."""
    table = {}
    for stride in buckets:
        runs = []
        for _ in range(TIMED_RUNS):
            start = time.perf_counter()
            run_bucket(stride)
            runs.append(time.perf_counter() - start)
        table[stride] = round(statistics.median(runs) * 1e3, 4)
    shared = json.loads(distributed.broadcast_text(json.dumps(table)))
    return {int(k): float(v) for k, v in shared.items()}
