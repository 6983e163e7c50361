"""What the DP scheduler hands the input packer for one step.

A step is a list of chunks; each chunk is one sequence's work on its own DP
rank: some new tokens to run through the model (a prefill chunk, or the one
token of a decode) and, when the chunk reaches the end of what is known of the
sequence, one token to sample.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from .request import SamplingParams

# In `ScheduledChunk.token_ids`: "the token this sequence sampled in the
# previous step", not yet known on the host when the step is planned (async
# scheduling). The device fills it in from the previous step's samples.
FROM_PREVIOUS_STEP = -1


class ScheduledChunk(NamedTuple):
    # A NamedTuple, not a frozen dataclass: just as immutable, and three times
    # cheaper to build (the scheduler makes one per running sequence per step).
    seq_id: int  # engine-wide sequence number, stable for the request's life
    rank: int  # DP rank that owns the sequence's KV pages
    token_ids: np.ndarray  # int32 [n] new tokens; FROM_PREVIOUS_STEP allowed (decode only)
    start_pos: int  # tokens of the sequence already in the KV cache before this chunk
    block_table: np.ndarray  # int32, rank-local page ids covering start_pos + n tokens
    sample: bool  # True: sample one token after the chunk's last token
    sampling: SamplingParams
    output_index: int  # tokens the sequence generated before this sample (RNG fold-in)

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class StepSchedule:
    chunks: tuple[ScheduledChunk, ...]  # grouped by rank, ascending; in admission order within a rank
    step: int  # 0, 1, 2, ... in the order schedule() produced them

    def tokens_per_rank(self, dp_ranks: int) -> np.ndarray:
        out = np.zeros(dp_ranks, np.int64)
        for c in self.chunks:
            out[c.rank] += c.num_tokens
        return out

    def __len__(self) -> int:
        return len(self.chunks)
