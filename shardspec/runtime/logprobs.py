"""A step's log-probabilities, read back for the tokens whose request asked (`logprobs: N`).

The number of top logprobs a request wants travels with its chunks like any
other per-request value (`StepSchedule.logprobs`, packed by the packer's one
reordering); the device computes them only for rows that ask, and the host
reads them back only in steps where some row did.
"""

from __future__ import annotations

import numpy as np

from ..distributed import fetch
from .request import TokenLogprob
from .schedule import StepSchedule

# (request id, token, its logprob if the request asked)
NewToken = tuple[str, int, TokenLogprob | None]


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
