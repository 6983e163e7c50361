"""Paged attention over each DP rank's own KV pages, inside `shard_map`.

Inside the map every rank sees only its share: its S tokens, its Q request
rows, its page pool, and the KV heads of its `model` shard. Page ids and KV
slots are rank-local, so nothing here crosses ranks: model-wise DP adds no
collective at all.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class PagedBatch:
    """The per-step arrays attention needs (a subset of the packer's output)."""

    positions: jax.Array  # [R*S] int32
    slot_mapping: jax.Array  # [R*S] int32, rank-local; out of range = padding, dropped
    token_rows: jax.Array  # [R*S] int32, rank-local request row of each token
    block_tables: jax.Array  # [R*Q, M] int32, rank-local page ids


jax.tree_util.register_dataclass(
    PagedBatch, data_fields=[f.name for f in dataclasses.fields(PagedBatch)], meta_fields=[]
)


def attend_rank(q, k_new, v_new, k_cache, v_cache, positions, slot_mapping, token_rows, block_tables):
    """One rank. q [S, H, D]; k_new, v_new [S, K, D]; caches [pages, page, K, D]."""
    pages, page, K, D = k_cache.shape
    # Write this step's keys and values first: every token then reads its whole
    # context, its own chunk included, from the cache.
    k_cache = (
        k_cache.reshape(pages * page, K, D)
        .at[slot_mapping]
        .set(k_new.astype(k_cache.dtype), mode="drop")
        .reshape(k_cache.shape)
    )
    v_cache = (
        v_cache.reshape(pages * page, K, D)
        .at[slot_mapping]
        .set(v_new.astype(v_cache.dtype), mode="drop")
        .reshape(v_cache.shape)
    )
    tables = block_tables[token_rows]  # [S, M]
    S, M = tables.shape
    keys = k_cache[tables].reshape(S, M * page, K, D).astype(q.dtype)  # [S, L, K, D]
    values = v_cache[tables].reshape(S, M * page, K, D).astype(q.dtype)
    H = q.shape[1]
    qg = q.reshape(S, K, H // K, D)  # query head h reads KV slot h // G
    scores = jnp.einsum("skgd,slkd->skgl", qg, keys).astype(jnp.float32) * D**-0.5
    visible = jnp.arange(M * page)[None, :] <= positions[:, None]  # causal; [S, L]
    probs = jax.nn.softmax(jnp.where(visible[:, None, None, :], scores, -jnp.inf), axis=-1)
    out = jnp.einsum("skgl,slkd->skgd", probs.astype(values.dtype), values).reshape(S, H, D)
    return out, k_cache, v_cache


def make_attend(mesh, token_axes, q_spec: P, kv_spec: P, cache_spec: P):
    """An `Attend` for the model: [N, 1, ...] activations, caches as (k, v) per layer.

    `token_axes` is the PartitionSpec entry that splits tokens, request rows and
    pages over DP ranks; the specs come from the plan.
    """
    tok = P(token_axes)

    @partial(
        jax.shard_map,
        mesh=mesh,
        check_vma=False,
        in_specs=(
            P(*q_spec[:1], *q_spec[2:]),
            P(*kv_spec[:1], *kv_spec[2:]),
            P(*kv_spec[:1], *kv_spec[2:]),
            cache_spec,
            cache_spec,
            tok,
            tok,
            tok,
            P(token_axes, None),
        ),
        out_specs=(P(*q_spec[:1], *q_spec[2:]), cache_spec, cache_spec),
    )
    def sharded(q, k, v, k_cache, v_cache, positions, slots, rows, tables):
        return attend_rank(q, k, v, k_cache, v_cache, positions, slots, rows, tables)

    def attend(q, k, v, positions, cache):
        """q [N, 1, H, D]; k, v [N, 1, K', D]; cache = ((k_cache, v_cache), PagedBatch)."""
        (k_cache, v_cache), batch = cache
        out, k_cache, v_cache = sharded(
            q[:, 0],
            k[:, 0],
            v[:, 0],
            k_cache,
            v_cache,
            batch.positions,
            batch.slot_mapping,
            batch.token_rows,
            batch.block_tables,
        )
        return out[:, None], ((k_cache, v_cache), batch)

    return attend
