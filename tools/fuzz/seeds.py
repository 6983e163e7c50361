"""The checkout's seed inputs the generators mutate."""

import json
from pathlib import Path


class Seeds:
    """The checkout's seed inputs: strategies, examples, checkpoint fixtures, schema keys."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.strategies = sorted(str(p.relative_to(repo)) for p in (repo / "strategies").glob("*.yaml"))
        examples = sorted(str(p.relative_to(repo)) for p in (repo / "examples").glob("*.yaml"))
        if not self.strategies:
            raise SystemExit(f"fuzz: no strategies/*.yaml under {repo} (run from a checkout or pass --repo)")
        self.files = self.strategies + examples
        self.texts = {f: (repo / f).read_text(encoding="utf-8") for f in self.files}
        hf = repo / "tests" / "fixtures" / "hf"
        self.fixtures = sorted(p.name for p in hf.iterdir() if (p / "config.json").is_file()) if hf.is_dir() else []
        self.configs = {n: json.loads((hf / n / "config.json").read_text()) for n in self.fixtures}
        self.keys = _schema_keys(repo / "shardspec" / "strategy.schema.json")


def _schema_keys(path: Path) -> list[str]:
    """Every dotted key path of the strategy schema's properties."""
    try:
        schema = json.loads(path.read_text())
    except (OSError, ValueError):
        return ["parallelism.tensor", "runtime.routing"]
    out = []

    def walk(prefix, node):
        for key, sub in (node.get("properties") or {}).items():
            out.append(prefix + key)
            if isinstance(sub, dict):
                walk(prefix + key + ".", sub)

    walk("", schema)
    return out
