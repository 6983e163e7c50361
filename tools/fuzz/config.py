"""The run's fixed settings: targets and their share of the cases, the classes, the strategies the cases run."""

TARGETS = ("strategy", "set", "requests", "checkpoint", "cli", "engine")
WEIGHTS = {"strategy": 4, "set": 2, "requests": 2, "checkpoint": 2, "cli": 2, "engine": 3}  # share of the cases
CLASSES = (
    "ok",
    "user_error",
    "user_error_no_location",
    "rejected_valid",
    "internal",
    "hang",
    "memory",
    "lost_request",
    "leaked_pages",
)
FAILING = ("internal", "hang", "memory", "lost_request", "leaked_pages", "user_error_no_location", "rejected_valid")
RUN_STRATEGY = "strategies/attention_dp.yaml"
FAST = ["--set", "runtime.max_num_batched_tokens=8", "--set", "runtime.max_num_seqs=4"]  # one small bucket set
VOCAB = 512  # llama3-tiny's and the hf fixtures'
SMALL_ENGINE = {
    "runtime.max_num_batched_tokens": "16",
    "runtime.max_num_seqs": "4",
    "kv_cache.page_size": "4",
    "kv_cache.num_pages": "12",  # 48 tokens a rank: preemption comes soon
    "kv_cache.dtype": "float32",
}
ENGINE_CONFIGS = {  # name -> (strategy, model or None, extra overrides, stepping mode)
    "attn_dp_async": (RUN_STRATEGY, None, {"runtime.async_scheduling": "true"}, "step"),
    "dp_sync_deltas": ("strategies/dp.yaml", None, {"runtime.async_scheduling": "false"}, "deltas"),
    "hf_llama": ("strategies/tp.yaml", "tests/fixtures/hf/llama", {}, "step"),
    "hf_llama_deltas": ("strategies/tp.yaml", "tests/fixtures/hf/llama", {}, "deltas"),
}
ENGINE_STEP_CAP = 600
