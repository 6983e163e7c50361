"""Model configurations: plain frozen data, no jax."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """A Hugging Face `rope_scaling` kind that shardspec implements (others exit 2)."""

    kind: str  # "linear" (positions / factor) | "llama3" (Llama 3.1) | "yarn" (DeepSeek, long-context Qwen)
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position: int = 8192  # llama3, yarn: the pre-training context
    beta_fast: float = 32.0  # yarn: frequencies turning more often over that context are kept
    beta_slow: float = 1.0  # yarn: ... less often, interpolated (÷ factor)
    truncate: bool = True  # yarn: the ramp's ends rounded to whole channels
    mscale: float | None = None  # yarn: with mscale_all_dim, the rope channels' scale
    mscale_all_dim: float | None = None  # yarn: DeepSeek also scales the softmax by its mscale²
    attention_factor: float | None = None  # yarn: the rope channels' scale, if given outright


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


SCORINGS = ("softmax", "sigmoid")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")


@dataclasses.dataclass(frozen=True)
class Routing:
    """How a MoE router turns its logits into each token's expert weights, as transformers computes it.

        Mixtral, Qwen2/3-MoE      softmax, greedy, norm_topk_prob (Mixtral always; Qwen per config)
        DeepSeek-V2               softmax, greedy or group_limited_greedy, × routed_scaling_factor
        DeepSeek-V3 (noaux_tc)    sigmoid, groups by their top-2 biased scores, norm (+1e-20), × factor

    Scores are float32. Selection: the best `topk_group` of `n_group` equal groups
    of experts (group_limited_greedy: a group scores its best expert; noaux_tc: the
    sum of its best two, the scores plus a learnt per-expert bias), then the top k
    experts inside them. The weights are the chosen experts' scores (never the
    bias), renormalised to sum 1 if `norm_topk_prob`, then × `routed_scaling_factor`.
    """

    scoring: str = "softmax"  # "softmax" over all experts | "sigmoid" of each expert's logit (DeepSeek-V3)
    topk_method: str = "greedy"  # Hugging Face's name: "greedy" | "group_limited_greedy" | "noaux_tc"
    n_group: int = 1  # experts split into this many equal groups (group_limited_greedy, noaux_tc)
    topk_group: int = 1  # groups a token may pick its experts from
    norm_topk_prob: bool = True  # chosen weights renormalised to sum 1 (Mixtral always; Qwen, DeepSeek per config)
    norm_epsilon: float = 0.0  # added to that sum: DeepSeek-V3 adds 1e-20, Mixtral and Qwen nothing
    routed_scaling_factor: float = 1.0  # multiplies the weights after renormalising (DeepSeek)
    float32_router: bool = False  # router weight stored and applied in float32 (DeepSeek keeps gate.weight fp32)

    def __post_init__(self):
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring {self.scoring!r} not one of {', '.join(SCORINGS)}")
        if self.topk_method not in TOPK_METHODS:
            raise ValueError(f"topk_method {self.topk_method!r} not one of {', '.join(TOPK_METHODS)}")
        if not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"topk_group {self.topk_group} not in 1..n_group {self.n_group}")

    @property
    def score_bias(self) -> bool:
        """noaux_tc selects by scores + a per-expert bias (`e_score_correction_bias`), a router parameter."""
        return self.topk_method == "noaux_tc"

    @property
    def grouped(self) -> bool:
        return self.topk_method != "greedy"


@dataclasses.dataclass(frozen=True)
class MoEConfig(LlamaConfig):
    """A Llama decoder whose FFNs are sparse mixtures of SwiGLU experts (Mixtral, Qwen2/3-MoE, DeepSeek's FFNs)."""

    num_experts: int = 8
    experts_per_token: int = 2  # top-k experts each token is routed to
    expert_mlp_size: int = 0  # one expert's SwiGLU hidden size
    routing: Routing = Routing()  # how the router picks and weighs a token's experts
    shared_mlp_size: int = 0  # a SwiGLU every token runs through beside its experts (0 = none)
    shared_expert_gate: bool = False  # Qwen2-MoE: the shared output × sigmoid(x @ gate [E, 1]) per token
    dense_layers: tuple[int, ...] = ()  # layers with a dense SwiGLU of mlp_size (mlp_only_layers, first_k_dense)
    family: str = "mixtral"

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} not in 1..{self.num_experts}")
        if self.routing.grouped:
            self._check_groups()
        if self.shared_expert_gate and not self.shared_mlp_size:
            raise ValueError("shared_expert_gate needs a shared expert (shared_mlp_size > 0)")

    def _check_groups(self):
        groups, kept = self.routing.n_group, self.routing.topk_group
        if self.num_experts % groups:
            raise ValueError(f"n_group {groups} does not divide num_experts {self.num_experts}")
        per_group = self.num_experts // groups
        if self.routing.score_bias and per_group < 2:
            raise ValueError(f"noaux_tc scores a group by its best 2 experts: {per_group} a group")
        if self.experts_per_token > kept * per_group:
            raise ValueError(
                f"experts_per_token {self.experts_per_token} exceeds the {kept * per_group} experts of "
                f"topk_group {kept} groups of {per_group}"
            )


@dataclasses.dataclass(frozen=True)
class DeepSeekConfig(MoEConfig):
    """DeepSeek-V2/V3: multi-head latent attention (`mla.py`) and MoE FFNs with shared experts.

    `num_heads` query heads of qk_nope_head_dim + qk_rope_head_dim channels (`head_dim`,
    which `num_kv_heads` = num_heads repeats: the expanded form's keys); the cache holds
    kv_lora_rank + qk_rope_head_dim values a token and layer.
    """

    q_lora_rank: int | None = None  # None: a full-rank q_proj (DeepSeek-V2-Lite)
    kv_lora_rank: int = 512  # the latent's channels
    qk_nope_head_dim: int = 128  # a head's key channels without position
    qk_rope_head_dim: int = 64  # the rope key channels every head shares
    v_head_dim: int = 128
    rope_interleave: bool = True  # rope pairs adjacent channels (DeepSeek's checkpoints)
    mtp_layers: int = 0  # multi-token-prediction layers the checkpoint holds past num_layers (never loaded)
    family: str = "deepseek_v3"

    def __post_init__(self):
        super().__post_init__()
        if self.head_dim != self.qk_nope_head_dim + self.qk_rope_head_dim:
            raise ValueError(f"head_dim {self.head_dim} is not qk_nope_head_dim + qk_rope_head_dim")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim {self.qk_rope_head_dim} is odd: rope rotates channel pairs")
