"""Named model presets (`shardspec models`)."""

from __future__ import annotations

from .config import LlamaConfig

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
}
