"""How a MoE layer's tokens meet their experts: dense (the reference) or sparse.

Both take one device's share, inside `Layout.per_shard`: its tokens x [T, E],
their routing weights over its experts w [T, X'] (zero where a token was not
routed to the expert, and for padding tokens), and its experts' SwiGLU weights
(gate, up [X', E, F'], down [X', F', E]). Both return [T, E]: this device's
part of the MoE output, summed over the devices of the expert and expert-hidden
shards by `per_shard`.

Dense: every expert computes every token and the weight mask zeroes what was
not chosen (exact: 0 × finite = 0). X'/k times the routed FLOPs, a
[T, X', F'] hidden; simple, so it is the reference.

Sparse (dropless, exact): each token's chosen experts are listed as (token,
expert, weight) assignments, sorted by expert, and each expert's run of
assignments is cut into tiles of `tile` rows. A loop over the experts that
have assignments reads each one's weights once; an inner loop over its tiles
gathers a tile's tokens, multiplies them by that expert only and adds the
weighted result back to their rows. Both trip counts are data, so one compile
serves every routing. Compute is the routed work plus at most tile − 1
padding rows an expert; weights are read once per expert used; temp memory
is one expert's weights, one tile's [tile, F'] hidden and the [T, E] output.
Pure JAX: XLA:CPU lowers `jax.lax.ragged_dot` to a dense dot over every
expert, so it would save nothing here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_TILE = 128  # rows of the largest tile: enough to keep a matmul busy


def dense_experts(x, w, gate, up, down):
    """x [T, E], w [T, X'] -> [T, E]: every expert on every token, masked by w."""
    g = jnp.einsum("te,xef->txf", x, gate)
    u = jnp.einsum("te,xef->txf", x, up)
    h = jax.nn.silu(g) * u * w.astype(x.dtype)[..., None]  # [T, X', F'], 0 where unrouted
    return jnp.einsum("txf,xfe->te", h, down)


def tile_rows(tokens: int, experts_per_token: int, num_experts: int) -> int:
    """Rows of a tile: half an expert's expected share of the step's assignments,
    a power of two in [1, MAX_TILE]. Padding then stays near a quarter of the
    routed rows on balanced routing while the loop runs few iterations."""
    half_share = tokens * experts_per_token // (2 * num_experts)
    return int(min(MAX_TILE, 1 << max(0, half_share.bit_length() - 1)))


def _assignments(w, experts_per_token: int):
    """Routing weights w [T, X'] -> (weights [T, k], experts [T*k], assignments per expert [X']),
    k = the most of this device's experts one token uses; unrouted and padding: expert X', never run."""
    X = w.shape[1]
    top_w, top_x = jax.lax.top_k(w, min(experts_per_token, X))  # [T, k]
    expert = jnp.where(top_w > 0, top_x, X).reshape(-1)
    return top_w, expert, jnp.bincount(expert, length=X + 1)[:X]


def sparse_experts(x, w, gate, up, down, *, experts_per_token: int, tile: int):
    """x [T, E], w [T, X'] -> [T, E]: each token through its routed experts only."""
    T, E = x.shape
    X = w.shape[1]
    top_w, expert, sizes = _assignments(w, experts_per_token)
    k = top_w.shape[1]
    order = jnp.argsort(expert, stable=True)
    token = (jnp.arange(T * k) // k)[order]  # assignments sorted by expert
    weight = top_w.reshape(-1)[order]
    starts = jnp.cumsum(sizes) - sizes  # each expert's first sorted assignment
    busy = jnp.nonzero(sizes, size=X, fill_value=0)[0]  # experts with assignments, first

    def one_expert(i, out):
        e = busy[i]
        g, u, d = gate[e], up[e], down[e]  # read once, shared by the expert's tiles

        def one_tile(j, out):
            row = starts[e] + j * tile + jnp.arange(tile)
            real = row < starts[e] + sizes[e]
            row = jnp.where(real, row, 0)
            rows = token[row]
            xs = x[rows]  # [tile, E]
            h = jax.nn.silu(xs @ g) * (xs @ u)  # [tile, F']
            h = h * jnp.where(real, weight[row], 0.0).astype(h.dtype)[:, None]
            return out.at[rows].add((h @ d).astype(out.dtype))

        return jax.lax.fori_loop(0, (sizes[e] + tile - 1) // tile, one_tile, out)

    out = jax.lax.fori_loop(0, jnp.sum(sizes > 0), one_expert, jnp.zeros((T, E), jnp.float32))
    return out.astype(x.dtype)


def tiles_used(w, *, experts_per_token: int, tile: int):
    """Tiles `sparse_experts` runs for routing weights w [T, X'] (for FLOP counts)."""
    _, _, sizes = _assignments(w, experts_per_token)
    return jnp.sum((sizes + tile - 1) // tile)
