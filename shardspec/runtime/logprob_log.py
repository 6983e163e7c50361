"""The log-probabilities the requests that asked for them (`logprobs: N`) collect.

Per such request: how many top tokens it wants, and one TokenLogprob per output
token so far, handed over with its Output. The step computes logprobs only for
the rows whose request asked (`rows`), and they are read back only in steps
where one did (`attach`).
"""

from __future__ import annotations

import numpy as np

from ..distributed import fetch
from .packer import PackedStep
from .request import TokenLogprob


class LogprobLog:
    def __init__(self):
        self._wanted: dict[str, tuple[int, list[TokenLogprob]]] = {}  # request -> (top N, one per token)

    def __bool__(self) -> bool:
        return bool(self._wanted)

    def follow(self, request_id: str, top: int) -> None:
        self._wanted[request_id] = (top, [])

    def rows(self, packed: PackedStep, request_id) -> np.ndarray | None:
        """Each request row's top logprobs wanted (-1: none) for the step's device batch;
        `request_id(seq_id)` names a row's request."""
        if not self._wanted:
            return None
        rows = np.full(len(packed.seq_lens), -1, np.int32)
        for row, seq_id in zip(packed.selector.tolist(), packed.sampled_seq_ids.tolist()):
            wanted = self._wanted.get(request_id(seq_id))
            if wanted is not None:
                rows[row] = wanted[0]
        return rows

    def attach(self, new, sampled, output_rows) -> list[tuple[str, int, TokenLogprob | None]]:
        """A step's (request id, token, sample index) as (request id, token, its logprob if
        asked); `sampled` is the step's StepSamples, `output_rows` its sampled rows."""
        if not self._wanted or not any(rid in self._wanted for rid, _, _ in new):
            return [(rid, token, None) for rid, token, _ in new]
        lp, top, ids = (fetch(x)[output_rows] for x in (sampled.logprob, sampled.top_logprobs, sampled.top_ids))
        out = []
        for rid, token, k in new:
            entry = None
            if rid in self._wanted:
                n, log = self._wanted[rid]
                entry = TokenLogprob(token, float(lp[k]), tuple(zip(ids[k, :n].tolist(), top[k, :n].tolist())))
                log.append(entry)
            out.append((rid, token, entry))
        return out

    def take(self, request_id: str) -> tuple[TokenLogprob, ...] | None:
        """A finished request's logprobs (None if it asked for none); forgotten here."""
        entry = self._wanted.pop(request_id, None)
        return tuple(entry[1]) if entry is not None else None
