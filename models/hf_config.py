"""A Hugging Face checkpoint's config.json -> a shardspec config.

Supported model types and what each adds to the Llama decoder:

    llama      Llama 2/3 (rope_scaling llama3 or linear)    mistral    Mistral (sliding window)
    qwen2      q/k/v biases                                  qwen3      q/k RMSNorm over head_dim
    mixtral    MoE, top-k weights renormalised               qwen3_moe  MoE + q/k norm, norm_topk_prob
    qwen2_moe  MoE + q/k/v biases, norm_topk_prob, a shared expert gated per token by sigmoid
    deepseek_v2, deepseek_v3   multi-head latent attention (`mla.py`), MoE with shared experts,
               dense first layers; V2 softmax routing, V3 sigmoid + bias, grouped; YaRN rope

The Qwen MoE types keep a dense SwiGLU in `mlp_only_layers` and in layers not
a multiple of `decoder_sparse_step` (`qwen_dense_layers`). For DeepSeek's MoE
FFNs, `deepseek_routing` and `deepseek_dense_layers` read the routing and the
dense layers as transformers does.

Every field read is typed and range-checked first (`hf_config.schema.json`), so a
zero head count, a string size or `hidden_size: 1e9` is a located user error
(`config.json: num_attention_heads: 0 is below the minimum 1`), never a
ZeroDivisionError or a loop over a billion layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shardspec._schema import schema_problems
from shardspec.errors import Problem, ShardspecError, Source, one_of, raise_all
from shardspec.files import MAX_CONFIG_BYTES, read_json_object

from .config import DeepSeekConfig, LlamaConfig, MoEConfig, RopeScaling, Routing

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")
DEEPSEEK = ("deepseek_v2", "deepseek_v3")

# The longest sequence of a config.json that declares no max_position_embeddings.
DEFAULT_MAX_SEQ_LEN = 8192

_SCHEMA = json.loads(Path(__file__).with_name("hf_config.schema.json").read_text(encoding="utf-8"))
_NEEDED = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"]
_NEEDED_MOE = {
    "mixtral": ["num_local_experts", "num_experts_per_tok"],
    "qwen2_moe": ["num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"],
    "qwen3_moe": ["num_experts", "num_experts_per_tok", "moe_intermediate_size"],
    **dict.fromkeys(
        DEEPSEEK,
        ["n_routed_experts", "num_experts_per_tok", "moe_intermediate_size"]
        + ["kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"],
    ),
}
_ROPE_NEEDS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
}
# YaRN's optional settings: config.json and RopeScaling share their names.
_YARN_OPTIONAL = ("beta_fast", "beta_slow", "truncate", "mscale", "mscale_all_dim", "attention_factor")


def config_from_dir(directory: str | os.PathLike) -> LlamaConfig:
    """A shardspec config from a checkpoint directory's config.json (exit 2 on anything unsupported)."""
    path = Path(directory) / "config.json"
    file = str(path)
    raw = _read_config(path)
    model_type = raw["model_type"]
    heads = raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or _head_dim(raw, file)
    fields = dict(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        mlp_size=raw["intermediate_size"],
        rope_theta=float(_rope(raw).get("rope_theta") or 10000.0),
        rms_eps=float(raw.get("rms_norm_eps") or 1e-6),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        max_seq_len=_max_seq_len(raw),
        family=model_type,
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        # Qwen2-MoE always had q/k/v biases; transformers 5 writes qkv_bias (true) to say so.
        qkv_bias=model_type == "qwen2" or (model_type == "qwen2_moe" and raw.get("qkv_bias") is not False),
        rope_scaling=_rope_scaling(raw, file),
        checkpoint=os.fspath(directory),
        eos_token_ids=_eos_token_ids(Path(directory), raw),
    )
    try:
        return _family_config(raw, fields, file)
    except ValueError as e:  # the config's own consistency checks (heads vs KV heads, top-k vs experts)
        raise ShardspecError(str(e), file=file) from None


