"""The logical-axis vocabulary of shardspec's models and of its runtime.

Mesh axes never appear in a model; the rules of a plan map logical names onto
them. These are the names with default rules: shardspec's Llama and MoE use
them, and the runtime lays out tokens, KV pages and its named activation
points with them. An outside model may use any names of its own (the
strategy's `rules:` then maps them). Add a name here only when one of
shardspec's models needs it.
"""

BATCH = "batch"  # tokens in attention and KV pages
MLP_BATCH = "mlp_batch"  # tokens inside the FFN / MoE
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
VOCAB = "vocab"
EXPERT = "expert"
EXPERT_MLP = "expert_mlp"
KV_PAGES = "kv_pages"

# Dimensions shardspec's models can zero-pad without changing their outputs
# (policy.indivisible: pad): padded FFN columns give silu(0) * 0 = 0 and meet
# zero rows of down_proj; padded vocab columns are cut off by `logits`.
ZERO_PADDABLE = frozenset({MLP, EXPERT_MLP, VOCAB})

# Named activation constraint points and their logical layout. The model calls
# `constrain(x, name)`; the plan turns each into a PartitionSpec once.
ACTIVATIONS = {
    "attn_in": (BATCH, None, EMBED),  # [B, T, E] tokens entering attention
    "attn_q": (BATCH, None, HEADS, HEAD_DIM),  # [B, T, H, D]
    "attn_kv": (BATCH, None, KV_HEADS, HEAD_DIM),  # [B, T, K', D] after KV-head replication
    "attn_out": (BATCH, None, EMBED),  # [B, T, E] after o_proj
    "mlp_in": (MLP_BATCH, None, EMBED),  # [B, T, E] tokens entering the FFN
    "mlp_hidden": (MLP_BATCH, None, MLP),  # [B, T, F]
    "mlp_out": (MLP_BATCH, None, EMBED),  # [B, T, E]
    "moe_hidden": (MLP_BATCH, None, EXPERT, EXPERT_MLP),  # [B, T, X, F] every expert's hidden, all tokens
    "logits": (MLP_BATCH, None, VOCAB),  # [B, T, V]
}
