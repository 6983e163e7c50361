"""The input packer: exact arrays for hand-made steps, and properties of random ones."""

import dataclasses
import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from shardspec.runtime.packer import PackedStep, pack
from shardspec.runtime.request import SamplingParams
from shardspec.runtime.schedule import FROM_PREVIOUS_STEP, ScheduledChunk, StepSchedule
from shardspec.sizes import RuntimeSizes

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("packer_naive", ROOT / "benchmarks" / "packer_naive.py")
packer_naive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(packer_naive)

PER_TOKEN = ("token_ids", "prev_rows", "positions", "slot_mapping", "token_rows")
PER_REQUEST = (
    "block_tables",
    "seq_lens",
    "query_starts",
    "query_lens",
    "logits_indices",
    "temperature",
    "top_k",
    "top_p",
    "seeds",
    "output_index",
    "logprobs",
)


def sizes(dp=2, page_size=4, max_num_seqs=4, pages_per_rank=8, max_pages_per_seq=4):
    return RuntimeSizes(
        dp_ranks=dp,
        page_size=page_size,
        pages_per_rank=pages_per_rank,
        max_model_len=max_pages_per_seq * page_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=16,
        smallest_bucket=4,  # buckets 4, 8, 16
    )


def chunk(seq_id, rank, tokens, start, pages, sample=True, output_index=0, logprobs=-1, **sampling):
    return ScheduledChunk(
        seq_id=seq_id,
        rank=rank,
        token_ids=np.array(tokens, np.int32),
        start_pos=start,
        block_table=np.array(pages, np.int32),
        sample=sample,
        sampling=SamplingParams(**sampling),
        output_index=output_index,
        logprobs=logprobs,
    )


def schedule(*chunks):
    return StepSchedule.from_chunks(chunks, step=0)


def assert_packed(packed: PackedStep, **expected):
    """Every array field of `packed` equals `expected` in content and dtype (the extras of a step
    that asks for none, unless given)."""
    expected = {"extras": {}, "prompt_rows": None} | expected
    fields = [f.name for f in dataclasses.fields(PackedStep)]
    assert sorted(expected) == sorted(fields)
    for name in fields:
        got, want = getattr(packed, name), expected[name]
        if isinstance(got, np.ndarray):
            assert got.dtype == want.dtype, name
            assert_array_equal(got, want, err_msg=name)
        else:
            assert got == want, name


def i32(*values):
    return np.array(values, np.int32)


def f32(*values):
    return np.array(values, np.float32)


# A runs 2 tokens after 5 cached on rank 0 (positions 5, 6 -> page 1 of [3, 1]);
# B runs 3 after 6 cached on rank 1 (positions 6, 7 -> page 5, 8 -> page 6).
A = chunk(0, 0, [11, 12], start=5, pages=[3, 1], output_index=3, temperature=0.5, top_k=5, top_p=0.9, seed=7)
B = chunk(1, 1, [21, 22, 23], start=6, pages=[2, 5, 6], logprobs=2)


