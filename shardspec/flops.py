"""The analytic FLOPs of one serving step: what the work needs, to hold XLA's count against.

    ideal = 2 × (parameters a token touches) × tokens        (projections, FFN or routed experts)
          + 2 × (lm_head parameters) × sampled rows          (logits only where a token is sampled)
          + 2 × query heads × (qk + v channels) × context × tokens    (QKᵀ and PV)

Attention's channels are head_dim for both (grouped-query attention) or, for
multi-head latent attention as served (absorbed), the latent + rope key for QKᵀ
and the latent for PV (576 and 512 for DeepSeek-V3, against 192 and 128 a head
expanded: absorbing trades attention FLOPs for reading 576 values a token
instead of heads × 320). Its W_UK and W_UV meet each token once, as projections.

A MoE layer touches its router, its shared expert (and the shared expert's
gate), which every token runs through, and the `experts_per_token` experts it
routes a token to, never the others: dense dispatch (every expert, every token)
costs num_experts ÷ experts_per_token times the routed work. The embedding is a
lookup, not a matmul. No jax here.
"""

from __future__ import annotations

from .models.config import DeepSeekConfig, LlamaConfig, MoEConfig


def moe_layers(config: LlamaConfig) -> list[int]:
    """The layers whose FFN is a MoE (none for a dense model)."""
    if not isinstance(config, MoEConfig):
        return []
    return [layer for layer in range(config.num_layers) if layer not in config.dense_layers]


def touched_per_token(config: LlamaConfig, experts: int | None = None) -> int:
    """Matmul parameters one token runs through in the decoder layers, `experts` of a MoE
    layer's routed experts (default: the `experts_per_token` it is routed to) and, with
    any number of them, the layer's shared expert."""
    attention = attention_params(config)
    E = config.hidden_size
    n_moe = len(moe_layers(config))
    total = (attention + 3 * E * config.mlp_size) * (config.num_layers - n_moe)  # SwiGLU
    if n_moe:
        experts = config.experts_per_token if experts is None else experts
        router = E * config.num_experts
        shared = 3 * E * config.shared_mlp_size + (E if config.shared_expert_gate else 0)  # SwiGLU + [E, 1] gate
        per_layer = attention + router + shared + experts * 3 * E * config.expert_mlp_size
        total += per_layer * n_moe
    return total


def attention_params(config: LlamaConfig) -> int:
    """Matmul parameters of one layer's attention projections."""
    E, H = config.hidden_size, config.num_heads
    if isinstance(config, DeepSeekConfig):
        q_lora, latent, rope = config.q_lora_rank, config.kv_lora_rank, config.qk_rope_head_dim
        query = E * q_lora + q_lora * H * config.head_dim if q_lora else E * H * config.head_dim
        # kv_a (latent + rope key), kv_b (W_UK and W_UV), o_proj
        return (
            query
            + E * (latent + rope)
            + latent * H * (config.qk_nope_head_dim + config.v_head_dim)
            + (H * config.v_head_dim * E)
        )
    K, D = config.num_kv_heads, config.head_dim
    return E * (H + 2 * K) * D + H * D * E  # q, k, v projections; o_proj


def attention_channels(config: LlamaConfig) -> tuple[int, int]:
    """(channels a query meets a key over, channels of a value), a head and context position, as served."""
    if isinstance(config, DeepSeekConfig):
        return config.kv_lora_rank + config.qk_rope_head_dim, config.kv_lora_rank
    return config.head_dim, config.head_dim


def step_flops(
    config: LlamaConfig,
    tokens: int,
    sampled_rows: int,
    context: int,
    expert_rows: float | None = None,
    attending: int | None = None,
) -> float:
    """Ideal FLOPs of a step of `tokens` tokens, each attending to `context` positions.

    `expert_rows`: token rows each MoE layer runs through an expert's SwiGLU, if
    not tokens × experts_per_token (the routed work); `attending`: the tokens whose
    attention is counted, if not all of them."""
    attention = 2 * config.num_heads * sum(attention_channels(config)) * context * config.num_layers
    lm_head = config.hidden_size * config.vocab_size
    flops = 2.0 * touched_per_token(config, experts=0 if expert_rows is not None else None) * tokens
    if expert_rows is not None:
        flops += 2.0 * expert_rows * 3 * config.hidden_size * config.expert_mlp_size * len(moe_layers(config))
    return flops + 2.0 * lm_head * sampled_rows + attention * (tokens if attending is None else attending)
