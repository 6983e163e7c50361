"""Named model presets (`shardspec models`)."""

from __future__ import annotations

from .config import LlamaConfig, MoEConfig

PRESETS: dict[str, LlamaConfig] = {
    # The embedded default: big enough to shard 8 ways, small enough for any test.
    "llama3-tiny": LlamaConfig(
        vocab_size=512, hidden_size=128, num_layers=2, num_heads=8, num_kv_heads=2,
        head_dim=16, mlp_size=256, rope_theta=10000.0, rms_eps=1e-5, max_seq_len=512,
    ),
    # Large enough that benchmarks measure compute, still fast on two CPU cores.
    "llama3-small": LlamaConfig(
        vocab_size=4096, hidden_size=512, num_layers=4, num_heads=16, num_kv_heads=4,
        head_dim=32, mlp_size=1536, rope_theta=10000.0, rms_eps=1e-5, max_seq_len=1024,
    ),
    # Real shapes, never materialised: for explain / validate.
    "llama3-8b": LlamaConfig(
        vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, mlp_size=14336, rope_theta=500000.0, rms_eps=1e-5, max_seq_len=8192,
        shape_only=True,
    ),
    "llama3-70b": LlamaConfig(
        vocab_size=128256, hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8,
        head_dim=128, mlp_size=28672, rope_theta=500000.0, rms_eps=1e-5, max_seq_len=8192,
        shape_only=True,
    ),
    # MoE: 8 experts (top 2) so every expert-parallel width up to 8 divides them;
    # 2 KV heads, the case attention DP is for.
    "mixtral-tiny": MoEConfig(
        vocab_size=512, hidden_size=128, num_layers=2, num_heads=8, num_kv_heads=2,
        head_dim=16, mlp_size=256, rope_theta=1e6, rms_eps=1e-5, max_seq_len=512,
        num_experts=8, experts_per_token=2, expert_mlp_size=64, norm_topk_prob=True, family="mixtral",
    ),
    "qwen3-moe-tiny": MoEConfig(
        vocab_size=512, hidden_size=128, num_layers=2, num_heads=8, num_kv_heads=2,
        head_dim=16, mlp_size=256, rope_theta=1e6, rms_eps=1e-6, max_seq_len=512, qk_norm=True,
        num_experts=8, experts_per_token=2, expert_mlp_size=64, norm_topk_prob=True, family="qwen3_moe",
    ),
    "mixtral-8x7b": MoEConfig(
        vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, mlp_size=14336, rope_theta=1e6, rms_eps=1e-5, max_seq_len=32768,
        num_experts=8, experts_per_token=2, expert_mlp_size=14336, norm_topk_prob=True, family="mixtral",
        shape_only=True,
    ),
    "qwen3-30b-a3b": MoEConfig(
        vocab_size=151936, hidden_size=2048, num_layers=48, num_heads=32, num_kv_heads=4,
        head_dim=128, mlp_size=6144, rope_theta=1e6, rms_eps=1e-6, max_seq_len=40960, qk_norm=True,
        num_experts=128, experts_per_token=8, expert_mlp_size=768, norm_topk_prob=True, family="qwen3_moe",
        shape_only=True,
    ),
}
