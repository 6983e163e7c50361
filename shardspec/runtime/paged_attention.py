"""Paged attention over each DP rank's own KV pages, inside `shard_map`.

Inside the map every rank sees only its share: its S tokens, its Q request
rows, its page pool, and the KV heads of its `model` shard. Page ids and KV
slots are rank-local, so nothing here crosses ranks: model-wise DP adds no
collective at all.

`attend_rank` (the runtime's) reads what the step uses, not what the limits
allow: a blockwise online softmax over the rows' pages, BLOCK_TOKENS positions
at a time, for as many blocks as the step's longest context needs (the trip
count is data, so one compile serves every context length). Each block's pages
are read once per request row and shared by that row's tokens. Temp memory is
one block, [S, BLOCK_TOKENS, K, D], whatever `max_model_len`; compute grows
with the longest context in the step. `attend_rank_reference` gathers every
token's whole block table, [S, max_pages × page_size, K, D]: exact and simple,
it is the tests' oracle.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

BLOCK_TOKENS = 64  # positions one loop iteration attends to (rounded to whole pages)
IMPLEMENTATION = "paged: blockwise online softmax over each row's pages (pure JAX)"


@dataclasses.dataclass(frozen=True)
class PagedBatch:
    """The per-step arrays attention needs (a subset of the packer's output)."""

    positions: jax.Array  # [R*S] int32
    slot_mapping: jax.Array  # [R*S] int32, rank-local; out of range = padding, dropped
    token_rows: jax.Array  # [R*S] int32, rank-local request row of each token
    block_tables: jax.Array  # [R*Q, M] int32, rank-local page ids
    seq_lens: jax.Array  # [R*Q] int32, tokens in the cache after the step (0: padding row)


jax.tree_util.register_dataclass(
    PagedBatch, data_fields=[f.name for f in dataclasses.fields(PagedBatch)], meta_fields=[]
)


def _write(k_new, v_new, k_cache, v_cache, slot_mapping):
    """This step's keys and values into the cache first: every token then reads its whole
    context, its own chunk included, from the cache."""
    pages, page, K, D = k_cache.shape
    k_cache = k_cache.reshape(pages * page, K, D).at[slot_mapping].set(k_new.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.reshape(pages * page, K, D).at[slot_mapping].set(v_new.astype(v_cache.dtype), mode="drop")
    return k_cache.reshape(pages, page, K, D), v_cache.reshape(pages, page, K, D)


def attend_rank(q, k_new, v_new, k_cache, v_cache, positions, slot_mapping, token_rows, block_tables, seq_lens):
    """One rank. q [S, H, D]; k_new, v_new [S, K, D]; caches [pages, page, K, D]."""
    k_cache, v_cache = _write(k_new, v_new, k_cache, v_cache, slot_mapping)
    pages, page, K, D = k_cache.shape
    S, H, _ = q.shape
    Q, M = block_tables.shape
    per_block = max(1, BLOCK_TOKENS // page)  # pages an iteration reads
    L = per_block * page
    tables = jnp.pad(block_tables, ((0, 0), (0, -M % per_block)))  # whole blocks, padding page 0
    qg = q.reshape(S, K, H // K, D).astype(jnp.float32) * D**-0.5  # query head h reads KV slot h // G
    blocks = (jnp.max(seq_lens) + L - 1) // L  # the step's longest context, in blocks

    def block(j, carry):
        m, norm, acc = carry  # running max [S, K, G], normaliser [S, K, G], output [S, K, G, D]
        ids = jax.lax.dynamic_slice_in_dim(tables, j * per_block, per_block, axis=1)  # [Q, B]
        # One read of the block per request row, then shared by the row's tokens.
        keys = k_cache[ids].reshape(Q, L, K, D)[token_rows].astype(jnp.float32)  # [S, L, K, D]
        values = v_cache[ids].reshape(Q, L, K, D)[token_rows].astype(jnp.float32)
        scores = jnp.einsum("skgd,slkd->skgl", qg, keys)
        visible = (j * L + jnp.arange(L))[None, :] <= positions[:, None]  # causal; [S, L]
        scores = jnp.where(visible[:, None, None, :], scores, -jnp.inf)
        m_new = jnp.maximum(m, scores.max(axis=-1))
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing visible yet stay at 0
        p = jnp.exp(scores - shift[..., None])
        scale = jnp.exp(m - shift)
        return m_new, norm * scale + p.sum(axis=-1), acc * scale[..., None] + jnp.einsum("skgl,slkd->skgd", p, values)

    init = (jnp.full((S, K, H // K), -jnp.inf), jnp.zeros((S, K, H // K)), jnp.zeros((S, K, H // K, D)))
    _, norm, acc = jax.lax.fori_loop(0, blocks, block, init)
    out = acc / jnp.maximum(norm, 1e-30)[..., None]  # every real token sees itself: norm > 0
    return out.reshape(S, H, D).astype(q.dtype), k_cache, v_cache


def attend_rank_reference(
    q, k_new, v_new, k_cache, v_cache, positions, slot_mapping, token_rows, block_tables, seq_lens=None
):
    """The exact gather: every token reads its row's whole block table (the tests' oracle)."""
    k_cache, v_cache = _write(k_new, v_new, k_cache, v_cache, slot_mapping)
    pages, page, K, D = k_cache.shape
    tables = block_tables[token_rows]  # [S, M]
    S, M = tables.shape
    keys = k_cache[tables].reshape(S, M * page, K, D).astype(q.dtype)  # [S, L, K, D]
    values = v_cache[tables].reshape(S, M * page, K, D).astype(q.dtype)
    H = q.shape[1]
    qg = q.reshape(S, K, H // K, D)  # query head h reads KV slot h // G
    scores = jnp.einsum("skgd,slkd->skgl", qg, keys).astype(jnp.float32) * D**-0.5
    visible = jnp.arange(M * page)[None, :] <= positions[:, None]  # causal; [S, L]
    probs = jax.nn.softmax(jnp.where(visible[:, None, None, :], scores, -jnp.inf), axis=-1)
    probs = jnp.where(visible.any(axis=1)[:, None, None, None], probs, 0.0)  # padding (position -1): 0, not NaN
    out = jnp.einsum("skgl,slkd->skgd", probs.astype(values.dtype), values).reshape(S, H, D)
    return out, k_cache, v_cache


def make_attend(mesh, token_axes, q_spec: P, kv_spec: P, cache_spec: P, rank_attention=attend_rank):
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
            tok,
        ),
        out_specs=(P(*q_spec[:1], *q_spec[2:]), cache_spec, cache_spec),
    )
    def sharded(q, k, v, k_cache, v_cache, positions, slots, rows, tables, seq_lens):
        return rank_attention(q, k, v, k_cache, v_cache, positions, slots, rows, tables, seq_lens)

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
            batch.seq_lens,
        )
        return out[:, None], ((k_cache, v_cache), batch)

    return attend
