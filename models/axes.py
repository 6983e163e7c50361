"""The logical-axis vocabulary: the only names models use for their dimensions.

Mesh axes never appear in a model; the rules of a plan map these names onto
them. Add a name only when a model needs it.
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

LOGICAL_AXES = (
    BATCH, MLP_BATCH, EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB, EXPERT, EXPERT_MLP, KV_PAGES,
)

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
