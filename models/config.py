"""Model configurations: plain frozen data, no jax."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int  # embed
    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int  # grouped-query attention: num_heads % num_kv_heads == 0
    head_dim: int
    mlp_size: int  # SwiGLU hidden size
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = False  # lm_head reuses the embedding table
    max_seq_len: int = 2048  # longest prompt + output the model serves
    shape_only: bool = False  # too large to materialise here: explain / validate only
    family: str = "llama"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not a multiple of num_kv_heads {self.num_kv_heads}")
