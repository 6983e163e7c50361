"""A Flax Linen model sharded by shardspec: compile its variables, apply, run its own jit.

Linen declares logical axes with `nn.with_logical_partitioning` (and plain
`nn.Partitioned` boxes from `nn.with_partitioning`, whose names shardspec also
reads as logical names); `linen_mlp.yaml` maps them. The LayerNorm's parameters
carry no names: the plan replicates them and says so.

    python examples/linen_mlp.py
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class ResidualMLP(nn.Module):
    """Token embedding, two residual GELU blocks, an output head: [B, T] ids -> [B, T, classes]."""

    vocab: int = 256
    hidden: int = 64
    ffn: int = 256
    classes: int = 32
    blocks: int = 2

    @nn.compact
    def __call__(self, tokens):
        logical = nn.with_logical_partitioning
        x = nn.Embed(self.vocab, self.hidden, embedding_init=logical(nn.initializers.normal(1.0), ("words", "hidden")))(
            tokens
        )
        for _ in range(self.blocks):
            h = nn.LayerNorm()(x)
            h = nn.Dense(
                self.ffn,
                kernel_init=logical(nn.initializers.lecun_normal(), ("hidden", "ffn")),
                bias_init=logical(nn.initializers.zeros, ("ffn",)),
            )(h)
            h = nn.Dense(
                self.hidden,
                kernel_init=logical(nn.initializers.lecun_normal(), ("ffn", "hidden")),
                bias_init=logical(nn.initializers.zeros, ("hidden",)),
            )(nn.gelu(h))
            x = x + h
        head = self.param(
            "head",
            nn.with_partitioning(nn.initializers.lecun_normal(), ("hidden", "classes")),
            (self.hidden, self.classes),
        )
        return x @ head


def init(model: ResidualMLP, seed: int = 0):
    """Concrete variables (boxed, as Linen makes them)."""
    return model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))


def abstract(model: ResidualMLP):
    """Shapes only: what compile() needs."""
    return jax.eval_shape(lambda: init(model))


if __name__ == "__main__":
    from pathlib import Path

    import numpy as np

    import shardspec
    from shardspec.mesh import simulate_cpu_devices

    strategy = shardspec.load(Path(__file__).with_name("linen_mlp.yaml"))
    simulate_cpu_devices(strategy.device_count)
    model = ResidualMLP()
    plan = shardspec.compile(strategy, abstract(model))
    print(shardspec.explain(plan))
    variables = init(model)
    placed = shardspec.apply(plan, variables)
    tokens = jnp.arange(32, dtype=jnp.int32).reshape(4, 8)
    sharded = jax.jit(model.apply)(placed, tokens)
    print("max |sharded - unsharded| =", float(np.abs(sharded - model.apply(variables, tokens)).max()))
