"""`shardspec suggest`: how long it takes, and whether its ordering of decode steps holds.

1. Run time: every strategy of llama3-70b on 64 devices (h100: 8 hosts of 8; tpu-v5e:
   8 hosts whose ICI lets tensor groups span them), shapes only, in process after the
   imports (the first call and the best of 3), and the whole command in a fresh process.
2. Predicted against measured ordering: every dense parallelism of llama3-small on the
   8 simulated CPU devices. Predicted: suggest's decode step at the workload's batch, for
   the h100 catalog entry and for this machine described as a device kind (`cpu_sim`: its
   matmul FLOP/s, copy bytes/s and psum time, measured here and shared by 8); measured:
   the warm-up's median padding-only step at the same token bucket on this CPU. Absolute
   CPU times say nothing about an accelerator (8 simulated devices share 2 cores, and
   collectives are memory copies), so only the ordering is compared: Spearman's rank
   correlation.

    python benchmarks/suggest.py
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time

import numpy as np

WORKLOAD = {"prompt_len": (1024, 1024), "output_len": (1024, 1024), "concurrency": 256}
CPU_WORKLOAD = {"prompt_len": (64, 64), "output_len": (64, 64), "concurrency": 64}


def run_time() -> dict:
    from shardspec.suggest import device_kinds, suggest, workload

    kinds, wl = device_kinds(), workload(**WORKLOAD)
    out = {}
    for kind in ("h100", "tpu-v5e"):
        times = []
        for _ in range(4):
            start = time.perf_counter()
            found = suggest("llama3-70b", kinds[kind], 64, wl)
            times.append(time.perf_counter() - start)
        command = [sys.executable, "-m", "shardspec.cli.main", "suggest", "--model", "llama3-70b"]
        command += ["--devices", f"{kind}:64", "--concurrency", "256", "--output-len", "1024", "--format", "json"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        out[kind] = {
            "candidates": len(found.candidates),
            "fit": sum(c.fits for c in found.candidates),
            "first_s": round(times[0], 3),
            "best_of_3_s": round(min(times[1:]), 3),
            "command_s": round(time.perf_counter() - start, 2),
        }
    return out


def ordering() -> dict:
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    from shardspec import compile, load
    from shardspec.runtime.engine import Engine
    from shardspec.suggest import device_kinds, suggest, workload

    kinds = {"h100": device_kinds()["h100"], "cpu_sim": simulated_cpu()}
    wl = workload(**CPU_WORKLOAD)
    predicted = {k: suggest("llama3-small", kind, 8, wl, dtype="float32") for k, kind in kinds.items()}
    rows = []
    for c in predicted["h100"].candidates:
        strategy = {**c.strategy, "runtime": {**c.strategy["runtime"], "max_num_batched_tokens": 64}}
        plan = compile(load(strategy))
        engine = Engine(plan)
        engine.warmup()
        bucket = plan.runtime.token_stride(strategy["runtime"]["max_num_seqs"])
        on_cpu = next(x for x in predicted["cpu_sim"].candidates if x.strategy["name"] == c.strategy["name"])
        rows.append(
            {
                "strategy": c.strategy["name"],
                "bucket": bucket,
                "predicted_ms_h100": round(c.decode.ms, 4),
                "predicted_ms_cpu_sim": round(on_cpu.decode.ms, 3),
                "measured_cpu_ms": engine.metrics.step_costs_ms[bucket],
            }
        )
    measured = _ranks(np.array([r["measured_cpu_ms"] for r in rows]))
    spearman = {
        k: round(float(np.corrcoef(_ranks(np.array([r[f"predicted_ms_{k}"] for r in rows])), measured)[0, 1]), 3)
        for k in kinds
    }
    return {"rows": rows, "spearman": spearman, "cpu_sim": dataclasses.asdict(kinds["cpu_sim"])}


def simulated_cpu():
    """This machine as 8 simulated devices, measured: a device's share (1/8) of a matmul's
    FLOP/s and of a copy's bytes/s, a psum's bytes/s, and a tiny psum's time as the latency."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from shardspec.suggest.catalog import DeviceKind

    a = jnp.ones((1024, 1024), jnp.float32)
    matmul = _seconds(jax.jit(lambda x: x @ x), a)
    big = jnp.ones((64 << 20) // 4, jnp.float32)
    copy = _seconds(jax.jit(lambda x: x + 1), big)
    mesh = jax.make_mesh((8,), ("x",))

    def psum(n):
        sharded = jax.device_put(jnp.ones(8 * n, jnp.float32), jax.NamedSharding(mesh, P("x")))
        body = jax.shard_map(lambda v: jax.lax.psum(v, "x"), mesh=mesh, in_specs=P("x"), out_specs=P("x"))
        return jax.jit(body), sharded

    tiny, large = _seconds(*psum(1)), _seconds(*psum(1 << 18))
    ring = 2 * 7 / 8 * (1 << 18) * 4 / max(large - tiny, 1e-9)
    return DeviceKind(
        "cpu-sim",
        "this machine as 8 simulated devices",
        24e9 / 8,
        2 * big.nbytes / copy / 8,
        {"float32": 2 * 1024**3 / matmul / 8},
        8,
        ring,
        ring,
        tiny,
    )


def _seconds(fn, *args) -> float:
    fn(*args).block_until_ready()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    return ranks


def main() -> dict:
    out = {"workload": WORKLOAD, "run_time": run_time(), "cpu_workload": CPU_WORKLOAD, "ordering": ordering()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
