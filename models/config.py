"""Model configurations: plain frozen data, no jax."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """A Hugging Face `rope_scaling` kind that shardspec implements (others exit 2)."""

    kind: str  # "linear" (positions / factor) | "llama3" (Llama 3.1: low frequencies / factor)
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position: int = 8192  # llama3 only: the pre-training context


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
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    qkv_bias: bool = False  # Qwen2: biases on the q, k and v projections
    rope_scaling: RopeScaling | None = None  # None = plain RoPE
    checkpoint: str | None = None  # Hugging Face directory the weights come from; None = random init
    eos_token_ids: tuple[int, ...] = ()  # from the checkpoint's generation_config.json / config.json

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not a multiple of num_kv_heads {self.num_kv_heads}")


@dataclasses.dataclass(frozen=True)
class MoEConfig(LlamaConfig):
    """A Llama decoder whose FFNs are sparse mixtures of SwiGLU experts (Mixtral, Qwen3-MoE)."""

    num_experts: int = 8
    experts_per_token: int = 2  # top-k experts each token is routed to
    expert_mlp_size: int = 0  # one expert's SwiGLU hidden size
    norm_topk_prob: bool = True  # top-k weights renormalised to sum 1 (Mixtral always; Qwen3-MoE per config)
    dense_layers: tuple[int, ...] = ()  # layers with a dense SwiGLU of mlp_size (Qwen3-MoE mlp_only_layers)
    family: str = "mixtral"

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} not in 1..{self.num_experts}")