def test_design_example():
    # busiest rank has 3 tokens -> S = 4; Q = min(4, max_num_seqs 4) = 4
    assert_packed(
        pack(schedule(A, B), sizes()),
        token_ids=i32(11, 12, 0, 0, 21, 22, 23, 0),
        prev_rows=i32(-1, -1, -1, -1, -1, -1, -1, -1),
        positions=i32(5, 6, -1, -1, 6, 7, 8, -1),  # padding -1
        slot_mapping=i32(5, 6, 32, 32, 22, 23, 24, 32),  # padding: 8 pages * 4
        token_rows=i32(0, 0, 0, 0, 0, 0, 0, 0),
        block_tables=i32(
            [3, 1, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
            [2, 5, 6, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ),
        seq_lens=i32(7, 0, 0, 0, 9, 0, 0, 0),
        query_starts=i32(0, 0, 0, 0, 0, 0, 0, 0),
        query_lens=i32(2, 0, 0, 0, 3, 0, 0, 0),
        logits_indices=i32(1, 0, 0, 0, 2, 0, 0, 0),
        temperature=f32(0.5, 0, 0, 0, 0, 0, 0, 0),
        top_k=i32(5, 0, 0, 0, 0, 0, 0, 0),
        top_p=f32(0.9, 1, 1, 1, 1, 1, 1, 1),
        seeds=np.array([7, 0, 0, 0, 0, 0, 0, 0], np.uint32),
        output_index=i32(3, 0, 0, 0, 0, 0, 0, 0),
        logprobs=i32(-1, -1, -1, -1, 2, -1, -1, -1),  # padding -1: none
        selector=i32(0, 4),
        sampled_seq_ids=np.array([0, 1], np.int64),
        real_tokens=5,
        padded_tokens=8,
        token_stride=4,
        request_stride=4,
    )


def test_empty_rank_is_all_padding():
    B2 = B._replace(rank=2)
    pad4 = [0, 0, 0, 0]
    assert_packed(
        pack(schedule(A, B2), sizes(dp=3)),
        token_ids=i32(11, 12, 0, 0, 0, 0, 0, 0, 21, 22, 23, 0),
        prev_rows=i32(*[-1] * 12),
        positions=i32(5, 6, *[-1] * 6, 6, 7, 8, -1),
        slot_mapping=i32(5, 6, 32, 32, 32, 32, 32, 32, 22, 23, 24, 32),
        token_rows=i32(*[0] * 12),
        block_tables=i32([3, 1, 0, 0], pad4, pad4, pad4, pad4, pad4, pad4, pad4, [2, 5, 6, 0], pad4, pad4, pad4),
        seq_lens=i32(7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0),
        query_starts=i32(*[0] * 12),
        query_lens=i32(2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0),
        logits_indices=i32(1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0),
        temperature=f32(0.5, *[0] * 11),
        top_k=i32(5, *[0] * 11),
        top_p=f32(0.9, *[1] * 11),
        seeds=np.array([7, *[0] * 11], np.uint32),
        output_index=i32(3, *[0] * 11),
        logprobs=i32(*[-1] * 8, 2, -1, -1, -1),
        selector=i32(0, 8),
        sampled_seq_ids=np.array([0, 1], np.int64),
        real_tokens=5,
        padded_tokens=12,
        token_stride=4,
        request_stride=4,
    )


def test_several_chunks_per_rank_prefill_and_decode():
    steps = schedule(
        # rank 0: a prefill chunk that is not the prompt's end (no sample), then a decode
        chunk(10, 0, [1, 2, 3, 4], start=0, pages=[7], sample=False, logprobs=3),  # no sample: none
        chunk(11, 0, [5], start=9, pages=[0, 1, 2], output_index=4, temperature=1.0, seed=-1),
        # rank 1: a decode, the last prefill chunk of a prompt, another decode
        chunk(12, 1, [6], start=3, pages=[4], output_index=1, top_k=2, logprobs=5),
        chunk(13, 1, [7, 8, 9, 10, 11], start=4, pages=[5, 6, 3], top_p=0.5, seed=9),
        chunk(14, 1, [12], start=0, pages=[1], sample=False),
    )
    # rank 1 has 7 tokens -> S = 8; Q = min(8, max_num_seqs 3) = 3
    z3 = [0, 0, 0, 0]
    assert_packed(
        pack(steps, sizes(max_num_seqs=3)),
        token_ids=i32(1, 2, 3, 4, 5, 0, 0, 0, 6, 7, 8, 9, 10, 11, 12, 0),
        prev_rows=i32(*[-1] * 16),
        positions=i32(0, 1, 2, 3, 9, -1, -1, -1, 3, 4, 5, 6, 7, 8, 0, -1),
        # pos 0-3 in page 7; pos 9 in page 2 (its 3rd) | pos 3 in page 4; pos 4-7 in page 6
        # (its 2nd), pos 8 in page 3 (its 3rd); pos 0 in page 1; padding 8 pages * 4
        slot_mapping=i32(28, 29, 30, 31, 9, 32, 32, 32, 19, 24, 25, 26, 27, 12, 4, 32),
        token_rows=i32(0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 0),
        block_tables=i32([7, 0, 0, 0], [0, 1, 2, 0], z3, [4, 0, 0, 0], [5, 6, 3, 0], [1, 0, 0, 0]),
        seq_lens=i32(4, 10, 0, 4, 9, 1),
        query_starts=i32(0, 4, 0, 0, 1, 6),
        query_lens=i32(4, 1, 0, 1, 5, 1),
        logits_indices=i32(3, 4, 0, 0, 5, 6),
        temperature=f32(0, 1, 0, 0, 0, 0),
        top_k=i32(0, 0, 0, 2, 0, 0),
        top_p=f32(1, 1, 1, 1, 0.5, 1),
        seeds=np.array([0, 2**32 - 1, 0, 0, 9, 0], np.uint32),  # seed -1 as the sampler's uint32
        output_index=i32(0, 4, 0, 1, 0, 0),
        logprobs=i32(-1, -1, -1, 5, -1, -1),
        selector=i32(1, 3, 4),
        sampled_seq_ids=np.array([11, 12, 13], np.int64),
        real_tokens=12,
        padded_tokens=16,
        token_stride=8,
        request_stride=3,
    )


def test_from_previous_step_tokens_read_prev_rows():
    first = pack(schedule(A, B), sizes())
    assert first.sampled_rows() == {0: 0, 1: 4}
    # async scheduling: step 2 decodes A and B before their sampled tokens reach the host
    decode_a = chunk(0, 0, [FROM_PREVIOUS_STEP], start=7, pages=[3, 1], output_index=4)
    decode_b = chunk(1, 1, [FROM_PREVIOUS_STEP], start=9, pages=[2, 5, 6], output_index=1)
    new_c = chunk(2, 1, [31, 32], start=0, pages=[4])
    packed = pack(schedule(decode_a, decode_b, new_c), sizes(), prev_rows=first.sampled_rows())
    assert_array_equal(packed.token_ids, i32(-1, 0, 0, 0, -1, 31, 32, 0))
    assert_array_equal(packed.prev_rows, i32(0, -1, -1, -1, 4, -1, -1, -1))
    assert_array_equal(packed.positions, i32(7, -1, -1, -1, 9, 0, 1, -1))
    assert_array_equal(packed.slot_mapping, i32(7, 32, 32, 32, 25, 16, 17, 32))
    assert_array_equal(packed.selector, i32(0, 4, 5))
    assert packed.sampled_rows() == {0: 0, 1: 4, 2: 5}


@pytest.mark.parametrize("prev_rows", [None, {1: 4}])
def test_from_previous_step_without_prev_row_is_an_error(prev_rows):
    decode = chunk(0, 0, [FROM_PREVIOUS_STEP], start=7, pages=[3, 1])
    with pytest.raises(ValueError, match="sequence 0: a FROM_PREVIOUS_STEP token but no entry in prev_rows"):
        pack(schedule(decode), sizes(), prev_rows=prev_rows)


@pytest.mark.parametrize(("busiest", "stride"), [(1, 4), (4, 4), (5, 8), (8, 8), (9, 16), (16, 16)])
def test_token_stride_is_the_smallest_bucket_that_fits(busiest, stride):
    packed = pack(
        schedule(chunk(0, 1, range(busiest), start=0, pages=[0, 1, 2, 3]), chunk(1, 0, [5], start=0, pages=[0])),
        sizes(max_num_seqs=6),
    )
    assert (packed.token_stride, packed.request_stride) == (stride, min(stride, 6))
    assert packed.padded_tokens == 2 * stride and packed.real_tokens == busiest + 1
    assert all(getattr(packed, f).shape[0] == 2 * stride for f in PER_TOKEN)
    assert all(getattr(packed, f).shape[0] == 2 * min(stride, 6) for f in PER_REQUEST)


def test_empty_step_is_all_padding():
    packed = pack(schedule(), sizes())
    assert (packed.token_stride, packed.request_stride, packed.real_tokens) == (4, 4, 0)
    assert_array_equal(packed.slot_mapping, i32(*[32] * 8))
    assert_array_equal(packed.query_lens, i32(*[0] * 8))
    assert packed.selector.shape == (0,) and packed.sampled_seq_ids.shape == (0,)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            schedule(chunk(0, 0, range(17), start=0, pages=[0, 1, 2, 3, 4], sample=False)),
            "rank 0 has 17 tokens this step, more than the largest token bucket 16",
        ),
        (
            schedule(*[chunk(i, 1, [i], start=0, pages=[i]) for i in range(4)]),
            (
                r"rank 1 has 4 chunks this step, more than the request stride 3 = "
                r"min\(token stride 4, max_num_seqs 3\)"
            ),
        ),
        (schedule(chunk(0, 2, [1], start=0, pages=[0])), r"rank 2 is not a DP rank \(0..1\)"),
        (schedule(chunk(0, 0, [], start=0, pages=[0])), "sequence 0: token_ids is empty; a chunk has >= 1 token"),
        (schedule(chunk(0, 0, [1, 2], start=3, pages=[0])), "block_table has 1 pages; 3 \\+ 2 tokens need 2"),
        (schedule(chunk(0, 0, [1], start=0, pages=range(9))), "at most max_pages_per_seq=8"),
        (schedule(chunk(0, 0, [1], start=0, pages=[8])), r"page ids \[8\] outside this rank's pages 0..7"),
    ],
)
def test_errors(steps, message):
    with pytest.raises(ValueError, match=message):
        pack(steps, sizes(max_num_seqs=3, max_pages_per_seq=8))


