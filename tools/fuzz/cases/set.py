"""The set target: a valid strategy with hostile --set key=value overrides -> validate / explain."""

from ..seeds import Seeds
from ..show import brief
from ..values import YAML_VALUES

SET_KEYS = [
    "nonexistent",
    "parallelism.nonexistent",
    "parallelism..tensor",
    ".parallelism",
    "parallelism.",
    "parallelism.tensor.x",
    "params[0].match",
    "params[0]",
    "params[-1].axes",
    "params[99999999999].match",
    "params.0.match",
    "rules.batch",
    "rules.nonexistent",
    "rules.batch[0]",
    "rules",
    "params",
    "expect.per_layer.all-reduce",
    "expect.total.nope",
    "runtime",
    "parallelism",
    " ",
    "x" * 5000,
    "λ",
    "parallelism.tensor\u2028",
    "parallelism\x00.tensor",
    "[0]",
    "parallelism[0]",
    "__class__",
    "parallelism.tensor ",
    "PARALLELISM.TENSOR",
]


def gen_set(rng, seeds: Seeds) -> dict:
    seed_file = rng.choice(seeds.strategies)
    sets, kinds = [], []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        key = rng.choice(seeds.keys) if rng.random() < 0.6 else rng.choice(SET_KEYS)
        kind, value = rng.choice(YAML_VALUES)
        sets.append(f"{key}={value}")
        kinds.append(kind)
    if rng.random() < 0.05:
        sets.append(rng.choice(["=", "=8", "novalue", "a=b=c", ""]))
        kinds.append("malformed --set")
    command = rng.choice(["validate", "validate", "validate", "explain"])
    argv = [command, seed_file] + [a for s in sets for a in ("--set", s)]
    return {
        "kind": kinds[0],
        "desc": f"{seed_file} with " + " ".join(f"--set {brief(s)}" for s in sets),
        "argv": argv,
    }
