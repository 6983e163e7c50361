"""MoE FFN FLOPs per device: dense vs sparse dispatch vs the routed ideal.

One MoE layer of mixtral-8x7b and qwen3-30b-a3b shapes under
strategies/moe_ep.yaml (tensor 2 × expert 4 = 8 simulated CPU devices), at the
serving step's decode and prefill token counts (the smallest and largest token
bucket), compiled ahead of time from shapes (nothing is allocated):

- dense: XLA's cost analysis of the compiled layer (no loop: the exact count);
- sparse: XLA's count of the compiled layer counts the tile loop's body once,
  so the executed FLOPs are that count plus (tiles run − 1) × one tile's
  matmuls (2 × tile rows × 3 × hidden × expert hidden a device). Tiles run are
  counted by the kernel's own `tiles_used` on the busiest device for balanced
  routing, for uniformly random top-k routing (seeded) and for the worst case
  (every token on one device's experts);
- ideal: 2 × tokens × (router + top-k experts' parameters) ÷ devices.

Then wall time: one MoE FFN (512 tokens, hidden 512, expert hidden 256, top 2)
on one device, the dense and the sparse kernel alternating, as the experts grow
from 8 to 128: dense grows with the experts, sparse with the routed work.

    python benchmarks/moe_flops.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from shardspec import compile, load  # noqa: E402
from shardspec.models.moe import ExpertFFN  # noqa: E402
from shardspec.models.moe_dispatch import dense_experts, sparse_experts, tile_rows, tiles_used  # noqa: E402
from shardspec.per_shard import local_shape  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("mixtral-8x7b", "qwen3-30b-a3b")


def layer_flops(plan, tokens: int) -> float:
    """XLA's FLOPs per device of layer 0's MoE FFN on `tokens` tokens ([tokens, 1, E], as the step)."""
    cfg = plan.model.config
    with nnx.use_eager_sharding(False):
        moe = ExpertFFN(cfg, plan.dtype, None)  # abstract
    graphdef, state = nnx.split(moe)
    specs = {p.path: p.spec for p in plan.params}
    structs = jax.tree_util.tree_map_with_path(
        lambda path, x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=NamedSharding(plan.mesh, specs["layers.0.mlp." + path[0].key])
        ),
        state,
    )
    x = jax.ShapeDtypeStruct(
        (tokens, 1, cfg.hidden_size), plan.dtype, sharding=NamedSharding(plan.mesh, plan.activations["attn_in"])
    )
    compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, plan.layout)).lower(structs, x).compile()
    return float(compiled.cost_analysis()["flops"])


def routing(kind: str, tokens: int, experts: int, k: int, shards: int, seed: int = 0) -> np.ndarray:
    """Routing weights [tokens, experts] (1/k on each token's chosen experts)."""
    if kind == "balanced":  # assignment i to expert i mod X, dealt round the shards: every expert and device even
        i = (np.arange(tokens)[:, None] * k + np.arange(k)) % experts
        chosen = (i % shards) * (experts // shards) + i // shards
    elif kind == "random":
        chosen = np.argsort(np.random.default_rng(seed).random((tokens, experts)), axis=1)[:, :k]
    else:  # worst: every token on the first device's experts
        chosen = np.arange(k)[None, :].repeat(tokens, 0) % (experts // shards)
    w = np.zeros((tokens, experts), np.float32)
    np.put_along_axis(w, chosen, 1.0 / k, axis=1)
    return w


def measure(preset: str) -> dict:
    plans = {
        d: compile(load(ROOT / "strategies" / "moe_ep.yaml", overrides={"runtime.moe_dispatch": d}), preset)
        for d in ("dense", "sparse")
    }
    plan = plans["sparse"]
    cfg, sizes, shape = plan.model.config, plan.runtime, plan.mesh_shape
    E, X, F, k = cfg.hidden_size, cfg.num_experts, cfg.expert_mlp_size, cfg.experts_per_token
    gate = next(p for p in plan.params if p.path == "layers.0.mlp.gate_proj")
    experts_local, _, f_local = local_shape(gate.stored_shape, gate.spec, shape)
    shards = X // experts_local
    out = {"experts": X, "experts_per_token": k, "experts_per_device": experts_local}
    for step, stride in (("decode", sizes.token_buckets[0]), ("prefill", sizes.token_buckets[-1])):
        tokens = sizes.dp_ranks * stride  # every token reaches every expert shard here (data 1)
        tile = tile_rows(tokens, k, X)
        tile_flops = 2.0 * tile * 3 * E * f_local
        counted = {d: layer_flops(plans[d], tokens) for d in plans}
        ideal = 2.0 * tokens * (E * X + k * 3 * E * F) / plan.device_count
        entry = {"tokens": tokens, "tile_rows": tile, "ideal": ideal, "dense": counted["dense"]}
        entry["dense_over_ideal"] = round(counted["dense"] / ideal, 2)
        entry["sparse_xla_counted"] = counted["sparse"]
        for kind in ("balanced", "random", "worst"):
            w = routing(kind, tokens, X, k, shards)
            per_device = np.split(w, shards, axis=1)  # each expert shard's columns
            tiles = [int(tiles_used(jnp.asarray(c), experts_per_token=k, tile=tile)) for c in per_device]
            # FLOPs spent = the devices' mean; the step waits for the busiest device.
            for what, n in (("", sum(tiles) / shards), ("_busiest", max(tiles))):
                executed = counted["sparse"] + (n - 1) * tile_flops
                entry[f"sparse_{kind}{what}"] = executed
                entry[f"sparse_{kind}{what}_over_ideal"] = round(executed / ideal, 2)
            entry[f"tiles_{kind}"] = tiles
        out[step] = entry
        print(
            f"{preset} {step}: dense {entry['dense_over_ideal']}× ideal, sparse "
            f"{entry['sparse_balanced_over_ideal']}× (balanced) {entry['sparse_random_over_ideal']}× "
            f"(random; busiest device {entry['sparse_random_busiest_over_ideal']}×) "
            f"{entry['sparse_worst_busiest_over_ideal']}× (worst, busiest device)",
            file=sys.stderr,
        )
    return out


def layer_time(experts: int, tokens: int = 512, hidden: int = 512, ffn: int = 256, k: int = 2) -> dict:
    """Seconds of one MoE FFN on one device, dense vs sparse kernel, best of 5 alternating runs."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(tokens, hidden)), jnp.float32)
    w = jnp.asarray(routing("random", tokens, experts, k, 1))
    gate, up = (jnp.asarray(rng.normal(size=(experts, hidden, ffn)) * hidden**-0.5, jnp.float32) for _ in "gu")
    down = jnp.asarray(rng.normal(size=(experts, ffn, hidden)) * ffn**-0.5, jnp.float32)
    tile = tile_rows(tokens, k, experts)
    kernels = {
        "dense": jax.jit(dense_experts),
        "sparse": jax.jit(lambda *a: sparse_experts(*a, experts_per_token=k, tile=tile)),
    }
    outs = {name: f(x, w, gate, up, down).block_until_ready() for name, f in kernels.items()}  # compile
    assert np.allclose(outs["dense"], outs["sparse"], atol=1e-3)
    best = dict.fromkeys(kernels, float("inf"))
    for _ in range(5):
        for name, f in kernels.items():
            start = time.perf_counter()
            f(x, w, gate, up, down).block_until_ready()
            best[name] = min(best[name], time.perf_counter() - start)
    return {
        "dense_s": round(best["dense"], 5),
        "sparse_s": round(best["sparse"], 5),
        "dense_over_sparse": round(best["dense"] / best["sparse"], 2),
    }


def main() -> dict:
    out = {"benchmark": "moe_flops", "strategy": "moe_ep.yaml", "results": {p: measure(p) for p in PRESETS}}
    out["one_device_time"] = {"tokens": 512, "hidden": 512, "expert_hidden": 256, "experts_per_token": 2}
    for experts in (8, 32, 128):
        out["one_device_time"][str(experts)] = r = layer_time(experts)
        print(f"one device, {experts} experts: {r}", file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
