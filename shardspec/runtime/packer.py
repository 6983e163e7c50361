"""InputPacker: one step's chunks -> numpy arrays laid out rank by rank (DESIGN §4).

R = DP ranks, S = token stride (the smallest bucket holding the busiest rank's
tokens), Q = request stride. A per-token array has R*S rows, a per-request
array R*Q; rank r owns rows [r*S, (r+1)*S) and [r*Q, (r+1)*Q), so the first
axis splits evenly over the ranks. Within a rank, chunks keep their schedule
order and a chunk's tokens are contiguous. Example (dp=2, page_size=4): A on
rank 0 runs tokens a5 a6 after 5 cached, B on rank 1 runs b6 b7 b8 after 6;
S = Q = 4:

    token_ids       [a5 a6  0  0 | b6 b7 b8  0]
    positions       [ 5  6  0  0 |  6  7  8  0]
    query_lens      [ 2  0  0  0 |  3  0  0  0]
    logits_indices  [ 1  0  0  0 |  2  0  0  0]   local to the rank's stride
    selector        [0, 4]                        global rows of A's and B's samples

Every per-request array, sampling parameters included, goes through
`_Layout.per_request`: one reordering, so row i of each describes the same
chunk (the reference system once sampled with another request's parameters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from ..sizes import RuntimeSizes, pages_for
from .schedule import FROM_PREVIOUS_STEP, StepSchedule


@dataclasses.dataclass(frozen=True, eq=False)
class PackedStep:
    """One step's device inputs; per-token arrays [R*S], per-request arrays [R*Q]."""

    token_ids: np.ndarray  # int32 [R*S]; FROM_PREVIOUS_STEP kept, padding 0
    prev_rows: np.ndarray  # int32 [R*S]; FROM_PREVIOUS_STEP: row in the previous sampled array, else -1
    positions: np.ndarray  # int32 [R*S]; padding -1
    slot_mapping: np.ndarray  # int32 [R*S]; rank-local KV slot, padding pages_per_rank*page_size
    token_rows: np.ndarray  # int32 [R*S]; local request row (0..Q-1) of the token's chunk, padding 0
    block_tables: np.ndarray  # int32 [R*Q, max_pages_per_seq]; padding 0
    seq_lens: np.ndarray  # int32 [R*Q]; tokens in the cache after the step, padding 0
    query_starts: np.ndarray  # int32 [R*Q]; local token offset of the chunk, padding 0
    query_lens: np.ndarray  # int32 [R*Q]; padding 0
    logits_indices: np.ndarray  # int32 [R*Q]; local token index of the chunk's last token, padding 0
    temperature: np.ndarray  # float32 [R*Q]; padding 0 (greedy)
    top_k: np.ndarray  # int32 [R*Q]; padding 0 (off)
    top_p: np.ndarray  # float32 [R*Q]; padding 1 (off)
    seeds: np.ndarray  # uint32 [R*Q]; padding 0
    output_index: np.ndarray  # int32 [R*Q]; padding 0
    logprobs: np.ndarray  # int32 [R*Q]; top logprobs wanted, padding -1 (none)
    selector: np.ndarray  # int32 [n_sampled]; global row of each sampled chunk, in schedule order
    sampled_seq_ids: np.ndarray  # int64 [n_sampled]; the seq_id of each, same order
    real_tokens: int
    padded_tokens: int  # R*S
    token_stride: int  # S
    request_stride: int  # Q
    # Device inputs only steps where some chunk asks have (the step runs another program):
    # `adjust_*` and `structured_mask` per request [R*Q(, W)], `prompt_targets` per token [R*S].
    extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    prompt_rows: np.ndarray | None = None  # int32: the global token row of each schedule token with a prompt target

    def sampled_rows(self) -> dict[int, int]:
        """seq_id -> global row of its sample: the next step's `prev_rows`."""
        return dict(zip(self.sampled_seq_ids.tolist(), self.selector.tolist()))


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each chunk's request row and each token land in the rank-by-rank layout."""

    request_rows: np.ndarray  # [C] global request row: rank*Q + local row
    token_rows: np.ndarray  # [T] global token row: rank*S + query start + offset in chunk
    n_requests: int  # R*Q
    n_tokens: int  # R*S
    in_order: bool  # chunks grouped by rank (the scheduler's steps): both row arrays increase

    def per_request(self, **columns: tuple[np.ndarray, object]) -> dict[str, np.ndarray]:
        """{name: ([C, ...] per-chunk values, fill)} -> {name: [R*Q, ...]}: the one reordering
        of request arrays."""
        return _scatter(columns, self.request_rows, self.n_requests, self.in_order)

    def block_tables(self, tables: np.ndarray, max_pages: int) -> np.ndarray:
        """[C, W] block tables (W: the step's longest table) -> [R*Q, max_pages], zero padded,
        through the same request rows."""
        out = np.zeros((self.n_requests, max_pages), np.int32)
        width = min(tables.shape[1], max_pages)
        out[_rows_or_slice(self.request_rows, self.in_order), :width] = tables[:, :width]
        return out

    def per_token(self, **columns: tuple[np.ndarray, object]) -> dict[str, np.ndarray]:
        """{name: ([T] per-token values in schedule order, fill)} -> {name: [R*S]}."""
        return _scatter(columns, self.token_rows, self.n_tokens, self.in_order)


