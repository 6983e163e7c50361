"""The sampler: greedy, temperature, top-k, top-p; per-request seeds."""

import jax.numpy as jnp
import numpy as np

from shardspec.runtime.sampler import sample


def _sample(logits, temperature=0.0, top_k=0, top_p=1.0, seed=None, index=0):
    """Every row its own seed (0, 1, 2, ...) unless one is given for all."""
    n = logits.shape[0]
    full = lambda v, dt: jnp.full(n, v, dt)  # noqa: E731
    seeds = jnp.arange(n, dtype=jnp.uint32) if seed is None else full(seed, jnp.uint32)
    return np.asarray(
        sample(
            jnp.asarray(logits, jnp.float32),
            full(temperature, jnp.float32),
            full(top_k, jnp.int32),
            full(top_p, jnp.float32),
            seeds,
            full(index, jnp.int32),
        )
    )


LOGITS = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000))


def test_greedy_takes_the_argmax():
    assert _sample(np.array([[0.1, 3.0, 2.9], [5.0, 0.0, 0.0]])).tolist() == [1, 0]


def test_top_k_1_is_greedy_even_when_hot():
    assert set(_sample(LOGITS, temperature=5.0, top_k=1).tolist()) == {0}


def test_top_k_keeps_k_tokens():
    assert set(_sample(LOGITS, temperature=1.0, top_k=2).tolist()) == {0, 1}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    assert set(_sample(LOGITS, temperature=1.0, top_p=0.7).tolist()) == {0, 1}
    assert set(_sample(LOGITS, temperature=1.0, top_p=0.4).tolist()) == {0}


def test_temperature_one_follows_the_distribution():
    freq = np.bincount(_sample(LOGITS, temperature=1.0), minlength=4) / len(LOGITS)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    # The same seed and index in every row: every row draws the same token.
    assert len(set(_sample(LOGITS, temperature=1.0, seed=3).tolist())) == 1


def test_same_seed_and_index_give_the_same_token_whatever_the_batch():
    one = _sample(LOGITS[:1], temperature=1.0, seed=7, index=3)
    many = _sample(LOGITS[:9], temperature=1.0, seed=7, index=3)
    assert set(many.tolist()) == {int(one[0])}
    other = [int(_sample(LOGITS[:1], temperature=1.0, seed=7, index=i)[0]) for i in range(20)]
    assert len(set(other)) > 1  # the output index moves the draw along