# ---- random schedules -------------------------------------------------------------------------


@st.composite
def random_steps(draw):
    """(schedule, sizes, prev_rows): 1-4 ranks, each within the largest bucket and max_num_seqs."""
    dp, page_size = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 4]))
    sz = sizes(
        dp=dp,
        page_size=page_size,
        max_num_seqs=draw(st.integers(1, 6)),
        pages_per_rank=64,
        max_pages_per_seq=32 // page_size,
    )
    chunks, prev_rows = [], {}
    for rank in range(dp):
        ns = draw(st.lists(st.integers(1, 8), max_size=sz.max_num_seqs))
        while sum(ns) > 16:
            ns.pop()
        for n in ns:
            seq_id = len(chunks) * 3 + 1  # sparse ids: rows must not be confused with ids
            start = draw(st.integers(0, sz.max_model_len - n))
            need = -(-(start + n) // page_size)
            pages = draw(st.lists(st.integers(0, 63), unique=True, min_size=need, max_size=sz.max_pages_per_seq))
            if n == 1 and draw(st.booleans()):
                tokens = [FROM_PREVIOUS_STEP]
                prev_rows[seq_id] = draw(st.integers(0, 99))
            else:
                tokens = draw(st.lists(st.integers(0, 999), min_size=n, max_size=n))
            chunks.append(
                chunk(
                    seq_id,
                    rank,
                    tokens,
                    start,
                    pages,
                    sample=draw(st.booleans()),
                    output_index=draw(st.integers(0, 99)),
                    temperature=draw(st.floats(0, 2)),
                    top_k=draw(st.integers(-1, 50)),
                    top_p=draw(st.floats(0, 1)),
                    seed=draw(st.integers(0, 2**32 - 1)),
                )
            )
    if draw(st.booleans()):  # ranks interleaved: only the order within a rank is kept
        chunks = draw(st.permutations(chunks))
    return schedule(*chunks), sz, prev_rows


@settings(deadline=None)
@given(random_steps())
def test_every_request_array_describes_the_same_chunk(case):
    steps, sz, prev_rows = case
    p = pack(steps, sz, prev_rows)
    R, S, Q = sz.dp_ranks, p.token_stride, p.request_stride
    tokens_per_rank = steps.tokens_per_rank(R)
    assert S == min(b for b in sz.token_buckets if b >= tokens_per_rank.max())
    assert Q == min(S, sz.max_num_seqs)
    assert all(getattr(p, f).shape == (R * S,) for f in PER_TOKEN)
    assert all(getattr(p, f).shape[0] == R * Q for f in PER_REQUEST)

    rows, seen = [], [0] * R  # each chunk's global request row: its place among its rank's chunks
    for c in steps.chunks:
        rows.append(c.rank * Q + seen[c.rank])
        seen[c.rank] += 1
    assert_array_equal(p.selector, [g for g, c in zip(rows, steps.chunks) if c.sample])
    assert_array_equal(p.sampled_seq_ids, [c.seq_id for c in steps.chunks if c.sample])
    for g, c in zip(rows, steps.chunks):
        n, s, base = c.num_tokens, c.sampling, c.rank * S
        assert (p.query_lens[g], p.seq_lens[g], p.output_index[g]) == (n, c.start_pos + n, c.output_index)
        assert p.logits_indices[g] == p.query_starts[g] + n - 1
        assert (p.temperature[g], p.top_p[g]) == (np.float32(s.temperature), np.float32(s.top_p))
        assert (p.top_k[g], p.seeds[g]) == (s.top_k, s.seed)
        assert_array_equal(p.block_tables[g, : len(c.block_table)], c.block_table)
        assert not p.block_tables[g, len(c.block_table) :].any()
        tokens = slice(base + p.query_starts[g], base + p.query_starts[g] + n)
        assert_array_equal(p.token_ids[tokens], c.token_ids)
        assert_array_equal(p.positions[tokens], c.start_pos + np.arange(n))
        assert_array_equal(p.token_rows[tokens], g - c.rank * Q)
        pages = c.block_table[p.positions[tokens] // sz.page_size]
        assert_array_equal(p.slot_mapping[tokens], pages * sz.page_size + p.positions[tokens] % sz.page_size)
        assert p.token_ids[base + p.logits_indices[g]] == c.token_ids[-1]

    # token counts add up, rank by rank
    assert p.real_tokens == tokens_per_rank.sum() and p.padded_tokens == R * S
    assert_array_equal(p.query_lens.reshape(R, Q).sum(1), tokens_per_rank)
    pad_slot = sz.pages_per_rank * sz.page_size
    assert_array_equal((p.slot_mapping.reshape(R, S) != pad_slot).sum(1), tokens_per_rank)
    # padding is harmless: no cache, no query, no KV write, no previous-step lookup
    padding_rows = np.setdiff1d(np.arange(R * Q), rows)
    assert not p.seq_lens[padding_rows].any() and not p.query_lens[padding_rows].any()
    padding_tokens = p.slot_mapping == pad_slot
    assert (p.prev_rows[padding_tokens] == -1).all() and not p.token_rows[padding_tokens].any()
    assert_array_equal(p.prev_rows != -1, p.token_ids == FROM_PREVIOUS_STEP)
    rank_by_rank = [c for r in range(R) for c in steps.chunks if c.rank == r]
    assert_array_equal(
        p.prev_rows[p.prev_rows != -1],
        [prev_rows[c.seq_id] for c in rank_by_rank if c.token_ids[0] == FROM_PREVIOUS_STEP],
    )


@settings(deadline=None)
@given(random_steps())
def test_naive_reference_packs_the_same_arrays(case):
    steps, sz, prev_rows = case
    fast, naive = pack(steps, sz, prev_rows), packer_naive.pack_naive(steps, sz, prev_rows)
    for f in dataclasses.fields(PackedStep):
        got, want = getattr(fast, f.name), getattr(naive, f.name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype, f.name
            assert_array_equal(got, want, err_msg=f.name)
        else:
            assert got == want, f.name
