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

A layer's cache is a K and a V array, or (multi-head latent attention,
`DecoderGeometry.latent_dim`) one array of latents read as the keys, whose
first `latent_dim` channels are the values: each block is then read once for
both, and every query head of a rank reads the same latents.
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


def _write(new, caches, slot_mapping):
    """This step's keys and values (or latents) into the cache first: every token then
    reads its whole context, its own chunk included, from the cache."""
    out = []
    for x, cache in zip(new, caches):
        pages, page, K, D = cache.shape
        flat = cache.reshape(pages * page, K, D).at[slot_mapping].set(x.astype(cache.dtype), mode="drop")
        out.append(flat.reshape(pages, page, K, D))
    return tuple(out)


def _keys_values(caches, latent_dim: int | None):
    """(keys, values) of per-layer caches: (K, V), or one latent whose first channels are the values."""
    if latent_dim is None:
        return caches
    return caches[0], caches[0][..., :latent_dim]


def attend_rank(q, new, caches, positions, slot_mapping, token_rows, block_tables, seq_lens, *, scale, latent_dim):
    """One rank. q [S, H, D]; new: this step's (k [S, K, D], v [S, K, Dv]), or (latent [S, 1, D],);
    caches: the layer's arrays, [pages, page, K, D] each. Returns (out [S, H, Dv], caches)."""
    caches = _write(new, caches, slot_mapping)
    k_cache, v_cache = _keys_values(caches, latent_dim)
    pages, page, K, D = k_cache.shape
    Dv = v_cache.shape[-1]
    S, H, _ = q.shape
    Q, M = block_tables.shape
    per_block = max(1, BLOCK_TOKENS // page)  # pages an iteration reads
    L = per_block * page
    tables = jnp.pad(block_tables, ((0, 0), (0, -M % per_block)))  # whole blocks, padding page 0
    qg = q.reshape(S, K, H // K, D).astype(jnp.float32) * scale  # query head h reads KV slot h // G
    blocks = (jnp.max(seq_lens) + L - 1) // L  # the step's longest context, in blocks

    def block(j, carry):
        m, norm, acc = carry  # running max [S, K, G], normaliser [S, K, G], output [S, K, G, Dv]
        ids = jax.lax.dynamic_slice_in_dim(tables, j * per_block, per_block, axis=1)  # [Q, B]
        # One read of the block per request row, then shared by the row's tokens.
        keys = k_cache[ids].reshape(Q, L, K, D)[token_rows].astype(jnp.float32)  # [S, L, K, D]
        values = (
            keys[..., :Dv]
            if latent_dim is not None
            else v_cache[ids].reshape(Q, L, K, Dv)[token_rows].astype(jnp.float32)
        )
        scores = jnp.einsum("skgd,slkd->skgl", qg, keys)
        visible = (j * L + jnp.arange(L))[None, :] <= positions[:, None]  # causal; [S, L]
        scores = jnp.where(visible[:, None, None, :], scores, -jnp.inf)
        m_new = jnp.maximum(m, scores.max(axis=-1))
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing visible yet stay at 0
        p = jnp.exp(scores - shift[..., None])
        rescale = jnp.exp(m - shift)
        return (
            m_new,
            norm * rescale + p.sum(axis=-1),
            acc * rescale[..., None] + jnp.einsum("skgl,slkd->skgd", p, values),
        )

    G = H // K
    init = (jnp.full((S, K, G), -jnp.inf), jnp.zeros((S, K, G)), jnp.zeros((S, K, G, Dv)))
    _, norm, acc = jax.lax.fori_loop(0, blocks, block, init)
    out = acc / jnp.maximum(norm, 1e-30)[..., None]  # every real token sees itself: norm > 0
    return out.reshape(S, H, Dv).astype(q.dtype), caches


def attend_rank_reference(
    q, new, caches, positions, slot_mapping, token_rows, block_tables, seq_lens, *, scale, latent_dim
):
    """The exact gather: every token reads its row's whole block table (the tests' oracle)."""
    caches = _write(new, caches, slot_mapping)
    k_cache, v_cache = _keys_values(caches, latent_dim)
    pages, page, K, D = k_cache.shape
    tables = block_tables[token_rows]  # [S, M]
    S, M = tables.shape
    keys = k_cache[tables].reshape(S, M * page, K, D).astype(q.dtype)  # [S, L, K, D]
    values = v_cache[tables].reshape(S, M * page, K, v_cache.shape[-1]).astype(q.dtype)
    H = q.shape[1]
    qg = q.reshape(S, K, H // K, D)  # query head h reads KV slot h // G
    scores = jnp.einsum("skgd,slkd->skgl", qg, keys).astype(jnp.float32) * scale
    visible = jnp.arange(M * page)[None, :] <= positions[:, None]  # causal; [S, L]
    probs = jax.nn.softmax(jnp.where(visible[:, None, None, :], scores, -jnp.inf), axis=-1)
    probs = jnp.where(visible.any(axis=1)[:, None, None, None], probs, 0.0)  # padding (position -1): 0, not NaN
    out = jnp.einsum("skgl,slkd->skgd", probs.astype(values.dtype), values).reshape(S, H, values.shape[-1])
    return out, caches


def make_attend(mesh, token_axes, q_spec: P, kv_spec: P, cache_spec: P, geometry, rank_attention=attend_rank):
    """An `Attend` for the model: [N, 1, ...] activations, caches as the layer's arrays
    (K and V, or the latent: `geometry.kv_arrays`).

    `token_axes` is the PartitionSpec entry that splits tokens, request rows and
    pages over DP ranks; the specs come from the plan.
    """
    tok = P(token_axes)
    heads = P(*q_spec[:1], *q_spec[2:])
    arrays = geometry.kv_arrays
    rank = partial(rank_attention, scale=geometry.scale, latent_dim=geometry.latent_dim)

    @partial(
        jax.shard_map,
        mesh=mesh,
        check_vma=False,
        in_specs=(heads, (P(*kv_spec[:1], *kv_spec[2:]),) * arrays, (cache_spec,) * arrays)
        + (tok, tok, tok, P(token_axes, None), tok),
        out_specs=(heads, (cache_spec,) * arrays),
    )
    def sharded(q, new, caches, positions, slots, rows, tables, seq_lens):
        return rank(q, new, caches, positions, slots, rows, tables, seq_lens)

    def attend(q, k, v, positions, cache):
        """q [N, 1, H, D]; k, v [N, 1, K', D] (v None: a latent); cache = (arrays, PagedBatch)."""
        caches, batch = cache
        new = (k[:, 0],) if v is None else (k[:, 0], v[:, 0])
        # Called from a model's forward, which may run on a mesh in its own axis names
        # (plan.traced_context): the shard_map is on the plan's.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            out, caches = sharded(
                q[:, 0],
                new,
                tuple(caches),
                batch.positions,
                batch.slot_mapping,
                batch.token_rows,
                batch.block_tables,
                batch.seq_lens,
            )
        return out[:, None], (caches, batch)

    return attend
