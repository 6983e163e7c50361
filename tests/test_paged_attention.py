"""The blockwise paged attention against the exact gather it replaced (kept as the oracle)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shardspec import compile, load
from shardspec.runtime.engine import Engine
from shardspec.runtime.paged_attention import BLOCK_TOKENS, TILE_TOKENS, attend_rank, attend_rank_reference
from shardspec.runtime.request import Request, SamplingParams

from conftest import ROOT
from helpers import SERVING

MIXED = [(150, 1), (40, 1), (70, 9), (0, 5), (BLOCK_TOKENS, 1)]  # (cached, new tokens) per row


def _mixed_batch(rng, page=16, pages=64, M=16, K=2, H=8, D=16, latent_dim=None, contexts=MIXED, padding=(3, 0)):
    """Rows: long decodes (several blocks), a prefill chunk after a cached prefix, a fresh
    prompt, and padding tokens (how many, at which position); block tables with scattered
    pages. `latent_dim`: one latent cache array (K = 1) whose first channels are the values."""
    Q = len(contexts) + 1  # a padding row
    tables = np.zeros((Q, M), np.int32)
    free = rng.permutation(pages)
    positions, rows, slots, seq_lens = [], [], [], np.zeros(Q, np.int32)
    for r, (cached, new) in enumerate(contexts):
        n_pages = -(-(cached + new) // page)
        tables[r, :n_pages], free = free[:n_pages], free[n_pages:]
        for p in range(cached, cached + new):
            positions.append(p)
            rows.append(r)
            slots.append(tables[r, p // page] * page + p % page)
        seq_lens[r] = cached + new
    for _ in range(padding[0]):  # padding tokens: row 0, dropped slot
        positions.append(padding[1])
        rows.append(0)
        slots.append(pages * page)
    S = len(positions)
    f32 = jnp.float32
    arrays = 1 if latent_dim else 2
    return dict(
        q=jnp.asarray(rng.normal(size=(S, H, D)), f32),
        new=tuple(jnp.asarray(rng.normal(size=(S, K, D)), f32) for _ in range(arrays)),
        caches=tuple(jnp.asarray(rng.normal(size=(pages, page, K, D)), f32) for _ in range(arrays)),
        positions=jnp.asarray(positions, jnp.int32),
        slot_mapping=jnp.asarray(slots, jnp.int32),
        token_rows=jnp.asarray(rows, jnp.int32),
        block_tables=jnp.asarray(tables),
        seq_lens=jnp.asarray(seq_lens),
    ), S - padding[0]


def _jit(rank_attention, D=16, latent_dim=None):
    return jax.jit(functools.partial(rank_attention, scale=D**-0.5, latent_dim=latent_dim))


@pytest.mark.parametrize("page", [4, 16, 128])
def test_blockwise_equals_the_exact_gather_on_a_mixed_batch(page):
    batch, real = _mixed_batch(np.random.default_rng(page), page=page, pages=2048 // page, M=256 // page)
    got, caches_got = _jit(attend_rank)(**batch)
    want, caches_want = _jit(attend_rank_reference)(**batch)
    np.testing.assert_allclose(np.asarray(got)[:real], np.asarray(want)[:real], rtol=2e-5, atol=2e-5)
    for a, b in zip(caches_got, caches_want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("latent_dim", [None, 16])
def test_tiles_read_their_own_context_and_a_padding_tile_reads_none(latent_dim):
    # More tokens than a tile: a long prompt's tiles (causal: later ones read more blocks;
    # those of its tokens alone read each block once for all of them), decodes and a chunk
    # after a cached prefix sharing a tile, then a whole tile of padding (-1, as the packer
    # pads) and a last tile that overlaps the one before it.
    contexts = [(300, 1), (0, 3 * TILE_TOKENS + 5), (90, 20), (7, 1)]
    D, K = (24, 1) if latent_dim else (16, 2)
    batch, real = _mixed_batch(
        np.random.default_rng(1), pages=128, M=32, K=K, D=D, latent_dim=latent_dim, contexts=contexts, padding=(100, -1)
    )
    assert batch["q"].shape[0] % TILE_TOKENS and batch["q"].shape[0] - real > TILE_TOKENS
    got, _ = _jit(attend_rank, D, latent_dim)(**batch)
    want, _ = _jit(attend_rank_reference, D, latent_dim)(**batch)
    np.testing.assert_allclose(np.asarray(got)[:real], np.asarray(want)[:real], rtol=2e-5, atol=2e-5)
    assert not np.asarray(got)[real:].any()  # padding attends to nothing


def test_a_latent_cache_is_one_array_whose_first_channels_are_the_values():
    # Multi-head latent attention's cache: every query head reads one vector a token.
    D, latent = 24, 16
    batch, real = _mixed_batch(np.random.default_rng(7), K=1, D=D, latent_dim=latent)
    got, _ = _jit(attend_rank, D, latent)(**batch)
    want, _ = _jit(attend_rank_reference, D, latent)(**batch)
    assert got.shape == (batch["q"].shape[0], 8, latent)
    np.testing.assert_allclose(np.asarray(got)[:real], np.asarray(want)[:real], rtol=2e-5, atol=2e-5)
    # ... and both equal a per-head cache holding those channels as the values.
    (k,), (cache,) = batch["new"], batch["caches"]
    per_head = dict(batch, new=(k, k[..., :latent]), caches=(cache, cache[..., :latent]))
    separate, _ = _jit(attend_rank_reference, D)(**per_head)
    np.testing.assert_allclose(np.asarray(got)[:real], np.asarray(separate)[:real], rtol=2e-5, atol=2e-5)


def test_its_temp_memory_does_not_grow_with_the_block_table():
    def temp(M):
        batch, _ = _mixed_batch(np.random.default_rng(0), page=16, pages=1024, M=M)
        structs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
        compiled = _jit(attend_rank).lower(**structs).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    short, long = temp(16), temp(512)  # 256 vs 8,192 positions a row could hold
    assert long <= short * 1.1, (short, long)


@pytest.mark.parametrize(
    "name, overrides",
    [
        # a small pool, admission not holding pages back: preemption and recompute
        ("attention_dp.yaml", {"kv_cache.num_pages": "12", "runtime.kv_growth_reserve": "0"}),
        ("tp.yaml", {"kv_cache.num_pages": "auto"}),
    ],
)
def test_serving_with_either_attention_gives_the_same_tokens(name, overrides):
    plan = compile(load(ROOT / "strategies" / name, overrides={**SERVING, **overrides}))
    rng = np.random.default_rng(3)
    requests = [
        Request(
            str(i),
            tuple(rng.integers(0, 512, n).tolist()),
            max_tokens=12,
            ignore_eos=True,
            sampling=SamplingParams(temperature=0.0 if i % 2 else 0.8, seed=i),
        )
        for i, n in enumerate([3, 70, 150, 9, 33, 120])
    ]
    fast = Engine(plan).generate(requests)
    exact = Engine(plan, rank_attention=attend_rank_reference).generate(requests)
    assert [o.output_token_ids for o in fast] == [o.output_token_ids for o in exact]
