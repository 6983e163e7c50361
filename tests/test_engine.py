"""The engine end to end: every strategy gives the single-device tokens."""

import numpy as np
import pytest

from shardspec import compile, load
from shardspec.runtime.engine import Engine
from shardspec.runtime.request import Request, SamplingParams

from conftest import ROOT, STRATEGY_FILES, strategy_ids
from helpers import ONE_DEVICE, SERVING

LENGTHS = [1, 2, 5, 9, 17, 31, 48, 64, 100, 130]


def _requests(seed=0, temperature=0.0):
    rng = np.random.default_rng(seed)
    return [
        Request(
            str(i),
            tuple(rng.integers(0, 512, n).tolist()),
            max_tokens=int(rng.integers(1, 24)),
            sampling=SamplingParams(temperature=temperature, seed=i),
            ignore_eos=True,
        )
        for i, n in enumerate(LENGTHS)
    ]


def _engine(path, **overrides):
    return Engine(compile(load(path, overrides={**SERVING, **overrides})))


@pytest.fixture(scope="module")
def single_device_tokens():
    """Greedy tokens of a strategy's model on one device, computed once per model."""
    cache = {}

    def tokens(path):
        model = load(path).model
        if model not in cache:
            engine = _engine(ROOT / "strategies" / "tp.yaml", **ONE_DEVICE, model=model)
            cache[model] = [o.output_token_ids for o in engine.generate(_requests())]
        return cache[model]

    return tokens


@pytest.mark.parametrize("async_scheduling", ["true", "false"])
@pytest.mark.parametrize("path", STRATEGY_FILES, ids=strategy_ids())
def test_greedy_tokens_equal_the_single_device_run(path, async_scheduling, single_device_tokens):
    engine = _engine(path, **{"runtime.async_scheduling": async_scheduling})
    outputs = engine.generate(_requests())
    assert [o.id for o in outputs] == [str(i) for i in range(len(LENGTHS))]
    assert [o.output_token_ids for o in outputs] == single_device_tokens(path)
    assert all(
        o.finish_reason == "length" and len(o.output_token_ids) == r.max_tokens for o, r in zip(outputs, _requests())
    )


@pytest.mark.parametrize("name, routing", [("tp.yaml", "balanced"), ("attention_dp.yaml", "round_robin")])
def test_a_small_kv_cache_forces_preemption_and_changes_no_token(name, routing, single_device_tokens):
    # 10 pages of 16 tokens a rank: the longest request alone needs 10. No growth reserve:
    # admission fills the pages, and decodes preempt.
    overrides = {"kv_cache.num_pages": "10", "runtime.routing": routing, "runtime.kv_growth_reserve": "0"}
    engine = _engine(ROOT / "strategies" / name, **overrides)
    outputs = engine.generate(_requests())
    assert engine.metrics.preemptions > 0
    assert [o.output_token_ids for o in outputs] == single_device_tokens(ROOT / "strategies" / name)


def test_sampling_with_seeds_is_the_same_under_every_strategy():
    runs = [[o.output_token_ids for o in _engine(p).generate(_requests(temperature=0.8))] for p in STRATEGY_FILES[:2]]
    assert runs[0] == runs[1]


def test_warmup_compiles_every_bucket_and_serving_compiles_nothing():
    engine = _engine(ROOT / "strategies" / "dp_tp.yaml")
    engine.warmup()
    compiled = engine.metrics.compiles
    assert compiled == len(engine.sizes.token_buckets)
    # runtime.step_costs: auto: the warm-up timed every bucket; balanced steps use this table (its one owner).
    assert set(engine.metrics.step_costs_ms) == set(engine.sizes.token_buckets)
    assert all(ms > 0 for ms in engine.metrics.step_costs_ms.values())
    engine.generate(_requests())
    assert engine.metrics.compiles == compiled


def test_a_second_engine_on_an_equal_plan_traces_and_compiles_nothing(jax_programs):
    path = ROOT / "strategies" / "dp_tp.yaml"
    first = _engine(path)
    first.warmup()
    want = [o.output_token_ids for o in first.generate(_requests())]
    # Another compile() of the strategy, synchronous and round-robin: what only the host reads differs.
    with jax_programs() as programs:
        second = _engine(path, **{"runtime.async_scheduling": "false", "runtime.routing": "round_robin"})
        second.warmup()
        got = [o.output_token_ids for o in second.generate(_requests())]
    assert programs == [] and got == want
    assert second.metrics.compiles == first.metrics.compiles == len(second.sizes.token_buckets)


def test_step_costs_given_in_the_strategy_are_interpolated_to_every_bucket_and_not_measured():
    costs = "[{tokens: 8, ms: 2}, {tokens: 64, ms: 9}]"
    engine = _engine(ROOT / "strategies" / "dp_tp.yaml", **{"runtime.step_costs": costs})
    assert engine.metrics.step_costs_ms == {8: 2.0, 16: 3.0, 32: 5.0, 64: 9.0}
    engine.warmup()
    assert engine.metrics.step_costs_ms == {8: 2.0, 16: 3.0, 32: 5.0, 64: 9.0}
    assert engine.metrics.to_json()["step_costs"] == "strategy"


def test_abort_finishes_a_request_once_with_its_tokens_so_far():
    engine = _engine(ROOT / "strategies" / "dp.yaml")
    engine.add_request(Request("long", tuple(range(1, 40)), max_tokens=30, ignore_eos=True))
    engine.add_request(prompt_token_ids=[5, 6, 7], max_tokens=3, ignore_eos=True, id="short")
    finished = []
    for _ in range(4):
        finished += engine.step()
    assert engine.abort("long")
    while engine.has_unfinished():
        finished += engine.step()
    by_id = {o.id: o for o in finished}
    assert sorted(by_id) == ["long", "short"] and len(finished) == 2
    assert by_id["long"].finish_reason == "abort" and len(by_id["long"].output_token_ids) < 30
    assert by_id["short"].finish_reason == "length"


def test_stop_tokens_end_a_request():
    engine = _engine(ROOT / "strategies" / "dp.yaml")
    first = engine.generate([{"prompt_token_ids": [1, 2, 3], "max_tokens": 8, "ignore_eos": True}])[0]
    stop = first.output_token_ids[2]
    again = engine.generate([{"id": "s", "prompt_token_ids": [1, 2, 3], "max_tokens": 8, "stop_token_ids": [stop]}])[0]
    assert again.finish_reason == "stop"
    assert again.output_token_ids == first.output_token_ids[: first.output_token_ids.index(stop) + 1]


def test_metrics_are_reported():
    engine = _engine(ROOT / "strategies" / "attention_dp.yaml")
    engine.generate(_requests())
    m = engine.metrics.to_json()
    assert m["generated_tokens"] == sum(r.max_tokens for r in _requests())
    assert 0 < m["padding_efficiency"] <= 1 and m["steps"] > 0 and len(m["per_rank_tokens"]) == 4
    assert m["real_tokens"] == sum(len(r.prompt_token_ids) + r.max_tokens - 1 for r in _requests())
