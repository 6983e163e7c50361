"""A GPT-2-style decoder in Flax NNX that knows nothing of shardspec's models.

It names its own dimensions (`n_vocab`, `n_pos`, `hidden`, `n_heads`,
`head_size`, `ffn`); `gpt2.yaml` maps them onto the mesh. To be served by
`shardspec.Engine` it implements the serving protocol of `shardspec.protocol`:
`decoder_geometry()`, `hidden_states(...)` with the attention it is handed, and
`logits(...)`. Everything else is ordinary GPT-2: learned positions, pre-norm
blocks with biases, GELU, tied embeddings.

    python examples/gpt2_nnx.py     # compile, explain, apply, serve under gpt2.yaml

The test suite runs this model under tensor, model-wise data and attention data
parallelism (tests/test_examples.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from shardspec.protocol import UNSHARDED, DecoderGeometry, Layout


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab: int = 384
    max_len: int = 256  # learned positions: the longest sequence served
    hidden: int = 64
    heads: int = 4  # multi-head attention: every head has its own K and V
    layers: int = 2
    ffn: int = 256
    eps: float = 1e-5


def _param(rngs: nnx.Rngs, shape, axes, std: float) -> nnx.Param:
    return nnx.Param(nnx.initializers.normal(std)(rngs.params(), shape), out_sharding=axes)


def _zeros(shape, axes) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape), out_sharding=axes)


class LayerNorm(nnx.Module):
    def __init__(self, cfg: GPT2Config):
        self.scale = nnx.Param(jnp.ones((cfg.hidden,)), out_sharding=("hidden",))
        self.bias = _zeros((cfg.hidden,), ("hidden",))
        self.eps = cfg.eps

    def __call__(self, x):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class SelfAttention(nnx.Module):
    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs):
        E, H = cfg.hidden, cfg.heads
        D = E // H
        self.query = _param(rngs, (E, H, D), ("hidden", "n_heads", "head_size"), E**-0.5)
        self.key = _param(rngs, (E, H, D), ("hidden", "n_heads", "head_size"), E**-0.5)
        self.value = _param(rngs, (E, H, D), ("hidden", "n_heads", "head_size"), E**-0.5)
        self.query_bias = _zeros((H, D), ("n_heads", "head_size"))
        self.key_bias = _zeros((H, D), ("n_heads", "head_size"))
        self.value_bias = _zeros((H, D), ("n_heads", "head_size"))
        self.proj = _param(rngs, (H, D, E), ("n_heads", "head_size", "hidden"), E**-0.5)
        self.proj_bias = _zeros((E,), ("hidden",))

    def __call__(self, x, positions, layout: Layout, attend, cache):
        """x [B, T, E] -> ([B, T, E], the cache `attend` returns)."""
        q = jnp.einsum("bte,ehd->bthd", x, self.query[...]) + self.query_bias[...]
        k = jnp.einsum("bte,ehd->bthd", x, self.key[...]) + self.key_bias[...]
        v = jnp.einsum("bte,ehd->bthd", x, self.value[...]) + self.value_bias[...]
        out, cache = attend(*layout.attention_inputs(q, k, v), positions, cache)  # [B, T, H, D]
        return jnp.einsum("bthd,hde->bte", out, self.proj[...]) + self.proj_bias[...], cache


class MLP(nnx.Module):
    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs):
        self.fc = _param(rngs, (cfg.hidden, cfg.ffn), ("hidden", "ffn"), cfg.hidden**-0.5)
        self.fc_bias = _zeros((cfg.ffn,), ("ffn",))
        self.proj = _param(rngs, (cfg.ffn, cfg.hidden), ("ffn", "hidden"), cfg.ffn**-0.5)
        self.proj_bias = _zeros((cfg.hidden,), ("hidden",))

    def __call__(self, x, layout: Layout):
        # Tokens inside the FFN follow the runtime's `mlp_batch` layout; the hidden is split over `ffn`.
        x = layout.constrain(x, axes=("mlp_batch", None, "hidden"))
        h = jax.nn.gelu(x @ self.fc[...] + self.fc_bias[...])
        h = layout.constrain(h, axes=("mlp_batch", None, "ffn"))
        return h @ self.proj[...] + self.proj_bias[...]


class Block(nnx.Module):
    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(cfg)
        self.attn = SelfAttention(cfg, rngs)
        self.ln_2 = LayerNorm(cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, layout: Layout, attend, cache):
        h, cache = self.attn(self.ln_1(x), positions, layout, attend, cache)
        x = x + h
        return x + self.mlp(self.ln_2(x), layout), cache


def dense_attention(q, k, v, positions, cache=None):
    """Causal attention over each whole sequence, no cache: q, k, v [B, T, H, D]."""
    scores = jnp.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    causal = positions[:, None, :, None] >= positions[:, None, None, :]
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", probs, v), cache


class GPT2(nnx.Module):
    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs):
        self.cfg = cfg
        self.wte = _param(rngs, (cfg.vocab, cfg.hidden), ("n_vocab", "hidden"), 0.1)
        self.wpe = _param(rngs, (cfg.max_len, cfg.hidden), ("n_pos", "hidden"), 0.1)
        self.h = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.ln_f = LayerNorm(cfg)

    # -- the serving protocol (shardspec.protocol.ServableModel) ---------------------------

    def decoder_geometry(self) -> DecoderGeometry:
        c = self.cfg
        return DecoderGeometry(
            num_layers=c.layers,
            num_heads=c.heads,
            num_kv_heads=c.heads,
            head_dim=c.hidden // c.heads,
            vocab_size=c.vocab,
            max_seq_len=c.max_len,
        )

    def hidden_states(self, tokens, positions, layout: Layout, attend=dense_attention, caches=None):
        """tokens, positions [B, T] -> (hidden [B, T, E], the caches each layer's `attend` returned)."""
        x = jnp.take(self.wte[...], tokens, axis=0) + jnp.take(self.wpe[...], positions, axis=0)
        caches = [None] * len(self.h) if caches is None else list(caches)
        for i, block in enumerate(self.h):
            x = layout.constrain(x, axes=("batch", None, "hidden"))
            x, caches[i] = block(x, positions, layout, attend, caches[i])
        return x, caches

    def logits(self, hidden, layout: Layout):
        """hidden [B, T, E] -> [B, T, n_vocab] through the tied embedding."""
        x = layout.constrain(self.ln_f(hidden), axes=("mlp_batch", None, "hidden"))
        return layout.constrain(x @ self.wte[...].T, axes=("mlp_batch", None, "n_vocab"))

    def __call__(self, tokens, layout: Layout = UNSHARDED):
        """Dense forward over whole sequences: tokens [B, T] -> logits [B, T, V]."""
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        hidden, _ = self.hidden_states(tokens, positions, layout)
        return self.logits(hidden, layout)


def build(cfg: GPT2Config = GPT2Config(), seed: int = 0) -> GPT2:
    """A concrete model. Eager sharding is off: its axes are metadata for shardspec's plan."""
    with nnx.use_eager_sharding(False):
        return GPT2(cfg, nnx.Rngs(seed))


@jax.jit
def _next_token(model: GPT2, tokens, last):
    """Greedy next token after position `last` of tokens [1, max_len] (later positions are
    padding, which causal attention never lets earlier ones see)."""
    return model(tokens)[0, last].argmax()


def greedy(model: GPT2, prompt: list[int], max_tokens: int) -> list[int]:
    """The model's own unsharded greedy loop: no cache, the whole sequence every step, one compile."""
    tokens = jnp.zeros((1, model.cfg.max_len), jnp.int32).at[0, : len(prompt)].set(jnp.asarray(prompt))
    out = []
    for n in range(len(prompt), len(prompt) + max_tokens):
        out.append(int(_next_token(model, tokens, n - 1)))
        tokens = tokens.at[0, n].set(out[-1])
    return out


if __name__ == "__main__":
    from pathlib import Path

    import shardspec
    from shardspec.mesh import simulate_cpu_devices

    strategy = shardspec.load(Path(__file__).with_name("gpt2.yaml"))
    simulate_cpu_devices(strategy.device_count)
    model = build()
    plan = shardspec.compile(strategy, model)
    print(shardspec.explain(plan))
    engine = shardspec.Engine(plan, model)
    prompt = [1, 2, 3, 4, 5]
    served = engine.generate([{"prompt_token_ids": prompt, "max_tokens": 8, "ignore_eos": True}])
    print("served: ", served[0].output_token_ids)
    print("own loop:", greedy(model, prompt, 8))