def _read_config(path: Path) -> dict:
    """config.json, its fields typed and range-checked, every needed one present."""
    file = str(path)
    raw = _read_json(path, required=True)
    model_type = raw.get("model_type")
    if model_type in ("qwen2_moe", "qwen3_moe") and "num_experts" not in raw:  # transformers 5 may write Mixtral's name
        raw = {**raw, "num_experts": raw.get("num_local_experts")}
    if model_type not in SUPPORTED:
        raise ShardspecError(
            f"model_type {model_type!r} is not supported",
            file=file,
            path="model_type",
            hint=f"supported: {one_of(SUPPORTED)}",
        )
    raise_all(schema_problems(raw, Source(file), _SCHEMA))
    need = _NEEDED + _NEEDED_MOE.get(model_type, [])
    raise_all(
        [
            Problem(f"missing {key!r}", file=file, path=key, hint=f"a {model_type} config.json has it")
            for key in need
            if raw.get(key) is None
        ]
    )
    raise_all(_unsupported(raw, file))
    return raw


def _family_config(raw: dict, fields: dict, file: str) -> LlamaConfig:
    model_type = raw["model_type"]
    if model_type in DEEPSEEK:
        return _deepseek(raw, fields, file)
    if model_type == "mixtral":
        return MoEConfig(
            **fields,
            num_experts=raw["num_local_experts"],
            experts_per_token=raw["num_experts_per_tok"],
            expert_mlp_size=raw["intermediate_size"],
            routing=Routing(norm_topk_prob=True),
        )
    if model_type in ("qwen2_moe", "qwen3_moe"):
        return _qwen_moe(raw, fields)
    return LlamaConfig(**fields)


def _qwen_moe(raw: dict, fields: dict) -> MoEConfig:
    """Qwen2-MoE and Qwen3-MoE: softmax top k, `norm_topk_prob` per config; Qwen2-MoE adds a gated shared expert."""
    shared = raw["shared_expert_intermediate_size"] if raw["model_type"] == "qwen2_moe" else 0
    return MoEConfig(
        **fields,
        num_experts=raw["num_experts"],
        experts_per_token=raw["num_experts_per_tok"],
        expert_mlp_size=raw["moe_intermediate_size"],
        routing=Routing(norm_topk_prob=bool(raw.get("norm_topk_prob", False))),
        shared_mlp_size=shared,
        shared_expert_gate=bool(shared),
        dense_layers=qwen_dense_layers(
            raw["num_hidden_layers"], raw.get("decoder_sparse_step") or 1, raw.get("mlp_only_layers") or ()
        ),
    )


def _deepseek(raw: dict, fields: dict, file: str) -> DeepSeekConfig:
    """DeepSeek-V2/V3: latent attention, routed + shared experts, dense first layers."""
    nope, rope = raw["qk_nope_head_dim"], raw["qk_rope_head_dim"]
    return DeepSeekConfig(
        **{**fields, "head_dim": nope + rope, "num_kv_heads": raw["num_attention_heads"]},
        num_experts=raw["n_routed_experts"],
        experts_per_token=raw["num_experts_per_tok"],
        expert_mlp_size=raw["moe_intermediate_size"],
        routing=deepseek_routing(raw, file),
        shared_mlp_size=(raw.get("n_shared_experts") or 0) * raw["moe_intermediate_size"],
        dense_layers=deepseek_dense_layers(
            raw["num_hidden_layers"], raw.get("first_k_dense_replace") or 0, raw.get("moe_layer_freq") or 1
        ),
        q_lora_rank=raw.get("q_lora_rank"),
        kv_lora_rank=raw["kv_lora_rank"],
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope,
        v_head_dim=raw["v_head_dim"],
        # V2's rope is complex multiplication of adjacent pairs: interleaved, always.
        rope_interleave=raw["model_type"] == "deepseek_v2" or raw.get("rope_interleave") is not False,
        mtp_layers=raw.get("num_nextn_predict_layers") or 0,
    )


def qwen_dense_layers(num_layers: int, decoder_sparse_step: int, mlp_only_layers) -> tuple[int, ...]:
    """Qwen2/3-MoE's dense layers: those listed in mlp_only_layers, and those whose
    (layer + 1) is not a multiple of decoder_sparse_step (step 2 of 4 layers: (0, 2))."""
    only = set(mlp_only_layers)
    return tuple(i for i in range(num_layers) if i in only or (i + 1) % decoder_sparse_step)


def deepseek_dense_layers(num_layers: int, first_k_dense_replace: int, moe_layer_freq: int = 1) -> tuple[int, ...]:
    """DeepSeek's dense layers: the first `first_k_dense_replace`, then those not a multiple of
    moe_layer_freq (6 layers, 1, 2: (0, 1, 3, 5)). transformers reads first_k_dense_replace
    only; DeepSeek's own code also moe_layer_freq, which is 1 in every published checkpoint."""
    return tuple(i for i in range(num_layers) if i < first_k_dense_replace or i % moe_layer_freq)


