"""A step's log-probabilities, read back for the tokens whose request asked (`logprobs: N`,
`prompt_logprobs: N`).

The number of top logprobs a request wants travels with its chunks like any
other per-request value (`StepSchedule.logprobs`, packed by the packer's one
reordering); the device computes them only for rows that ask, and the host
reads them back only in steps where some row did. A prompt's logprobs come
from the logits at every prompt token (`StepSchedule.prompt_targets`: the
token after each), in the steps that compute them; a position computed twice
(a preempted request recomputes its prompt) gives the same entry twice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..distributed import fetch
from .packer import PackedStep
from .request import Request, TokenLogprob
from .schedule import StepSchedule

# (request id, token, its logprob if the request asked)
NewToken = tuple[str, int, TokenLogprob | None]
# (request id, a prompt position >= 1, that prompt token's logprob)
PromptLogprob = tuple[str, int, TokenLogprob]


def with_logprobs(new: list[tuple[str, int, int]], schedule: StepSchedule, sampled, rows: np.ndarray) -> list[NewToken]:
    """A step's (request id, token, index among its samples) as (request id, token, logprob):
    `sampled` is the step's StepSamples, `rows` the rows of its samples in them."""
    wanted = schedule.logprobs[schedule.sample]  # per sample: top N, or -1
    if not len(new) or not (wanted >= 0).any():
        return [(rid, token, None) for rid, token, _ in new]
    lp, top, ids = (fetch(x)[rows] for x in (sampled.logprob, sampled.top_logprobs, sampled.top_ids))
    out = []
    for rid, token, k in new:
        n = int(wanted[k])
        entry = (
            None if n < 0 else TokenLogprob(token, float(lp[k]), tuple(zip(ids[k, :n].tolist(), top[k, :n].tolist())))
        )
        out.append((rid, token, entry))
    return out


def prompt_logprobs(
    schedule: StepSchedule, packed: PackedStep, sampled, request_of: Callable[[int], Request | None]
) -> list[PromptLogprob]:
    """A step's prompt logprobs, for a step with prompt targets: `sampled` its StepSamples,
    `request_of(seq_id)` the request of an unfinished sequence (None: it finished meanwhile)."""
    wanted = schedule.prompt_targets >= 0
    seq_ids, positions = schedule.token_seq_ids()[wanted], schedule.token_positions()[wanted]
    targets = schedule.prompt_targets[wanted]
    arrays = (sampled.prompt_logprob, sampled.prompt_top_logprobs, sampled.prompt_top_ids)
    lp, top, ids = (fetch(x)[packed.prompt_rows] for x in arrays)
    out = []
    for k, (seq_id, position, target) in enumerate(zip(seq_ids.tolist(), positions.tolist(), targets.tolist())):
        request = request_of(seq_id)
        if request is None:
            continue
        n = request.prompt_logprobs
        top_n = tuple(zip(ids[k, :n].tolist(), top[k, :n].tolist()))
        out.append((request.id, position + 1, TokenLogprob(target, float(lp[k]), top_n)))
    return out
