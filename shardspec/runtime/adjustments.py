"""What the sampler changes in a row's logits before it draws: penalties, logit_bias, min_tokens.

vLLM's definitions, in vLLM's order: a request's `logit_bias` is added to its
tokens' logits (and -inf to its end-of-sequence and stop tokens while it has
fewer than `min_tokens` outputs); then a token in its prompt or output has
its logit divided by `repetition_penalty` if positive, multiplied if not;
then each output token's logit loses `frequency_penalty` × its count and
`presence_penalty` once.

Only rows that ask pay: the host lists, for each such sampled row, the tokens
its rules touch (a few columns [C, W], W a power of two so that few programs
compile), and the step applies them on the device (`sampler.adjust`) in a
program of its own, run only in steps where some row asks. Under async
scheduling the host has not seen a row's latest output yet; the device counts
it (the decode's input token, `FROM_PREVIOUS_STEP`) itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .slots import Slots

MIN_WIDTH = 16  # the fewest token columns a step's adjustments have (then powers of two)

# Each column's value where a chunk has no adjustments, as the packer pads with it.
FILLS = {"ids": -1, "counts": -1, "bias": 0.0, "presence": 0.0, "frequency": 0.0, "repetition": 1.0}


@dataclasses.dataclass(frozen=True, eq=False)
class Adjustments:
    """One step's adjustments, a row per chunk (chunks with none hold the FILLS)."""

    ids: np.ndarray  # int32 [C, W] the tokens a row's rules touch; -1 padding
    counts: np.ndarray  # int32 [C, W] each one's count in the known output; 0 prompt only; -1 neither (a bias alone)
    bias: np.ndarray  # float32 [C, W] added first: logit_bias, and -inf on stop tokens before min_tokens
    presence: np.ndarray  # float32 [C]
    frequency: np.ndarray  # float32 [C]
    repetition: np.ndarray  # float32 [C]

    def columns(self) -> dict[str, tuple[np.ndarray, object]]:
        """{name: (values, fill)}: as the packer lays out per-request columns."""
        return {f"adjust_{name}": (getattr(self, name), fill) for name, fill in FILLS.items()}


def for_step(slots: Slots, g: np.ndarray, sample: np.ndarray, output_index: np.ndarray) -> Adjustments | None:
    """The adjustments of a step's chunks (slots `g`, whether each samples, outputs before its sample);
    None when no sampled chunk asks (the step runs the program without them)."""
    rows = np.flatnonzero(sample & slots.adjusts[g])
    if not len(rows):
        return None
    entries = [_entries(slots, int(g[i]), int(output_index[i])) for i in rows]
    width = max(MIN_WIDTH, 1 << (max(len(ids) for ids, _, _ in entries) - 1).bit_length())
    C = len(g)
    ids, counts = np.full((C, width), -1, np.int32), np.full((C, width), -1, np.int32)
    bias = np.zeros((C, width), np.float32)
    presence, frequency, repetition = np.zeros(C, np.float32), np.zeros(C, np.float32), np.ones(C, np.float32)
    for i, (row_ids, row_counts, row_bias) in zip(rows, entries):
        k = len(row_ids)
        ids[i, :k], counts[i, :k], bias[i, :k] = row_ids, row_counts, row_bias
        p = slots.seq[g[i]].request.sampling
        presence[i], frequency[i], repetition[i] = p.presence_penalty, p.frequency_penalty, p.repetition_penalty
    return Adjustments(ids, counts, bias, presence, frequency, repetition)


def _entries(slots: Slots, g: int, outputs_before: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, counts, bias) of one row: every token its rules touch, once, ascending."""
    p = slots.seq[g].request.sampling
    prompt_len = int(slots.prompt_len[g])
    known = slots.tokens[g, : prompt_len + int(slots.received[g])]
    counts: dict[int, int] = {}
    if p.repetition_penalty != 1.0:  # it reads the prompt too
        counts.update(dict.fromkeys(np.unique(known[:prompt_len]).tolist(), 0))
    if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
        ids, times = np.unique(known[prompt_len:], return_counts=True)
        counts.update(zip(ids.tolist(), times.tolist()))
    bias = dict(p.logit_bias)
    if outputs_before < p.min_tokens:
        stops = slots.stops[g]
        bias.update(dict.fromkeys(stops[stops >= 0].tolist(), -np.inf))
    tokens = np.array(sorted(counts.keys() | bias.keys()), np.int32)
    return (
        tokens,
        np.array([counts.get(t, -1) for t in tokens.tolist()], np.int32),
        np.array([bias.get(t, 0.0) for t in tokens.tolist()], np.float32),
    )
