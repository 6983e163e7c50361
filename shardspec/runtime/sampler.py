"""Token sampling: greedy, temperature, top-k, top-p, with a per-request seed.

Each row draws from its own key, `fold_in(key(seed), output_index)`, so a
request's tokens depend only on its logits, its seed and how many tokens it has
generated: never on the batch around it or on the strategy.

The random path (a sort of the vocabulary, a draw from each row's key) runs
only when some row samples at temperature > 0, and its top-k / top-p cut only
when some row asks for one (`lax.cond`): an all-greedy step is one argmax. The
step calls `sample` inside a shard_map over the DP ranks, so each rank decides
for its own rows and no collective is added.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _filter_row(logits, temperature, top_k, top_p):
    """One row [V] -> logits scaled by temperature with top-k / top-p cut to -inf."""
    V = logits.shape[0]
    scaled = logits / jnp.maximum(temperature, 1e-6)
    ordered = jnp.sort(scaled)[::-1]  # descending
    k = jnp.where((top_k <= 0) | (top_k > V), V, top_k)
    kth = ordered[k - 1]
    probs = jax.nn.softmax(ordered)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    before = jnp.cumsum(probs) - probs
    cutoff = ordered[jnp.maximum(jnp.sum(before < top_p) - 1, 0)]
    threshold = jnp.maximum(kth, cutoff)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def _draw_row(logits, temperature, top_k, top_p, seed, output_index, cut: bool):
    key = jax.random.fold_in(jax.random.key(seed), output_index)
    scaled = _filter_row(logits, temperature, top_k, top_p) if cut else logits / jnp.maximum(temperature, 1e-6)
    return jax.random.categorical(key, scaled).astype(jnp.int32)


def sample(logits, temperature, top_k, top_p, seeds, output_index):
    """logits [N, V] float32; per-row parameters [N] -> tokens [N] int32."""
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    V = logits.shape[-1]
    random = temperature > 0
    cuts = random & (((top_k > 0) & (top_k < V)) | (top_p < 1))

    def draw(cut: bool):
        rows = jax.vmap(lambda *row: _draw_row(*row, cut=cut))
        return lambda: rows(logits, temperature, top_k, top_p, seeds, output_index)

    drawn = jax.lax.cond(jnp.any(cuts), draw(True), draw(False))  # the cut only where asked for
    return jax.lax.cond(jnp.any(random), lambda: jnp.where(random, drawn, greedy), lambda: greedy)


MAX_LOGPROBS = 20  # the most top alternatives a request may ask for (OpenAI's limit)


def logprobs(logits, tokens, wanted):
    """Log-probabilities of the logits the sampler used (the model's, before temperature or
    a top-k / top-p cut): each row's sampled token's [N] and its MAX_LOGPROBS most likely
    tokens' (values [N, K], ids [N, K]). Computed only when some row asks (`wanted` >= 0)."""
    N = logits.shape[0]

    def compute():
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        top, ids = jax.lax.top_k(lp, min(MAX_LOGPROBS, lp.shape[-1]))
        return jnp.take_along_axis(lp, tokens[:, None], axis=1)[:, 0], top, ids.astype(jnp.int32)

    def skip():
        k = min(MAX_LOGPROBS, logits.shape[-1])
        return jnp.zeros(N, jnp.float32), jnp.zeros((N, k), jnp.float32), jnp.zeros((N, k), jnp.int32)

    return jax.lax.cond(jnp.any(wanted >= 0), compute, skip)


def sample_with_logprobs(logits, temperature, top_k, top_p, seeds, output_index, wanted):
    """`sample`, then `logprobs` of what it drew: (tokens, token logprob, top values, top ids)."""
    tokens = sample(logits, temperature, top_k, top_p, seeds, output_index)
    return (tokens, *logprobs(logits, tokens, wanted))


def adjust(logits, ids, counts, bias, presence, frequency, repetition, pending):
    """Rows' logits [N, V] changed as `adjustments.py` defines: `ids` [N, W] the tokens each
    row's rules touch (-1 padding), `counts` their output counts (0: prompt only, -1: a bias
    alone), `bias` added first; `pending` [N] each row's latest output, not in `counts`
    (-1: none). Dense [N, V] work, in the steps that have adjustments only."""
    N, V = logits.shape
    rows = jnp.arange(N)[:, None]
    ids = jnp.where(ids < 0, V, ids)  # out of bounds: dropped by the scatters
    pending = jnp.where(pending < 0, V, pending)
    count = jnp.zeros((N, V), jnp.float32).at[rows, ids].add(jnp.maximum(counts, 0), mode="drop")
    count = count.at[rows[:, 0], pending].add(1.0, mode="drop")
    seen = jnp.zeros((N, V), bool).at[rows, ids].set(counts >= 0, mode="drop")
    seen = seen.at[rows[:, 0], pending].set(True, mode="drop")
    logits = logits + jnp.zeros((N, V), jnp.float32).at[rows, ids].add(bias, mode="drop")
    penalty = jnp.where(seen, repetition[:, None], 1.0)
    logits = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return logits - frequency[:, None] * count - presence[:, None] * (count > 0)


def apply_mask(logits, mask):
    """Rows' logits [N, V] with every token outside its row's mask -inf: `mask` [N, ceil(V/32)]
    int32, token t allowed where bit t % 32 of word t // 32 is set (structured.py)."""
    token = jnp.arange(logits.shape[-1])
    allowed = (mask[:, token // 32] >> (token % 32)) & 1
    return jnp.where(allowed != 0, logits, -jnp.inf)


def sample_changed(logits, temperature, top_k, top_p, seeds, output_index, wanted, adjustments, mask, latest):
    """`sample_with_logprobs` of one rank's rows after their grammar `mask` (or None) and
    `adjust` (None, or its ids, counts, bias [N, W], presence, frequency, repetition [N]); the
    logprobs stay the model's. `latest`: the rank's input tokens, their previous-step rows and
    their request rows [S], which give each row's latest output where the host has not seen it
    (async scheduling); None without adjustments."""
    raw = logits.astype(jnp.float32)
    changed = raw if mask is None else apply_mask(raw, mask)
    if adjustments is not None:
        tokens, prev_rows, token_rows = latest
        pending = jnp.full(raw.shape[0], -1, jnp.int32).at[token_rows].max(jnp.where(prev_rows >= 0, tokens, -1))
        changed = adjust(changed, *adjustments, pending)
    drawn = sample(changed, temperature, top_k, top_p, seeds, output_index)
    return (drawn, *logprobs(raw, drawn, wanted))
