"""The analytic FLOPs of one serving step: what the work needs, to hold XLA's count against.

    ideal = 2 × (parameters a token touches) × tokens        (projections, FFN or routed experts)
          + 2 × (lm_head parameters) × sampled rows          (logits only where a token is sampled)
          + 4 × query heads × head_dim × context × tokens    (QKᵀ and PV)

A MoE layer touches its router and the `experts_per_token` experts it routes a
token to, never the others: dense dispatch (every expert, every token) costs
num_experts ÷ experts_per_token times the routed work. The embedding is a
lookup, not a matmul. No jax here.
"""

from __future__ import annotations

from .models.config import LlamaConfig, MoEConfig


def touched_per_token(config: LlamaConfig) -> int:
    """Matmul parameters one token runs through in the decoder layers."""
    E, H, K, D = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    attention = E * (H + 2 * K) * D + H * D * E  # q, k, v projections; o_proj
    dense_ffn = 3 * E * config.mlp_size  # SwiGLU: gate, up, down
    total = 0
    for layer in range(config.num_layers):
        if isinstance(config, MoEConfig) and layer not in config.dense_layers:
            ffn = E * config.num_experts + config.experts_per_token * 3 * E * config.expert_mlp_size
        else:
            ffn = dense_ffn
        total += attention + ffn
    return total


def step_flops(config: LlamaConfig, tokens: int, sampled_rows: int, context: int) -> float:
    """Ideal FLOPs of a step of `tokens` tokens, each attending to `context` positions."""
    attention = 4 * config.num_heads * config.head_dim * context * config.num_layers
    lm_head = config.hidden_size * config.vocab_size
    return 2.0 * touched_per_token(config) * tokens + 2.0 * lm_head * sampled_rows + attention * tokens