def _scatter(
    columns: Mapping[str, tuple[np.ndarray, object]], rows: np.ndarray, n_rows: int, increasing: bool
) -> dict[str, np.ndarray]:
    """Each column's values put at `rows` of an [n_rows, ...] array of its fill."""
    at = _rows_or_slice(rows, increasing)
    out = {}
    for name, (values, fill) in columns.items():
        shape = (n_rows, *values.shape[1:])
        out[name] = np.zeros(shape, values.dtype) if fill == 0 else np.full(shape, fill, values.dtype)
        out[name][at] = values
    return out


def _rows_or_slice(rows: np.ndarray, increasing: bool):
    """Increasing rows 0 .. k-1 (every rank full, the usual busy step) as a slice: a copy, not a scatter."""
    return slice(0, len(rows)) if increasing and len(rows) and rows[-1] == len(rows) - 1 else rows


def pack(
    schedule: StepSchedule,
    sizes: RuntimeSizes,
    prev_rows: Mapping[int, int] | tuple[np.ndarray, np.ndarray] | None = None,
    *,
    min_stride: int = 0,
    check: bool = True,
) -> PackedStep:
    """Lay out one step's chunks rank by rank, padded to one per-rank stride.

    `prev_rows[seq_id]` is where the sequence's sample sits in the previous
    step's sampled array (`PackedStep.sampled_rows()` of that step); it is
    needed only for sequences with FROM_PREVIOUS_STEP tokens. `min_stride`
    pads to at least that many tokens a rank (an empty schedule with it is a
    step of nothing but padding: the warm-up and the HLO report use one).

    Raises ValueError, naming the rank or sequence, when a rank has more
    tokens than the largest bucket or more chunks than the request stride, or,
    with `check`, a chunk is malformed (bad rank, no tokens, block table too
    short or too long, page ids outside the rank, FROM_PREVIOUS_STEP with no
    prev row). The engine passes `check=False`: the scheduler's steps are well
    formed by construction (tests/test_scheduler.py holds them to it).
    """
    c = schedule
    prev_row = _prev_row_of(c, prev_rows)
    if check:
        _check_chunks(c, prev_row, sizes)
    R, page_size = sizes.dp_ranks, sizes.page_size
    tokens_per_rank = c.tokens_per_rank(R)
    chunks_per_rank = np.bincount(c.ranks, minlength=R)
    _check_token_budget(tokens_per_rank, sizes)
    S = sizes.token_stride(max(int(tokens_per_rank.max()), min_stride))
    Q = sizes.request_stride(S)
    _check_request_stride(chunks_per_rank, S, Q, sizes)

    n = c.num_tokens
    local_row, query_start, grouped = _place_in_rank(c.ranks, n)
    tok_chunk, tok_offset = _segments(n)  # [T] each token's chunk and its index in the chunk
    layout = _Layout(
        request_rows=c.ranks * Q + local_row,
        token_rows=(c.ranks * S + query_start)[tok_chunk] + tok_offset,
        n_requests=R * Q,
        n_tokens=R * S,
        in_order=grouped,
    )

    positions = c.starts[tok_chunk] + tok_offset
    slots = c.block_tables[tok_chunk, positions // page_size] * page_size + positions % page_size
    prev = np.where(c.token_ids == FROM_PREVIOUS_STEP, prev_row[tok_chunk], -1)
    sampled = np.flatnonzero(c.sample)
    return PackedStep(
        **layout.per_token(
            token_ids=(c.token_ids, 0),
            prev_rows=(_i32(prev), -1),
            positions=(_i32(positions), -1),  # -1: a padding token (a MoE routes it nowhere)
            slot_mapping=(_i32(slots), sizes.pages_per_rank * page_size),
            token_rows=(_i32(local_row[tok_chunk]), 0),
        ),
        block_tables=layout.block_tables(c.block_tables, sizes.max_pages_per_seq),
        **layout.per_request(
            seq_lens=(_i32(c.starts + n), 0),
            query_starts=(_i32(query_start), 0),
            query_lens=(_i32(n), 0),
            logits_indices=(_i32(query_start + n - 1), 0),
            temperature=(c.temperature, 0.0),
            top_k=(c.top_k, 0),
            top_p=(c.top_p, 1.0),
            seeds=(c.seed, 0),
            output_index=(c.output_index, 0),
            logprobs=(c.logprobs, -1),
        ),
        selector=_i32(layout.request_rows[sampled]),
        sampled_seq_ids=c.seq_ids[sampled],
        real_tokens=int(tokens_per_rank.sum()),
        padded_tokens=R * S,
        token_stride=S,
        request_stride=Q,
        **_extras(c, layout),
    )


def _extras(c: StepSchedule, layout: _Layout) -> dict:
    """The PackedStep fields of what only some steps have: adjustments, grammar masks, prompt
    logprob targets."""
    extras = layout.per_request(**c.adjustments.columns()) if c.adjustments is not None else {}
    if c.masks is not None:
        extras |= layout.per_request(structured_mask=(c.masks, -1))  # -1: every bit, any token
    if c.prompt_targets is None:
        return {"extras": extras}
    extras |= layout.per_token(prompt_targets=(c.prompt_targets, -1))
    return {"extras": extras, "prompt_rows": _i32(layout.token_rows[c.prompt_targets >= 0])}


def _i32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int32)


