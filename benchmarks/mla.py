"""Multi-head latent attention: what the latent cache costs under TP and attention DP, and
what serving from it (absorbed) saves against caching every head's keys and values.

1. KV memory, deterministic (explain's numbers, no device): deepseek-v3 shapes on 8 and
   16 devices, bfloat16 KV, 1,000 pages of 16 tokens a DP rank, under tensor
   parallelism (attention_data 1: the latent replicated over the tensor group) and
   attention DP (auto: every device its own rank). Per device: the KV bytes and the
   tokens it holds; for the whole system, the distinct tokens held.
2. Decode tokens/s at several context lengths, on one device, of an MLA model
   (dense FFNs, so the attention dominates) served two ways with the same weights:
   absorbed (shardspec's: the latent cache, attention in latent space) and expanded
   (what caching MLA like multi-head attention gives: every head's key and value
   cached, k = [latent · W_UK, rope key], v = latent · W_UV, padded to the key's width
   since one cache holds both). Each request: a prompt of the context length, 32
   tokens out, 16 requests; the best of REPEATS runs, alternating between the two,
   in one process (the machine is shared and noisy); greedy tokens must agree.

    python benchmarks/mla.py [--skip-decode]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from shardspec import compile, load  # noqa: E402
from shardspec.explanation import explain_dict  # noqa: E402
from shardspec.models.mla import DeepSeek, LatentAttention  # noqa: E402
from shardspec.models.presets import PRESETS  # noqa: E402
from shardspec.models.registry import build  # noqa: E402
from shardspec.protocol import DecoderGeometry, Layout  # noqa: E402
from shardspec.runtime.engine import Engine  # noqa: E402
from shardspec.runtime.request import Request  # noqa: E402

REPEATS = 3
CONTEXTS = (128, 512, 2048)
# Attention-heavy MLA shapes that run on a CPU: V2-Lite's head layout at a quarter of
# its widths, two layers, dense FFNs only.
MODEL = dataclasses.replace(
    PRESETS["deepseek-v3-tiny"],
    hidden_size=512,
    num_heads=16,
    num_kv_heads=16,
    head_dim=48,
    mlp_size=1024,
    q_lora_rank=None,
    kv_lora_rank=128,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    dense_layers=(0, 1),
    max_seq_len=4096,
)


def kv_memory() -> list[dict]:
    rows = []
    for devices in (8, 16):
        for name, attention_data in (("tp", 1), ("attention_dp", "auto")):
            strategy = load(
                {
                    "model": "deepseek-v3",
                    "parallelism": {"tensor": devices, "attention_data": attention_data},
                    "kv_cache": {"dtype": "bfloat16", "num_pages": 1000},
                }
            )
            kv = explain_dict(compile(strategy, abstract_mesh=True))["kv_cache"]
            ranks = devices // kv["kv_head_replication"]  # one tensor group: its ranks × replication
            rows.append(
                {
                    "devices": devices,
                    "strategy": name,
                    "dp_ranks": ranks,
                    "latent_replication": kv["kv_head_replication"],
                    "kv_bytes_per_device": kv["bytes_per_device"],
                    "tokens_per_device": kv["tokens_per_rank"],
                    "tokens_held": kv["tokens_per_rank"] * ranks,
                }
            )
    return rows


class ExpandedAttention(LatentAttention):
    """MLA cached as multi-head attention: every head's key and value, V padded to the key's width."""

    def __call__(self, x, positions, layout: Layout, attend, cache):
        q_nope, q_rope = self._query(x, positions)
        k, v = self.expand_heads(*self._latent(x, positions))
        V = v.shape[-1]
        v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, k.shape[-1] - V)))
        q, k, v = layout.attention_inputs(jnp.concatenate([q_nope, q_rope], axis=-1), k, v)
        out, cache = attend(q, k, v, positions, cache)
        out = jnp.einsum("bthv,hve->bte", out[..., :V], self.o_proj[...])
        return layout.constrain(out, "attn_out"), cache


class ExpandedDeepSeek(DeepSeek):
    def attention_for(self, layer: int):
        return ExpandedAttention

    def decoder_geometry(self) -> DecoderGeometry:
        absorbed, c = super().decoder_geometry(), self.config
        return dataclasses.replace(absorbed, num_kv_heads=c.num_heads, head_dim=c.head_dim, latent_dim=None)


def _engine(model, context: int) -> Engine:
    runtime = {"max_num_seqs": 16, "max_num_batched_tokens": 512, "max_model_len": context + 64}
    strategy = load({"devices": 1, "parallelism": {"tensor": 1}, "runtime": runtime, "kv_cache": {"num_pages": 2200}})
    engine = Engine(compile(strategy, model, devices=jax.devices()[:1]), model)
    engine.warmup()
    return engine


def _requests(context: int) -> list[Request]:
    rng = np.random.default_rng(context)
    return [
        Request(str(i), tuple(rng.integers(3, MODEL.vocab_size, context).tolist()), max_tokens=32, ignore_eos=True)
        for i in range(16)
    ]


def _timed(engine: Engine, requests: list[Request]) -> tuple[float, list]:
    start = time.perf_counter()
    outputs = engine.generate(requests)
    return time.perf_counter() - start, [o.output_token_ids for o in outputs]


def decode(context: int) -> dict:
    """Decode tokens/s: (32-token runs − 1-token runs) ÷ the 31 × 16 tokens decoded, best of REPEATS."""
    absorbed = build(MODEL, seed=1)
    with nnx.use_eager_sharding(False):
        graphdef, _ = nnx.split(ExpandedDeepSeek(MODEL, rngs=None))
    expanded = nnx.merge(graphdef, nnx.state(absorbed))  # the same weights, cached the other way
    engines = {"absorbed": _engine(absorbed, context), "expanded": _engine(expanded, context)}
    full = _requests(context)
    prefill = [dataclasses.replace(r, max_tokens=1) for r in full]
    best = {(name, n): float("inf") for name in engines for n in (1, 32)}
    tokens = {}
    for _ in range(REPEATS):
        for name, engine in engines.items():
            for n, requests in ((1, prefill), (32, full)):
                wall, tokens[name, n] = _timed(engine, requests)
                best[name, n] = min(best[name, n], wall)
    assert tokens["absorbed", 32] == tokens["expanded", 32], "the two forms disagree"
    out = {}
    for name, engine in engines.items():
        seconds = best[name, 32] - best[name, 1]
        out[name] = {
            "decode_tokens_per_s": round(31 * len(full) / seconds, 1),
            "prefill_s": round(best[name, 1], 3),
            "kv_bytes_per_token_per_layer": engine.plan.kv_cache.bytes_per_token_per_layer,
        }
    out["decode_speedup"] = round(out["absorbed"]["decode_tokens_per_s"] / out["expanded"]["decode_tokens_per_s"], 2)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args(argv)
    out: dict = {"benchmark": "mla", "kv_memory": kv_memory(), "decode": {}}
    for r in out["kv_memory"]:
        print(
            f"{r['devices']} devices, {r['strategy']}: replication {r['latent_replication']}, "
            f"{r['kv_bytes_per_device'] / 2**30:.2f} GiB KV a device, {r['tokens_per_device']:,} tokens a device, "
            f"{r['tokens_held']:,} held",
            file=sys.stderr,
        )
    if not args.skip_decode:
        for context in CONTEXTS:
            out["decode"][str(context)] = row = decode(context)
            print(f"decode at context {context}: {row}", file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
