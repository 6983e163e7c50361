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
from collections.abc import Mapping, Sequence

import numpy as np

from ..sizes import RuntimeSizes, pages_for
from .schedule import FROM_PREVIOUS_STEP, ScheduledChunk, StepSchedule


@dataclasses.dataclass(frozen=True, eq=False)
class PackedStep:
    """One step's device inputs; per-token arrays [R*S], per-request arrays [R*Q]."""

    token_ids: np.ndarray  # int32 [R*S]; FROM_PREVIOUS_STEP kept, padding 0
    prev_rows: np.ndarray  # int32 [R*S]; FROM_PREVIOUS_STEP: row in the previous sampled array, else -1
    positions: np.ndarray  # int32 [R*S]; padding 0
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
    selector: np.ndarray  # int32 [n_sampled]; global row of each sampled chunk, in schedule order
    sampled_seq_ids: np.ndarray  # int64 [n_sampled]; the seq_id of each, same order
    real_tokens: int
    padded_tokens: int  # R*S
    token_stride: int  # S
    request_stride: int  # Q

    def sampled_rows(self) -> dict[int, int]:
        """seq_id -> global row of its sample: the next step's `prev_rows`."""
        return dict(zip(self.sampled_seq_ids.tolist(), self.selector.tolist()))


@dataclasses.dataclass(frozen=True)
class _Chunks:
    """Per-chunk columns [C], in schedule order."""

    rank: np.ndarray
    n: np.ndarray
    start: np.ndarray
    seq_id: np.ndarray
    sample: np.ndarray
    prev_row: np.ndarray  # prev_rows[seq_id], -1 where absent
    temperature: np.ndarray
    top_k: np.ndarray
    top_p: np.ndarray
    seed: np.ndarray
    output_index: np.ndarray
    block_tables: np.ndarray  # [C, max_pages_per_seq], zero padded
    token_ids: np.ndarray  # [T] all chunks' tokens, concatenated


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each chunk's request row and each token land in the rank-by-rank layout."""

    request_rows: np.ndarray  # [C] global request row: rank*Q + local row
    token_rows: np.ndarray  # [T] global token row: rank*S + query start + offset in chunk
    n_requests: int  # R*Q
    n_tokens: int  # R*S

    def per_request(self, values: np.ndarray, fill=0) -> np.ndarray:
        """[C, ...] per-chunk values -> [R*Q, ...]: the one reordering of request arrays."""
        return _scatter(values, self.request_rows, self.n_requests, fill)

    def per_token(self, values: np.ndarray, fill=0) -> np.ndarray:
        """[T] per-token values (schedule order) -> [R*S]."""
        return _scatter(values, self.token_rows, self.n_tokens, fill)


def _scatter(values: np.ndarray, rows: np.ndarray, n_rows: int, fill) -> np.ndarray:
    out = np.full((n_rows, *values.shape[1:]), fill, values.dtype)
    out[rows] = values
    return out


def pack(
    schedule: StepSchedule, sizes: RuntimeSizes, prev_rows: Mapping[int, int] | None = None, *, min_stride: int = 0
) -> PackedStep:
    """Lay out one step's chunks rank by rank, padded to one per-rank stride.

    `prev_rows[seq_id]` is where the sequence's sample sits in the previous
    step's sampled array (`PackedStep.sampled_rows()` of that step); it is
    needed only for sequences with FROM_PREVIOUS_STEP tokens. `min_stride`
    pads to at least that many tokens a rank (an empty schedule with it is a
    step of nothing but padding: the warm-up and the HLO report use one).

    Raises ValueError, naming the rank or sequence, when a rank has more
    tokens than the largest bucket or more chunks than the request stride, or
    a chunk is malformed (bad rank, no tokens, block table too short or too
    long, page ids outside the rank, FROM_PREVIOUS_STEP with no prev row).
    """
    c = _columns(schedule.chunks, sizes, prev_rows)
    R, page_size = sizes.dp_ranks, sizes.page_size
    tokens_per_rank = np.bincount(c.rank, weights=c.n, minlength=R).astype(np.int64)
    chunks_per_rank = np.bincount(c.rank, minlength=R)
    _check_token_budget(tokens_per_rank, sizes)
    S = sizes.token_stride(max(int(tokens_per_rank.max()), min_stride))
    Q = sizes.request_stride(S)
    _check_request_stride(chunks_per_rank, S, Q, sizes)

    local_row, query_start = _place_in_rank(c.rank, c.n)
    tok_chunk, tok_offset = _segments(c.n)  # [T] each token's chunk and its index in the chunk
    layout = _Layout(
        request_rows=c.rank * Q + local_row,
        token_rows=(c.rank * S + query_start)[tok_chunk] + tok_offset,
        n_requests=R * Q,
        n_tokens=R * S,
    )

    positions = c.start[tok_chunk] + tok_offset
    slots = c.block_tables[tok_chunk, positions // page_size] * page_size + positions % page_size
    prev = np.where(c.token_ids == FROM_PREVIOUS_STEP, c.prev_row[tok_chunk], -1)
    sampled = np.flatnonzero(c.sample)
    return PackedStep(
        token_ids=layout.per_token(c.token_ids),
        prev_rows=layout.per_token(_i32(prev), fill=-1),
        positions=layout.per_token(_i32(positions)),
        slot_mapping=layout.per_token(_i32(slots), fill=sizes.pages_per_rank * page_size),
        token_rows=layout.per_token(_i32(local_row[tok_chunk])),
        block_tables=layout.per_request(c.block_tables),
        seq_lens=layout.per_request(_i32(c.start + c.n)),
        query_starts=layout.per_request(_i32(query_start)),
        query_lens=layout.per_request(_i32(c.n)),
        logits_indices=layout.per_request(_i32(query_start + c.n - 1)),
        temperature=layout.per_request(c.temperature),
        top_k=layout.per_request(c.top_k),
        top_p=layout.per_request(c.top_p, fill=1.0),
        seeds=layout.per_request(c.seed),
        output_index=layout.per_request(c.output_index),
        selector=_i32(layout.request_rows[sampled]),
        sampled_seq_ids=c.seq_id[sampled],
        real_tokens=int(tokens_per_rank.sum()),
        padded_tokens=R * S,
        token_stride=S,
        request_stride=Q,
    )


def _i32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int32)


