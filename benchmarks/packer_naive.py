"""The input packer written the obvious way: Python loops over ranks, chunks and tokens.

The baseline `shardspec.runtime.packer.pack` is measured against, and an
independent statement of the layout: tests check the two give identical arrays.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shardspec.runtime.packer import PackedStep
from shardspec.runtime.schedule import FROM_PREVIOUS_STEP, StepSchedule


def pack_naive(schedule: StepSchedule, sizes, prev_rows: Mapping[int, int] | None = None) -> PackedStep:
    R, page_size = sizes.dp_ranks, sizes.page_size
    by_rank = [[i for i, c in enumerate(schedule.chunks) if c.rank == r] for r in range(R)]
    busiest = max(sum(schedule.chunks[i].num_tokens for i in idx) for idx in by_rank)
    if busiest > sizes.token_buckets[-1]:
        raise ValueError(f"{busiest} tokens on one rank, more than the largest bucket")
    S = sizes.token_stride(busiest)
    Q = sizes.request_stride(S)

    token_ids, positions, token_rows = [0] * (R * S), [-1] * (R * S), [0] * (R * S)  # padding position -1
    prev, slots = [-1] * (R * S), [sizes.pages_per_rank * page_size] * (R * S)
    block_tables = [[0] * sizes.max_pages_per_seq for _ in range(R * Q)]
    seq_lens, query_starts, query_lens, logits_indices = ([0] * (R * Q) for _ in range(4))
    temperature, top_k, top_p = [0.0] * (R * Q), [0] * (R * Q), [1.0] * (R * Q)
    seeds, output_index, logprobs = [0] * (R * Q), [0] * (R * Q), [-1] * (R * Q)
    row_of_chunk = {}
    for r, idx in enumerate(by_rank):
        if len(idx) > Q:
            raise ValueError(f"rank {r} has {len(idx)} chunks, more than {Q}")
        t = 0  # next local token index on this rank
        for j, i in enumerate(idx):
            c, g = schedule.chunks[i], r * Q + j
            row_of_chunk[i] = g
            query_starts[g] = t
            for k, tok in enumerate(c.token_ids.tolist()):
                pos = c.start_pos + k
                token_ids[r * S + t] = tok
                positions[r * S + t] = pos
                slots[r * S + t] = int(c.block_table[pos // page_size]) * page_size + pos % page_size
                token_rows[r * S + t] = j
                if tok == FROM_PREVIOUS_STEP:
                    prev[r * S + t] = prev_rows[c.seq_id]
                t += 1
            for p, page in enumerate(c.block_table.tolist()):
                block_tables[g][p] = page
            seq_lens[g] = c.start_pos + c.num_tokens
            query_lens[g] = c.num_tokens
            logits_indices[g] = t - 1
            temperature[g], top_k[g], top_p[g] = c.sampling.temperature, c.sampling.top_k, c.sampling.top_p
            seeds[g] = c.sampling.seed % 2**32
            output_index[g] = c.output_index
            logprobs[g] = c.logprobs

    sampled = [i for i, c in enumerate(schedule.chunks) if c.sample]

    def i32(values):
        return np.array(values, np.int32)

    def f32(values):
        return np.array(values, np.float32)

    return PackedStep(
        token_ids=i32(token_ids),
        prev_rows=i32(prev),
        positions=i32(positions),
        slot_mapping=i32(slots),
        token_rows=i32(token_rows),
        block_tables=i32(block_tables),
        seq_lens=i32(seq_lens),
        query_starts=i32(query_starts),
        query_lens=i32(query_lens),
        logits_indices=i32(logits_indices),
        temperature=f32(temperature),
        top_k=i32(top_k),
        top_p=f32(top_p),
        seeds=np.array(seeds, np.uint32),
        output_index=i32(output_index),
        logprobs=i32(logprobs),
        selector=i32([row_of_chunk[i] for i in sampled]),
        sampled_seq_ids=np.array([schedule.chunks[i].seq_id for i in sampled], np.int64),
        real_tokens=sum(c.num_tokens for c in schedule.chunks),
        padded_tokens=R * S,
        token_stride=S,
        request_stride=Q,
    )
