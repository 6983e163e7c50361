"""What a model provides to be served by `Engine`: the serving protocol.

shardspec's runtime knows no model class. It serves any Flax NNX module that

1. says its decoder geometry, `decoder_geometry() -> DecoderGeometry`: how many
   layers hold a KV cache, how many query and KV heads of what size, the vocabulary and
   the longest sequence it serves (the plan sizes the paged KV cache, the
   block tables and the request limits from it);
2. runs its layers over a step's tokens with the attention it is handed,
   `hidden_states(tokens, positions, layout, attend, caches) -> (hidden, caches)`:
   tokens and positions are [B, T] int32 (the runtime passes [N, 1]: one token a
   row, N = every DP rank's tokens, rank by rank); layer i calls
   `attend(q, k, v, positions, caches[i])` and keeps the cache it returns;
   q is [B, T, H, D] and k, v are [B, T, K, D], handed over through
   `layout.attention_inputs(q, k, v)`, which repeats KV heads the way the plan
   stores them and pins the attention layout. A model whose cache is one latent
   vector a token (multi-head latent attention, `DecoderGeometry.latent_dim`)
   passes k as [B, T, 1, D] and v as None: the values are the first
   `latent_dim` channels of the keys, and attend returns [B, T, H, latent_dim];
3. turns hidden states into logits, `logits(hidden, layout) -> [B, T, V]`, V =
   `vocab_size` exactly (a vocabulary padded for sharding is cut back here).

`layout.constrain(x, "attn_in")` pins an activation at one of the runtime's named
points (`models/axes.py: ACTIVATIONS`); `layout.constrain(x, axes=(...))` pins it
by the model's own logical names; `layout.per_shard(fn, in_axes, out_axes,
sum_over)` runs `fn` on each device's blocks and reduces its partial result
(`shardspec.per_shard`). All are no-ops in the default `Layout()`, so the same
forward code runs unsharded.

The runtime marks padding tokens with position -1 (they fill a step's token
bucket; their outputs are dropped). A model may skip them: shardspec's MoE
routes them to no expert. shardspec's Llama and MoE implement this
protocol and nothing else of theirs is known to the plan, step or engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

# attend(q [B,T,H,D], k [B,T,K',D], v [B,T,K',D], positions [B,T], cache) -> (out [B,T,H,D], cache)
Attend = Callable[..., tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class DecoderGeometry:
    """The sizes of a decoder that the serving runtime needs, and nothing else.

    Two kinds of KV cache: per-head keys and values (`latent_dim` None: a K and a V
    array a layer, num_kv_heads × head_dim each), or one latent vector a token
    (multi-head latent attention: one array a layer, num_kv_heads 1, head_dim = the
    latent and the shared rope key; the values are its first `latent_dim` channels).
    """

    num_layers: int  # layers with a KV cache
    num_heads: int  # query heads of one layer
    num_kv_heads: int  # KV heads of one layer (grouped-query attention: divides num_heads)
    head_dim: int  # a query's and a key's channels
    vocab_size: int  # logits per token; token ids must be below it
    max_seq_len: int  # longest prompt + output the model serves
    softmax_scale: float | None = None  # attention logits × this; None: head_dim ** -0.5
    latent_dim: int | None = None  # a latent cache: the channels of a key that are also its value

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5 if self.softmax_scale is None else self.softmax_scale

    @property
    def kv_arrays(self) -> int:
        """Cache arrays a layer: K and V (2), or the latent (1)."""
        return 2 if self.latent_dim is None else 1


def _no_constraint(x, name: str | None = None, *, axes: Sequence[str | None] | None = None):
    return x


def _whole(fn, in_axes=(), out_axes=(), sum_over=()):
    return fn  # one device holds every block


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a forward pass is laid out; the plan's (`plan.layout`) or, by default, one device."""

    constrain: Callable[..., Any] = _no_constraint  # (x, name) or (x, axes=(...)) -> x pinned
    kv_repeat: int = 1  # each KV head repeated so every `model` shard holds the heads its queries read
    # per_shard(fn, in_axes, out_axes, sum_over) -> fn run on each device's blocks (`shardspec.per_shard`)
    per_shard: Callable[..., Callable] = _whole
    moe_dispatch: str = "sparse"  # runtime.moe_dispatch: how a MoE layer reaches its experts

    def attention_inputs(self, q, k, v):
        """q [B, T, H, D], k and v [B, T, K, D] (v None: a latent cache) -> as `attend`
        takes them: k and v with K × kv_repeat heads (slot s holds KV head s // kv_repeat),
        all pinned."""
        import jax.numpy as jnp

        def slots(x):
            x = jnp.repeat(x, self.kv_repeat, axis=2) if self.kv_repeat > 1 else x
            return self.constrain(x, "attn_kv")

        return self.constrain(q, "attn_q"), slots(k), None if v is None else slots(v)


UNSHARDED = Layout()  # the default layout: one device, every constraint a no-op


def causal_attention(q, k, v, positions, cache=None, *, scale: float | None = None, latent_dim: int | None = None):
    """The reference `Attend`: causal attention over whole sequences, no KV cache.

    q [B, T, H, D]; k [B, T, K', D] and v [B, T, K', Dv] with H a multiple of K'
    (query head h reads KV slot h // (H / K')), or v None and the values k's first
    `latent_dim` channels (a latent cache). Logits × `scale` (None: D ** -0.5). The
    runtime pages attention instead; `check` and unsharded forwards use this.
    """
    import jax
    import jax.numpy as jnp

    B, T, H, D = q.shape
    Kr = k.shape[2]
    v = k[..., :latent_dim] if v is None else v
    q = q.reshape(B, T, Kr, H // Kr, D)  # [B, T, K', G, D]
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * (D**-0.5 if scale is None else scale)
    causal = positions[:, None, None, :, None] >= positions[:, None, None, None, :]  # [B,1,1,T,S]
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, H, v.shape[-1]), cache


def dense_attention(geometry: DecoderGeometry) -> Attend:
    """`causal_attention` with a decoder's softmax scale and cache kind."""
    import functools

    return functools.partial(causal_attention, scale=geometry.scale, latent_dim=geometry.latent_dim)


def dense_logits(model: ServableModel, tokens, layout: Layout = UNSHARDED):
    """A servable model's dense forward through the protocol: tokens [B, T] -> logits [B, T, V]."""
    import jax.numpy as jnp

    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    hidden, _ = model.hidden_states(tokens, positions, layout, dense_attention(model.decoder_geometry()))
    return model.logits(hidden, layout)


@runtime_checkable
class ServableModel(Protocol):
    """An NNX module `Engine` can serve (see the module docstring for the contract)."""

    def decoder_geometry(self) -> DecoderGeometry: ...

    def hidden_states(
        self, tokens, positions, layout: Layout, attend: Attend, caches: Sequence[Any] | None = None
    ) -> tuple[Any, list]: ...

    def logits(self, hidden, layout: Layout) -> Any: ...
