"""A step that fails never wedges the engine: its requests finish once as "error",
their pages come back, and every other request gives the tokens of a clean run."""

import numpy as np
import pytest

from shardspec import compile, load
from shardspec.runtime.engine import Engine
from shardspec.runtime.request import Request
from shardspec.runtime.step import shared_step

from conftest import ROOT

# One rank of 4 sequences, 32 tokens a step: the first requests run while the others
# wait, and prompts longer than 32 tokens take several (chunked) steps.
SMALL = {
    "runtime.max_num_batched_tokens": "32",
    "runtime.max_num_seqs": "4",
    "kv_cache.dtype": "float32",
    "parallelism.tensor": "2",
    "devices": "2",
}
LENGTHS = [3, 40, 7, 12, 50, 5, 9, 20]


def _requests():
    rng = np.random.default_rng(1)
    return [
        Request(str(i), tuple(rng.integers(0, 512, n).tolist()), max_tokens=6, ignore_eos=True)
        for i, n in enumerate(LENGTHS)
    ]


def _engine(async_scheduling: bool, fail_at=(), consume: bool = False) -> Engine:
    """An engine whose step raises at the calls in `fail_at` (see _FailingStep)."""
    overrides = {**SMALL, "runtime.async_scheduling": str(async_scheduling).lower()}
    plan = compile(load(ROOT / "strategies" / "tp.yaml", overrides=overrides))
    return Engine(plan, step=_FailingStep(shared_step(plan, plan.model.tree.graphdef), fail_at, consume))


class _FailingStep:
    """The engine's Step, raising at the calls in `fail_at` (0-based) — before the device
    runs (`consume=False`) or after it took the donated KV cache (`consume=True`)."""

    def __init__(self, step, fail_at, consume: bool):
        self._step, self.fail_at, self.consume, self.calls = step, set(fail_at), consume, 0

    def __call__(self, params, caches, batch, samples):
        call, self.calls = self.calls, self.calls + 1
        if call not in self.fail_at:
            return self._step(params, caches, batch, samples)
        if self.consume:
            self._step(params, caches, batch, samples)  # the cache buffers are donated: gone now
        raise RuntimeError("injected device failure")

    def __getattr__(self, name):
        return getattr(self._step, name)


@pytest.fixture(scope="module")
def clean_tokens():
    return {o.id: o.output_token_ids for o in _engine(False).generate(_requests())}


def _drain(engine: Engine) -> list:
    outputs = []
    for _ in range(500):
        if not engine.has_unfinished():
            return outputs
        outputs += engine.step()
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("consume", [False, True], ids=["before-device", "cache-consumed"])
@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_failing_step_fails_only_its_requests(clean_tokens, async_scheduling, consume):
    engine = _engine(async_scheduling, fail_at={2}, consume=consume)
    for r in _requests():
        engine.add_request(r)
    outputs = _drain(engine)

    assert sorted(o.id for o in outputs) == sorted(r.id for r in _requests())  # each exactly once
    failed = [o for o in outputs if o.finish_reason == "error"]
    assert failed and len(failed) < len(outputs)
    assert all("injected device failure" in o.error for o in failed)
    for out in outputs:
        if out.finish_reason != "error":  # recomputed after a lost cache, or never touched by the failure
            assert out.finish_reason == "length" and out.output_token_ids == clean_tokens[out.id]
        else:  # what it had generated before the failure is kept
            assert out.output_token_ids == clean_tokens[out.id][: len(out.output_token_ids)]
    assert not any(engine.stats().pages_used)  # every page back
    assert engine.metrics.failed_steps == 1
    # ... and the engine serves on: a request after the failure gives the clean tokens.
    again = engine.generate([_requests()[3]])
    assert again[0].output_token_ids == clean_tokens["3"]


def test_every_step_failing_still_finishes_every_request_once():
    engine = _engine(True, fail_at=range(1000), consume=True)
    outputs = engine.generate(_requests())
    assert [o.id for o in outputs] == [r.id for r in _requests()]
    assert {o.finish_reason for o in outputs} == {"error"}
    assert not any(engine.stats().pages_used)
    assert not engine.has_unfinished()