# DeepSeek's routing per family, and transformers' defaults for what config.json leaves out.
_DEEPSEEK_METHODS = {"deepseek_v2": ("greedy", "group_limited_greedy"), "deepseek_v3": ("noaux_tc",)}
_DEEPSEEK_SCORING = {"deepseek_v2": "softmax", "deepseek_v3": "sigmoid"}
_DEEPSEEK_DEFAULTS = {
    "deepseek_v2": {"routed_scaling_factor": 1.0},
    "deepseek_v3": {"routed_scaling_factor": 2.5, "n_group": 8, "topk_group": 4, "norm_topk_prob": True},
}


def deepseek_routing(raw: dict, file: str) -> Routing:
    """DeepSeek-V2 / V3 routing from a config.json already schema-checked, as transformers computes it.

    V2: softmax, greedy or group_limited_greedy (groups scored by their best
    expert), × routed_scaling_factor; transformers never renormalises V2 (it
    ignores norm_topk_prob, false in every published V2). V3: sigmoid, noaux_tc
    (groups scored by their best two of scores + e_score_correction_bias),
    renormalised (+1e-20) if norm_topk_prob, × routed_scaling_factor. Both keep
    the router in float32. Anything else is a located error (exit 2).
    """
    family = raw["model_type"]
    fields = {**_DEEPSEEK_DEFAULTS[family], **{k: v for k, v in raw.items() if v is not None}}
    method = fields.get("topk_method") or _DEEPSEEK_METHODS[family][0]
    raise_all(_deepseek_routing_problems(family, fields, method, file))
    grouped, v3 = method != "greedy", family == "deepseek_v3"
    return Routing(
        scoring=_DEEPSEEK_SCORING[family],
        topk_method=method,
        n_group=fields["n_group"] if grouped else 1,
        topk_group=fields["topk_group"] if grouped else 1,
        norm_topk_prob=v3 and bool(fields["norm_topk_prob"]),
        norm_epsilon=1e-20 if v3 else 0.0,
        routed_scaling_factor=float(fields["routed_scaling_factor"]),
        float32_router=True,
    )


def _deepseek_routing_problems(family: str, fields: dict, method: str, file: str) -> list[Problem]:
    methods, scoring = _DEEPSEEK_METHODS[family], _DEEPSEEK_SCORING[family]
    problems = []
    if method not in methods:
        hint = f"{family} routes by {one_of(methods)}"
        problems.append(Problem(f"topk_method {method!r} is not supported", file=file, path="topk_method", hint=hint))
    if fields.get("scoring_func", scoring) != scoring:
        message = f"scoring_func {fields['scoring_func']!r} is not supported"
        problems.append(Problem(message, file=file, path="scoring_func", hint=f"{family} scores by {scoring}"))
    missing = [key for key in ("n_routed_experts", "num_experts_per_tok") if key not in fields]
    if method != "greedy":
        missing += [key for key in ("n_group", "topk_group") if key not in fields]
    problems += [Problem(f"missing {key!r}", file=file, path=key, hint=f"{method} routing needs it") for key in missing]
    if problems or method == "greedy":
        return problems
    return _group_problems(fields, method, file)


def _group_problems(fields: dict, method: str, file: str) -> list[Problem]:
    """n_group must split the experts evenly, topk_group fit in it, and its groups hold the top k."""
    experts, k, groups, kept = (
        fields[key] for key in ("n_routed_experts", "num_experts_per_tok", "n_group", "topk_group")
    )
    if experts % groups:
        divisors = [d for d in range(1, experts + 1) if experts % d == 0]
        return [
            Problem(
                f"n_group {groups} does not divide n_routed_experts {experts}",
                file=file,
                path="n_group",
                hint=f"use {one_of(divisors)}",
            )
        ]
    per_group = experts // groups
    if kept > groups:
        return [Problem(f"topk_group {kept} is more than n_group {groups}", file=file, path="topk_group")]
    if method == "noaux_tc" and per_group < 2:
        message = f"noaux_tc scores a group by its best 2 experts; n_group {groups} leaves {per_group} a group"
        return [Problem(message, file=file, path="n_group", hint=f"at most {experts // 2} groups")]
    if k > kept * per_group:
        message = f"num_experts_per_tok {k} is more than the {kept * per_group} experts of topk_group {kept} groups"
        return [Problem(message, file=file, path="num_experts_per_tok", hint=f"at most {kept * per_group}")]
    return []