def _place_in_rank(rank: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[C] local request row and local token offset of each chunk inside its rank.

    ranks [0, 1, 0], n [2, 3, 4] -> rows [0, 0, 1], starts [0, 0, 2].
    """
    order = np.argsort(rank, kind="stable")  # rank by rank, schedule order within a rank
    r, n_sorted = rank[order], n[order]
    first = np.searchsorted(r, r)  # [C] where each chunk's rank starts in `order`
    ends = np.cumsum(n_sorted)
    local_row, query_start = np.empty_like(rank), np.empty_like(n)
    local_row[order] = np.arange(len(r)) - first
    query_start[order] = ends - n_sorted - (ends - n_sorted)[first]
    return local_row, query_start


# _Chunks' scalar columns and their dtypes, in the order `_columns` reads them.
_COLUMNS = {
    "rank": np.int64,
    "n": np.int64,
    "start": np.int64,
    "seq_id": np.int64,
    "sample": bool,
    "prev_row": np.int64,
    "temperature": np.float32,
    "top_k": np.int32,
    "top_p": np.float32,
    "seed": np.uint32,
    "output_index": np.int32,
}


def _columns(chunks: Sequence[ScheduledChunk], sizes: RuntimeSizes, prev_rows: Mapping[int, int] | None) -> _Chunks:
    """Per-chunk columns: the one loop over chunks only reads attributes; checks are vectorised."""
    prev_rows = prev_rows or {}
    rows = [
        (
            c.rank,
            len(c.token_ids),
            c.start_pos,
            c.seq_id,
            c.sample,
            prev_rows.get(c.seq_id, -1),
            c.sampling.temperature,
            c.sampling.top_k,
            c.sampling.top_p,
            c.sampling.seed & 0xFFFFFFFF,  # the uint32 the sampler keys on, for any Python int
            c.output_index,
        )
        for c in chunks
    ]
    columns = zip(*rows) if rows else [()] * len(_COLUMNS)
    cols = {k: np.array(v, dtype) for (k, dtype), v in zip(_COLUMNS.items(), columns)}
    token_ids = np.concatenate([np.zeros(0, np.int32), *(c.token_ids for c in chunks)]).astype(np.int32)
    pages = np.concatenate([np.zeros(0, np.int32), *(c.block_table for c in chunks)]).astype(np.int32)
    n_pages = np.array([len(c.block_table) for c in chunks], np.int64)
    page_owner, page_index = _segments(n_pages)
    _check_chunks(chunks, cols, token_ids, pages, page_owner, n_pages, sizes)
    block_tables = np.zeros((len(chunks), sizes.max_pages_per_seq), np.int32)
    block_tables[page_owner, page_index] = pages
    return _Chunks(**cols, block_tables=block_tables, token_ids=token_ids)


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Owner and index inside it of each element of concatenated segments.

    lengths [2, 1, 3] -> owners [0, 0, 1, 2, 2, 2], indices [0, 1, 0, 0, 1, 2].
    """
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner, np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _check_chunks(
    chunks: Sequence[ScheduledChunk],
    cols: Mapping[str, np.ndarray],
    token_ids: np.ndarray,
    pages: np.ndarray,
    page_owner: np.ndarray,
    n_pages: np.ndarray,
    sizes: RuntimeSizes,
) -> None:
    """Raise ValueError naming the first chunk that breaks a rule."""
    rank, n = cols["rank"], cols["n"]
    need = pages_for(cols["start"] + n, sizes.page_size)
    outside = (pages < 0) | (pages >= sizes.pages_per_rank)  # [total pages]
    bad_page = np.zeros(len(chunks), bool)
    bad_page[page_owner[outside]] = True
    has_prev = np.zeros(len(chunks), bool)
    has_prev[_segments(n)[0][token_ids == FROM_PREVIOUS_STEP]] = True
    checks = [
        ((rank < 0) | (rank >= sizes.dp_ranks), lambda i: f"rank {rank[i]} is not a DP rank (0..{sizes.dp_ranks - 1})"),
        (n == 0, lambda i: "token_ids is empty; a chunk has >= 1 token"),
        (
            (n_pages < need) | (n_pages > sizes.max_pages_per_seq),
            lambda i: (
                f"block_table has {n_pages[i]} pages; {cols['start'][i]} + {n[i]} tokens need "
                f"{need[i]} and a table holds at most max_pages_per_seq={sizes.max_pages_per_seq}"
            ),
        ),
        (
            bad_page,
            lambda i: (
                f"page ids {pages[outside & (page_owner == i)].tolist()} outside this rank's "
                f"pages 0..{sizes.pages_per_rank - 1}"
            ),
        ),
        (
            has_prev & (cols["prev_row"] < 0),
            lambda i: (
                "a FROM_PREVIOUS_STEP token but no entry in prev_rows "
                "(pass the previous step's PackedStep.sampled_rows())"
            ),
        ),
    ]
    for bad, message in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"chunk of sequence {chunks[i].seq_id}: {message(i)}")


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
