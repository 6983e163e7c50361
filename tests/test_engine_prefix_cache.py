"""Prefix caching end to end: every strategy serves a shared-prefix workload with the
cache on exactly as one device serves it with the cache off, greedy and seeded,
with a pool small enough to force preemption."""

import numpy as np
import pytest

from shardspec import compile, load
from shardspec.runtime.engine import Engine
from shardspec.runtime.request import Request, SamplingParams

from conftest import ROOT, STRATEGY_FILES, strategy_ids
from helpers import ONE_DEVICE, SERVING

# The shared serving profile: float32 pages keep the comparison exact, and its 10 pages of
# 16 tokens a rank preempt once cache_first piles a shared prefix's requests onto one rank
# (with no growth reserve: admission fills the pages).
SMALL = {**SERVING, "runtime.routing": "cache_first", "runtime.kv_growth_reserve": "0"}


def shared_prefix_requests() -> list[Request]:
    """A system prompt with 5 questions, one prompt's 4 seeded samples (GRPO), and a
    conversation resent with its next turn."""
    rng = np.random.default_rng(7)

    def tokens(n):
        return tuple(rng.integers(1, 512, n).tolist())

    system, group, turn1 = tokens(48), tokens(40), tokens(30)
    out = [Request(f"system.{i}", system + tokens(int(rng.integers(5, 20))), max_tokens=12) for i in range(5)]
    out += [
        Request(f"grpo.{i}", group, max_tokens=12, sampling=SamplingParams(temperature=0.8, seed=i), ignore_eos=True)
        for i in range(4)
    ]
    out += [Request("turn.1", turn1, max_tokens=8), Request("turn.2", turn1 + tokens(20) + tokens(10), max_tokens=8)]
    return out


def serve(path, **overrides):
    engine = Engine(compile(load(path, overrides={**SMALL, **overrides})))
    outputs = engine.generate(shared_prefix_requests())
    return [(o.id, o.output_token_ids, o.finish_reason) for o in outputs], engine.metrics


@pytest.fixture(scope="module")
def uncached_one_device():
    cache = {}

    def outputs(path):
        model = load(path).model
        if model not in cache:
            one_device = {**ONE_DEVICE, "model": model, "kv_cache.prefix_caching": "false"}
            cache[model], _ = serve(ROOT / "strategies" / "tp.yaml", **one_device)
        return cache[model]

    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("path", STRATEGY_FILES, ids=strategy_ids())
def test_prefix_caching_changes_no_token_under_any_strategy(path, uncached_one_device):
    got, metrics = serve(path)
    assert metrics.cached_prompt_tokens > 0 and metrics.preemptions > 0
    assert got == uncached_one_device(path)


def test_prefix_caching_off_under_data_parallelism_gives_the_same_tokens_and_caches_nothing(uncached_one_device):
    path = ROOT / "strategies" / "attention_dp.yaml"
    got, metrics = serve(path, **{"kv_cache.prefix_caching": "false"})
    assert metrics.cached_prompt_tokens == 0 and metrics.prefix_hit_rate == 0
    assert got == uncached_one_device(path)
