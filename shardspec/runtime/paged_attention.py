"""Paged attention over each DP rank's own KV pages, inside `shard_map`.

Inside the map every rank sees only its share: its S tokens, its Q request
rows, its page pool, and the KV heads of its `model` shard. Page ids and KV
slots are rank-local, so nothing here crosses ranks: model-wise DP adds no
collective at all.

`attend_rank` (the runtime's) reads what the step uses, not what the limits
allow: the step's tokens in tiles of TILE_TOKENS, each tile a blockwise online
softmax over its tokens' rows' pages, BLOCK_TOKENS positions at a time, for as
many blocks as its own furthest token needs (both trip counts are data, so one
compile serves every context length). So compute grows with each tile's
context, not the step's longest times every token: a prompt's first tile reads
one block while a long decode's tile reads all of its own, a causal prompt's
tiles read more blocks as they go, and a tile of padding reads none. A tile
of one row's tokens (a prompt's chunk) reads each block once for all of them,
one matmul; a tile of several rows (decodes) reads each token's own. Temp
memory is one tile's block, [TILE_TOKENS, BLOCK_TOKENS, K, D], whatever
`max_model_len`. `attend_rank_reference` gathers every token's whole block
table, [S, max_pages × page_size, K, D]: exact and simple, it is the tests'
oracle.

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
TILE_TOKENS = 64  # tokens one loop iteration attends for: each tile reads the blocks its own tokens need
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
    S, H, _ = q.shape
    per_block = max(1, BLOCK_TOKENS // page)  # pages an iteration reads
    M = block_tables.shape[1]
    tables = jnp.pad(block_tables, ((0, 0), (0, -M % per_block)))  # whole blocks, padding page 0
    qg = q.reshape(S, K, H // K, D).astype(jnp.float32) * scale  # query head h reads KV slot h // G
    T = min(S, TILE_TOKENS)

    def tile(t, out):
        # The last tile ends at S (a window kept in bounds): the tokens it shares with the
        # tile before are computed twice, the same both times.
        at = jnp.minimum(t * T, S - T)
        pos, rows = (jax.lax.dynamic_slice_in_dim(x, at, T) for x in (positions, token_rows))
        q_tile = jax.lax.dynamic_slice_in_dim(qg, at, T)
        attended = _attend_tile(q_tile, pos, rows, tables, k_cache, v_cache, per_block, latent_dim)
        return jax.lax.dynamic_update_slice_in_dim(out, attended, at, axis=0)

    out = jax.lax.fori_loop(0, -(-S // T), tile, jnp.zeros((S, K, H // K, v_cache.shape[-1])))
    return out.reshape(S, H, -1).astype(q.dtype), caches


def _attend_tile(q, positions, rows, tables, k_cache, v_cache, per_block: int, latent_dim):
    """A tile's tokens, q [T, K, G, D] at `positions` [T] in request `rows` [T] (of the rank's
    block `tables` [Q, pages]): an online softmax over the blocks its furthest token's context
    spans (none for a tile of padding, position -1). Returns [T, K, G, Dv].

    A tile whose tokens are all one row's (a prompt's chunk) reads each block once for all of
    them, one matmul; a tile of several rows reads each token's row's block for it."""
    T, K, G, D = q.shape
    Dv, L = v_cache.shape[-1], per_block * k_cache.shape[1]
    real = positions >= 0
    row = jnp.max(jnp.where(real, rows, 0))
    one_row = jnp.all(jnp.where(real, rows == row, True))

    def read(ids, shape):  # a block's keys and values at `ids` [..., per_block]
        keys = k_cache[ids].reshape(*shape, L, K, D).astype(jnp.float32)
        values = (
            keys[..., :Dv] if latent_dim is not None else v_cache[ids].reshape(*shape, L, K, Dv).astype(jnp.float32)
        )
        return keys, values

    def shared(j, carry):
        keys, values = read(jax.lax.dynamic_slice_in_dim(tables[row], j * per_block, per_block), ())
        return _softmax_step(j, carry, positions, jnp.einsum("skgd,lkd->skgl", q, keys), values, "skgl,lkd->skgd")

    def per_token(j, carry):
        ids = jax.lax.dynamic_slice_in_dim(tables, j * per_block, per_block, axis=1)[rows]  # [T, per_block]
        keys, values = read(ids, (T,))
        return _softmax_step(j, carry, positions, jnp.einsum("skgd,slkd->skgl", q, keys), values, "skgl,slkd->skgd")

    init = (jnp.full((T, K, G), -jnp.inf), jnp.zeros((T, K, G)), jnp.zeros((T, K, G, Dv)))
    blocks = (jnp.max(positions) + L) // L

    def over_blocks(read_block):  # the tile's loop, each block read the one way
        return lambda: jax.lax.fori_loop(0, blocks, read_block, init)

    _, norm, acc = jax.lax.cond(one_row, over_blocks(shared), over_blocks(per_token))
    return acc / jnp.maximum(norm, 1e-30)[..., None]  # a real token sees itself: norm > 0


def _softmax_step(j, carry, positions, scores, values, pv: str):
    """Block j of an online softmax: `scores` [T, K, G, L] of the block's positions, `values`
    read as the einsum `pv` reads them. Returns the carry: running max [T, K, G], normaliser
    [T, K, G], output [T, K, G, Dv]."""
    m, norm, acc = carry
    L = scores.shape[-1]
    visible = (j * L + jnp.arange(L))[None, :] <= positions[:, None]  # causal; [T, L]
    scores = jnp.where(visible[:, None, None, :], scores, -jnp.inf)
    m_new = jnp.maximum(m, scores.max(axis=-1))
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # tokens with nothing visible yet stay at 0
    p = jnp.exp(scores - shift[..., None])
    rescale = jnp.exp(m - shift)
    return m_new, norm * rescale + p.sum(axis=-1), acc * rescale[..., None] + jnp.einsum(pv, p, values)


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
