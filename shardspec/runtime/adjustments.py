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

from .slots import Slots, _offsets

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
    None when no sampled chunk asks (the step runs the program without them). The rows' known
    tokens are counted together, with numpy; only logit_bias and min_tokens are read per row."""
    rows = np.flatnonzero(sample & slots.adjusts[g])
    if not len(rows):
        return None
    params = [slots.seq[slot].request.sampling for slot in g[rows].tolist()]
    presence, frequency, repetition = (np.array(column, np.float32) for column in zip(*(_penalties(p) for p in params)))
    row, token, count = _history(slots, g[rows], presence, frequency, repetition)
    bias_row, bias_token, bias = _biases(slots, g[rows], params, output_index[rows])
    # One entry a (row, token): the history's count (-1 where only a bias names it), its biases summed
    # (-inf stays -inf).
    keys, at = np.unique(np.concatenate([row << 32 | token, bias_row << 32 | bias_token]), return_inverse=True)
    counts = np.full(len(keys), -1, np.int64)
    counts[at[: len(row)]] = count
    biases = np.bincount(at[len(row) :], weights=bias, minlength=len(keys)).astype(np.float32)
    entry_row, entry_token = keys >> 32, keys & 0xFFFFFFFF
    per_row = np.bincount(entry_row, minlength=len(rows))
    width = max(MIN_WIDTH, 1 << (int(per_row.max()) - 1).bit_length())
    column = np.arange(len(keys)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    C = len(g)
    out = {name: np.full((C, width), FILLS[name], dtype) for name, dtype in _TABLES.items()}
    for name, values in (("ids", entry_token), ("counts", counts), ("bias", biases)):
        out[name][rows[entry_row], column] = values
    scalars = {name: np.full(C, FILLS[name], np.float32) for name in ("presence", "frequency", "repetition")}
    scalars["presence"][rows], scalars["frequency"][rows], scalars["repetition"][rows] = presence, frequency, repetition
    return Adjustments(**out, **scalars)


_TABLES = {"ids": np.int32, "counts": np.int32, "bias": np.float32}


def _penalties(p) -> tuple[float, float, float]:
    return p.presence_penalty, p.frequency_penalty, p.repetition_penalty


def _history(slots: Slots, gs: np.ndarray, presence, frequency, repetition):
    """(row, token, count) of every distinct token a row's penalties read: its output tokens
    (counted) when it has any penalty, its prompt's (count 0 unless in the output too) when it
    has a repetition penalty. Rows are 0.. len(gs) - 1."""
    prompt_len = slots.prompt_len[gs]
    known = prompt_len + slots.received[gs]
    row = np.repeat(np.arange(len(gs)), known)
    pos = _offsets(known)
    is_output = pos >= prompt_len[row]
    reads_outputs = (presence != 0) | (frequency != 0) | (repetition != 1)
    keep = np.where(is_output, reads_outputs[row], repetition[row] != 1)
    row, pos, is_output = row[keep], pos[keep], is_output[keep]
    keys, at = np.unique(row.astype(np.int64) << 32 | slots.tokens[gs[row], pos], return_inverse=True)
    return keys >> 32, keys & 0xFFFFFFFF, np.bincount(at, weights=is_output, minlength=len(keys)).astype(np.int64)


def _biases(slots: Slots, gs: np.ndarray, params, outputs_before: np.ndarray):
    """(row, token, bias) of each row's logit_bias, and -inf on its stop tokens while it has
    fewer than min_tokens outputs."""
    row, token, bias = [], [], []
    for i, (g, p) in enumerate(zip(gs.tolist(), params)):
        entries = list(p.logit_bias)
        if outputs_before[i] < p.min_tokens:
            stops = slots.stops[g]
            entries += [(t, -np.inf) for t in stops[stops >= 0].tolist()]
        row += [i] * len(entries)
        token += [t for t, _ in entries]
        bias += [b for _, b in entries]
    return np.array(row, np.int64), np.array(token, np.int64), np.array(bias, np.float64)
