"""Parameter and KV-cache bytes per device against the ideal (total ÷ devices), per strategy.

From the plans alone (abstract shapes, no device memory), for every file in
strategies/ on its own model and on llama3-70b shapes. Prints one JSON object.

    python benchmarks/memory_per_device.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax.numpy as jnp

from shardspec import compile, load
from shardspec.explanation import totals

ROOT = Path(__file__).resolve().parent.parent


def row(plan) -> dict:
    devices = math.prod(plan.mesh_shape.values())
    t = totals(plan)
    kv = plan.kv_cache
    # Ideal KV: every KV head stored once, all ranks' pages spread evenly over all devices.
    kv_total = (
        2
        * kv.num_layers
        * kv.page_size
        * kv.kv_heads
        * kv.head_dim
        * _itemsize(kv.dtype)
        * plan.dp_ranks
        * kv.pages_per_rank
    )
    kv_ideal = kv_total / devices
    return {
        "devices": devices,
        "mesh": dict(plan.mesh_shape),
        "params_bytes_per_device": t["params_bytes_per_device"],
        "params_ideal": t["params_ideal_bytes_per_device"],
        "params_ratio": round(t["params_bytes_per_device"] / t["params_ideal_bytes_per_device"], 3),
        "kv_bytes_per_device": t["kv_cache_bytes_per_device"],
        "kv_ideal": int(kv_ideal),
        "kv_ratio": round(t["kv_cache_bytes_per_device"] / kv_ideal, 3),
        "kv_head_replication": kv.replication,
    }


def _itemsize(dtype: str) -> int:
    return jnp.dtype(dtype).itemsize


def main() -> dict:
    results = {}
    for path in sorted((ROOT / "strategies").glob("*.yaml")):
        strategy = load(path)
        if strategy.multihost:
            continue  # same layout as its single-host twin
        results[path.stem] = {"own model": row(compile(strategy, abstract_mesh=True))}
        if strategy.model and strategy.model.startswith("llama3"):
            results[path.stem]["llama3-70b"] = row(compile(strategy, "llama3-70b", abstract_mesh=True))
    out = {"benchmark": "memory_per_device", "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
