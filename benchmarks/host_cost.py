"""Host cost of one decode step: scheduler and packer, at 256 / 1,024 / 4,096 running requests.

Over 8 DP ranks, every request in decode (the steady state of a busy server).
The host path of a step is `schedule()` + `pack()` + `update()`; `host_total`
is their sum (medians) and `host_total_best` the fastest step's (the machine's
noise removed), with `us_per_request` = host_total / running requests, which
stays flat when the cost grows linearly; `host_total_no_prefix_cache` is the
same measurement with prefix caching off. Also times the packer against the
straightforward per-request Python packer (`packer_naive.py`) on the same
schedules, as a ratio measured in the same run. Prints one JSON object; times
are in ms.

    python benchmarks/host_cost.py [--sizes 256,1024,4096] [--steps 30]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from packer_naive import pack_naive  # noqa: E402

from shardspec.runtime.packer import pack  # noqa: E402
from shardspec.runtime.request import Request  # noqa: E402
from shardspec.runtime.scheduler import DPScheduler  # noqa: E402
from shardspec.sizes import RuntimeSizes  # noqa: E402

RANKS = 8


def _ms(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


def measure(n: int, steps: int, prefix_caching: bool = True) -> dict:
    per_rank = n // RANKS
    sizes = RuntimeSizes(
        dp_ranks=RANKS,
        page_size=16,
        pages_per_rank=per_rank * 8,
        max_model_len=1024,
        max_num_seqs=per_rank,
        max_num_batched_tokens=max(per_rank, 512),
    )
    scheduler = DPScheduler(sizes, routing="balanced", prefix_caching=prefix_caching)
    for i in range(n):
        scheduler.add_request(Request(str(i), (1 + i % 500,) * 16, max_tokens=512, ignore_eos=True))
    while True:  # prefill everything; stop once every step is a pure decode step
        schedule = scheduler.schedule()
        scheduler.update(schedule, np.full(int(schedule.sample.sum()), 3))
        if len(schedule) == n and (schedule.num_tokens == 1).all():
            break
    times = {"schedule": [], "pack": [], "pack_naive": [], "update": []}
    for _ in range(steps):
        t, schedule = _ms(scheduler.schedule)
        times["schedule"].append(t)
        t, packed = _ms(functools.partial(pack, schedule, sizes, check=False))  # as the engine packs
        times["pack"].append(t)
        schedule.chunks  # noqa: B018  (the per-chunk view the naive packer reads, built outside its time)
        times["pack_naive"].append(_ms(functools.partial(pack_naive, schedule, sizes))[0])
        sampled = np.full(len(packed.selector), 3)  # one token per sampled chunk, as the step returns them
        times["update"].append(_ms(functools.partial(scheduler.update, schedule, sampled))[0])
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    med["host_total"] = round(med["schedule"] + med["pack"] + med["update"], 3)
    med["host_total_best"] = round(min(map(sum, zip(times["schedule"], times["pack"], times["update"]))), 3)
    med["us_per_request"] = round(med["host_total"] * 1e3 / n, 3)
    med["naive_over_pack"] = round(med["pack_naive"] / med["pack"], 2)
    return med


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024,4096")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    results = {}
    for n in map(int, args.sizes.split(",")):
        results[str(n)] = r = measure(n, args.steps)
        # The same steps without prefix caching (hashing and caching every page a step fills).
        r["host_total_no_prefix_cache"] = measure(n, args.steps, prefix_caching=False)["host_total"]
        print(
            f"{n:>5} running: schedule {r['schedule']:.2f} ms, pack {r['pack']:.2f} ms "
            f"(naive {r['pack_naive']:.2f} ms, {r['naive_over_pack']}x), update {r['update']:.2f} ms, "
            f"total {r['host_total']:.2f} ms (best step {r['host_total_best']:.2f})",
            file=sys.stderr,
        )
    out = {
        "benchmark": "host_cost",
        "dp_ranks": RANKS,
        "unit": "ms per decode step (median; host_total_best: the fastest step)",
        "goal": {"4096": 2.0, "1024": 0.5},  # host_total, ms
        "results": results,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
