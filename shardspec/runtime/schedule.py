"""What the DP scheduler hands the input packer for one step, as columns.

A step is a list of chunks; each chunk is one sequence's work on its own DP
rank: some new tokens to run through the model (a prefill chunk, or the one
token of a decode) and, when the chunk reaches the end of what is known of the
sequence, one token to sample. `StepSchedule` holds them as arrays, one entry
per chunk (grouped by rank, ascending; in admission order within a rank), so
that neither the scheduler nor the packer builds an object per chunk; `chunks`
gives the same step as `ScheduledChunk`s, for tests and for reading.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .adjustments import Adjustments
from .request import SamplingParams
from .slots import _offsets

# In `token_ids`: "the token this sequence sampled in the previous step", not yet
# known on the host when the step is planned (async scheduling). The device
# fills it in from the previous step's samples.
FROM_PREVIOUS_STEP = -1


class ScheduledChunk(NamedTuple):
    seq_id: int  # engine-wide sequence number, stable for the request's life
    rank: int  # DP rank that owns the sequence's KV pages
    token_ids: np.ndarray  # int32 [n] new tokens; FROM_PREVIOUS_STEP allowed (decode only)
    start_pos: int  # tokens of the sequence already in the KV cache before this chunk
    block_table: np.ndarray  # int32, rank-local page ids covering start_pos + n tokens
    sample: bool  # True: sample one token after the chunk's last token
    sampling: SamplingParams
    output_index: int  # tokens the sequence generated before this sample (RNG fold-in)
    logprobs: int = -1  # top logprobs its sample returns (-1: none, the sampled one's skipped too)

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class StepSchedule:
    """One step's chunks as columns [C] (and the tokens of all chunks, concatenated [T])."""

    step: int  # 0, 1, 2, ... in the order schedule() produced them
    seq_ids: np.ndarray  # int64 [C]
    ranks: np.ndarray  # int64 [C]
    starts: np.ndarray  # int64 [C] tokens already in the KV cache
    num_tokens: np.ndarray  # int64 [C] >= 1
    sample: np.ndarray  # bool [C]
    token_ids: np.ndarray  # int32 [T] chunk by chunk; FROM_PREVIOUS_STEP allowed
    block_tables: np.ndarray  # int32 [C, W], zero beyond n_pages
    n_pages: np.ndarray  # int64 [C]
    temperature: np.ndarray  # float32 [C]
    top_k: np.ndarray  # int32 [C]
    top_p: np.ndarray  # float32 [C]
    seed: np.ndarray  # uint32 [C]
    output_index: np.ndarray  # int32 [C]
    logprobs: np.ndarray  # int32 [C] top logprobs each chunk's sample returns; -1: none (or no sample)
    slots: np.ndarray | None = None  # int64 [C] the scheduler's slot of each chunk (for update)
    # Only in steps where some chunk asks (the step then runs a program that reads them):
    adjustments: Adjustments | None = None  # what the sampler changes in rows' logits first
    masks: np.ndarray | None = None  # int32 [C, ceil(V/32)] bits of the tokens each sample may take (structured.py)
    prompt_targets: np.ndarray | None = None  # int32 [T] the prompt token after each, its logprob wanted; else -1

    def __post_init__(self):
        for name in _COLUMNS:  # a step is a value: nobody writes into it afterwards
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False

    def __len__(self) -> int:
        return len(self.seq_ids)

    def token_seq_ids(self) -> np.ndarray:
        """int64 [T] each token's sequence."""
        return np.repeat(self.seq_ids, self.num_tokens)

    def token_positions(self) -> np.ndarray:
        """int64 [T] each token's position in its sequence."""
        return np.repeat(self.starts, self.num_tokens) + _offsets(self.num_tokens)

    def tokens_per_rank(self, dp_ranks: int) -> np.ndarray:
        return np.bincount(self.ranks, weights=self.num_tokens, minlength=dp_ranks).astype(np.int64)

    @functools.cached_property
    def chunks(self) -> tuple[ScheduledChunk, ...]:
        """The step as one `ScheduledChunk` per chunk (built on first use)."""
        ends = np.cumsum(self.num_tokens)
        return tuple(
            ScheduledChunk(
                int(self.seq_ids[i]),
                int(self.ranks[i]),
                self.token_ids[ends[i] - self.num_tokens[i] : ends[i]],
                int(self.starts[i]),
                self.block_tables[i, : self.n_pages[i]],
                bool(self.sample[i]),
                SamplingParams(float(self.temperature[i]), int(self.top_k[i]), float(self.top_p[i]), int(self.seed[i])),
                int(self.output_index[i]),
                int(self.logprobs[i]),
            )
            for i in range(len(self))
        )

    @classmethod
    def empty(cls, step: int) -> StepSchedule:
        return cls.from_chunks((), step)

    @classmethod
    def from_chunks(cls, chunks: Sequence[ScheduledChunk], step: int) -> StepSchedule:
        """Columns from chunks (tests, and callers that build steps by hand)."""
        width = max((len(c.block_table) for c in chunks), default=0)
        tables = np.zeros((len(chunks), width), np.int32)
        for i, c in enumerate(chunks):
            tables[i, : len(c.block_table)] = c.block_table

        def column(get, dtype):
            return np.array([get(c) for c in chunks], dtype)

        return cls(
            step=step,
            seq_ids=column(lambda c: c.seq_id, np.int64),
            ranks=column(lambda c: c.rank, np.int64),
            starts=column(lambda c: c.start_pos, np.int64),
            num_tokens=column(lambda c: len(c.token_ids), np.int64),
            sample=column(lambda c: c.sample, bool),
            token_ids=np.concatenate([np.zeros(0, np.int32), *(np.asarray(c.token_ids) for c in chunks)]).astype(
                np.int32
            ),
            block_tables=tables,
            n_pages=column(lambda c: len(c.block_table), np.int64),
            temperature=column(lambda c: c.sampling.temperature, np.float32),
            top_k=column(lambda c: c.sampling.top_k, np.int32),
            top_p=column(lambda c: c.sampling.top_p, np.float32),
            seed=column(lambda c: c.sampling.seed & 0xFFFFFFFF, np.uint32),
            output_index=column(lambda c: c.output_index, np.int32),
            logprobs=column(lambda c: c.logprobs if c.sample else -1, np.int32),
        )


_COLUMNS = tuple(f.name for f in dataclasses.fields(StepSchedule) if f.name != "step")