def _head_dim(raw: dict, file: str) -> int:
    """hidden_size / num_attention_heads, which must divide, when head_dim is not given."""
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    if hidden % heads:
        raise ShardspecError(
            f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
            file=file,
            path="hidden_size",
            hint="give head_dim",
        )
    return hidden // heads


def _read_json(path: Path, required: bool = False) -> dict:
    """A JSON object file of the checkpoint; {} for an optional one that is not there."""
    if not required and not os.path.lexists(path):
        return {}
    return read_json_object(path, MAX_CONFIG_BYTES, hint="a Hugging Face checkpoint directory needs config.json")


def _unsupported(raw: dict, file: str) -> list[Problem]:
    """Switches of these families that shardspec's models do not implement."""
    problems = []
    if raw.get("hidden_act", "silu") != "silu":
        problems.append(
            Problem(
                f"hidden_act {raw['hidden_act']!r} is not supported",
                file=file,
                path="hidden_act",
                hint="only silu (SwiGLU)",
            )
        )
    for key in ("attention_bias", "mlp_bias"):  # Llama / Qwen3 options that add an o_proj or MLP bias
        if raw.get(key) and raw.get("model_type") != "qwen2":
            problems.append(Problem(f"{key}: true is not supported", file=file, path=key))
    if (raw.get("partial_rotary_factor") or 1.0) != 1.0:
        problems.append(Problem("partial_rotary_factor is not supported", file=file, path="partial_rotary_factor"))
    if raw.get("quantization_config"):
        method = raw["quantization_config"].get("quant_method", "?")
        problems.append(
            Problem(
                f"a quantized checkpoint ({method}) is not supported",
                file=file,
                path="quantization_config",
                hint="use a bfloat16, float16 or float32 checkpoint (a bf16 conversion of fp8 weights)",
            )
        )
    return problems


def _rope(raw: dict) -> dict:
    """RoPE settings: transformers 5 writes `rope_parameters`, older files `rope_theta` + `rope_scaling`."""
    params = dict(raw.get("rope_parameters") or {})
    if "rope_theta" in raw:
        params["rope_theta"] = raw["rope_theta"]
    if raw.get("rope_scaling"):
        params.update(raw["rope_scaling"])
    return params


def _rope_scaling(raw: dict, file: str) -> RopeScaling | None:
    params = _rope(raw)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return None
    if kind not in _ROPE_NEEDS:
        raise ShardspecError(
            f"rope scaling {kind!r} is not supported",
            file=file,
            path="rope_scaling",
            hint="supported: default, linear, llama3 or yarn",
        )
    missing = [key for key in _ROPE_NEEDS[kind] if params.get(key) is None]
    if missing:
        raise ShardspecError(
            f"{kind} rope scaling needs {one_of(missing)}", file=file, path="rope_scaling", hint="see the model card"
        )
    if kind == "linear":
        return RopeScaling("linear", float(params["factor"]))
    if kind == "yarn":
        optional = {key: params[key] for key in _YARN_OPTIONAL if params.get(key) is not None}
        return RopeScaling(
            "yarn",
            float(params["factor"]),
            original_max_position=int(params["original_max_position_embeddings"]),
            **optional,
        )
    return RopeScaling(
        "llama3",
        float(params["factor"]),
        float(params["low_freq_factor"]),
        float(params["high_freq_factor"]),
        int(params["original_max_position_embeddings"]),
    )


def _max_seq_len(raw: dict) -> int:
    """The longest sequence served: the model's limit (how much of it a server holds is the
    plan's `RuntimeSizes`) and, with a sliding window, kept inside the window so full
    causal attention is exact."""
    limit = raw.get("max_position_embeddings") or DEFAULT_MAX_SEQ_LEN
    windowed = raw.get("model_type") in ("mistral", "mixtral") or raw.get("use_sliding_window")
    if windowed and raw.get("sliding_window"):
        limit = min(limit, raw["sliding_window"])
    return limit


def _eos_token_ids(directory: Path, raw: dict) -> tuple[int, ...]:
    """generation_config.json's eos_token_id (what generate() stops on), else config.json's."""
    path = directory / "generation_config.json"
    generation = _read_json(path)
    raise_all(schema_problems({"eos_token_id": generation.get("eos_token_id")}, Source(str(path)), _SCHEMA))
    eos = generation.get("eos_token_id")
    if eos is None:
        eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos if isinstance(eos, list) else [eos])
