"""The jitted step: paged attention over rank-local pages equals the dense model."""

import numpy as np
import pytest
from flax import nnx

from shardspec import apply, compile, load
from shardspec.runtime.packer import pack
from shardspec.runtime.request import SamplingParams
from shardspec.runtime.schedule import FROM_PREVIOUS_STEP, ScheduledChunk, StepSchedule
from shardspec.runtime.step import Step, device_batch, local_rows

from conftest import STRATEGY_FILES, strategy_ids
from helpers import SERVING, dense_forward


def _run(step, params, caches, plan, chunks, samples, prev_rows=None):
    packed = pack(StepSchedule.from_chunks(chunks, 0), plan.runtime, prev_rows=prev_rows)
    batch = device_batch(packed)
    sampled, caches = step(params, caches, batch, samples)
    sampled = sampled.tokens  # the logprobs are tested with the engine
    return sampled, caches, packed


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=strategy_ids())
def test_chunked_prefill_then_decode_matches_the_dense_model(path):
    plan = compile(load(path, overrides=SERVING))
    model = apply(plan)
    graphdef, params = nnx.split(model)
    step = Step(plan, graphdef)  # its own: `traces` counts this test's compiles
    caches = step.new_kv_cache()
    last = plan.dp_ranks - 1
    a = np.arange(3, 23, dtype=np.int32)  # 20 tokens on the last rank, in two chunks
    b = np.arange(40, 45, dtype=np.int32)  # 5 tokens on rank 0
    greedy = SamplingParams()
    chunks = [
        ScheduledChunk(1, 0, b, 0, np.array([3], np.int32), True, greedy, 0),
        ScheduledChunk(0, last, a[:12], 0, np.array([0], np.int32), False, greedy, 0),
    ]
    if last == 0:
        chunks = chunks[::-1]
    sampled, caches, packed = _run(step, params, caches, plan, chunks, step.initial_samples())
    b_next = int(np.asarray(sampled)[step.output_rows(packed)][list(packed.sampled_seq_ids).index(1)])
    # Second step: the rest of A's prompt, and B's decode whose token the host has not read.
    chunks = [
        ScheduledChunk(1, 0, np.array([FROM_PREVIOUS_STEP], np.int32), 5, np.array([3], np.int32), True, greedy, 1),
        ScheduledChunk(0, last, a[12:], 12, np.array([0, 1], np.int32), True, greedy, 0),
    ]
    if last == 0:
        chunks = chunks[::-1]
    sampled, caches, packed2 = _run(step, params, caches, plan, chunks, sampled, local_rows(packed))
    got = dict(zip(packed2.sampled_seq_ids.tolist(), np.asarray(sampled)[step.output_rows(packed2)].tolist()))

    dense_a = dense_forward(model, a[None])[0, -1]
    dense_b = dense_forward(model, np.append(b, b_next)[None])[0]
    assert b_next == int(dense_b[-2].argmax())
    assert got == {0: int(dense_a.argmax()), 1: int(dense_b[-1].argmax())}
    assert step.traces == len({packed.token_stride, packed2.token_stride})  # one compile per bucket
