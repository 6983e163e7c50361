"""Case generation (parent side): case i of a run is a pure function of (seed, i).

A case is a JSON-able dict: id, target, kind (the mutation, for grouping), desc (a one-line description),
files (name -> what to make under the case's $TMP), argv (with {tmp}) or, for the engine, engine and ops,
expect_ok (the input is valid: a user error rejects a valid input) and checks (output invariants).
"""

import random

from ..config import WEIGHTS
from ..seeds import Seeds
from .checkpoint import gen_checkpoint
from .cli import gen_cli
from .engine import gen_engine
from .requests import gen_requests
from .set import gen_set
from .strategy import gen_strategy

GENERATORS = {
    "strategy": gen_strategy,
    "set": gen_set,
    "requests": gen_requests,
    "checkpoint": gen_checkpoint,
    "cli": gen_cli,
    "engine": gen_engine,
}


def make_case(seeds: Seeds, seed: int, index: int, targets: list[str]) -> dict:
    """Case `index` of the run: which target (a fixed weighted cycle) and its input, from its own RNG."""
    cycle = [t for t in targets for _ in range(WEIGHTS[t])]
    target = cycle[index % len(cycle)]
    rng = random.Random(f"{seed}:{index}")
    case = GENERATORS[target](rng, seeds)
    case.update(id=index, target=target)
    case.setdefault("files", {})
    case.setdefault("expect_ok", False)
    case.setdefault("checks", {})
    return case