def _place_in_rank(rank: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """[C] local request row and local token offset of each chunk inside its rank, and whether
    the chunks come grouped by rank.

    ranks [0, 1, 0], n [2, 3, 4] -> rows [0, 0, 1], starts [0, 0, 2], False.
    """
    grouped = len(rank) < 2 or bool((rank[1:] >= rank[:-1]).all())  # the scheduler's steps are
    order = None if grouped else np.argsort(rank, kind="stable")  # rank by rank, schedule order within
    r, n_sorted = (rank, n) if grouped else (rank[order], n[order])
    counts = np.bincount(r)
    first = (np.cumsum(counts) - counts)[r]  # [C] where each chunk's rank starts in `order`
    ends = np.cumsum(n_sorted)
    rows, starts = np.arange(len(r)) - first, ends - n_sorted - (ends - n_sorted)[first]
    if grouped:
        return rows, starts, True
    local_row, query_start = np.empty_like(rank), np.empty_like(n)
    local_row[order], query_start[order] = rows, starts
    return local_row, query_start, False


def _prev_row_of(schedule: StepSchedule, prev_rows) -> np.ndarray:
    """[C] each chunk's row in the previous step's sampled array, -1 where it has none.

    `prev_rows`: {seq_id: row}, or (sorted seq ids, their rows) as `step.local_rows` gives.
    """
    out = np.full(len(schedule), -1, np.int64)
    if prev_rows is None or not len(schedule):
        return out
    if isinstance(prev_rows, Mapping):
        ids = np.fromiter(prev_rows.keys(), np.int64, len(prev_rows))
        rows = np.fromiter(prev_rows.values(), np.int64, len(prev_rows))
        order = np.argsort(ids)
        ids, rows = ids[order], rows[order]
    else:
        ids, rows = prev_rows
    if len(ids):
        at = np.minimum(np.searchsorted(ids, schedule.seq_ids), len(ids) - 1)
        found = ids[at] == schedule.seq_ids
        out[found] = rows[at[found]]
    return out


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Owner and index inside it of each element of concatenated segments.

    lengths [2, 1, 3] -> owners [0, 0, 1, 2, 2, 2], indices [0, 1, 0, 0, 1, 2].
    """
    if (lengths == 1).all():  # one element each (a decode step)
        return np.arange(len(lengths)), np.zeros(len(lengths), np.int64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner, np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _check_chunks(schedule: StepSchedule, prev_row: np.ndarray, sizes: RuntimeSizes) -> None:
    """Raise ValueError naming the first chunk that breaks a rule."""
    rank, n, n_pages, tables = schedule.ranks, schedule.num_tokens, schedule.n_pages, schedule.block_tables
    need = pages_for(schedule.starts + n, sizes.page_size)
    # Entries beyond a table's pages are 0, a page id like any other: one pass over the whole table.
    if tables.size and (tables.min() < 0 or tables.max() >= sizes.pages_per_rank):
        outside = (tables < 0) | (tables >= sizes.pages_per_rank)
    else:
        outside = np.zeros((len(schedule), 0), bool)
    has_prev = np.zeros(len(schedule), bool)
    has_prev[_segments(n)[0][schedule.token_ids == FROM_PREVIOUS_STEP]] = True
    checks = [
        ((rank < 0) | (rank >= sizes.dp_ranks), lambda i: f"rank {rank[i]} is not a DP rank (0..{sizes.dp_ranks - 1})"),
        (n == 0, lambda i: "token_ids is empty; a chunk has >= 1 token"),
        (
            (n_pages < need) | (n_pages > sizes.max_pages_per_seq),
            lambda i: (
                f"block_table has {n_pages[i]} pages; {schedule.starts[i]} + {n[i]} tokens need "
                f"{need[i]} and a table holds at most max_pages_per_seq={sizes.max_pages_per_seq}"
            ),
        ),
        (
            outside.any(axis=1),
            lambda i: (
                f"page ids {tables[i][outside[i]].tolist()} outside this rank's pages 0..{sizes.pages_per_rank - 1}"
            ),
        ),
        (
            has_prev & (prev_row < 0),
            lambda i: (
                "a FROM_PREVIOUS_STEP token but no entry in prev_rows "
                "(pass the previous step's PackedStep.sampled_rows())"
            ),
        ),
    ]
    for bad, message in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"chunk of sequence {schedule.seq_ids[i]}: {message(i)}")


def _check_token_budget(tokens_per_rank: np.ndarray, sizes: RuntimeSizes) -> None:
    largest = sizes.token_buckets[-1]
    if tokens_per_rank.max() > largest:
        r = int(tokens_per_rank.argmax())
        raise ValueError(
            f"rank {r} has {tokens_per_rank[r]} tokens this step, more than the largest token "
            f"bucket {largest} (the scheduler must keep a rank within max_num_batched_tokens)"
        )


def _check_request_stride(chunks_per_rank: np.ndarray, S: int, Q: int, sizes: RuntimeSizes) -> None:
    if chunks_per_rank.max() > Q:
        r = int(chunks_per_rank.argmax())
        raise ValueError(
            f"rank {r} has {chunks_per_rank[r]} chunks this step, more than the request stride "
            f"{Q} = min(token stride {S}, max_num_seqs {sizes.max_num_seqs})"
        )
