"""The checkpoint target: a tests/fixtures/hf checkpoint with a mutated config.json (and friends)
-> validate / explain --model DIR."""

import json

from ..config import RUN_STRATEGY
from ..seeds import Seeds
from ..show import brief
from ..values import HF_KEYS, JSON_VALUES, ROPE_SCALINGS
from .cli import gen_cli
from .encode import text_file


def gen_checkpoint(rng, seeds: Seeds) -> dict:
    if not seeds.fixtures:
        return gen_cli(rng, seeds)
    name = rng.choice(["llama"] * 3 + seeds.fixtures) if "llama" in seeds.fixtures else rng.choice(seeds.fixtures)
    config = json.loads(json.dumps(seeds.configs[name]))
    replace, drop = {}, []
    desc, kind = _mutate(rng, config, replace, drop)
    replace.setdefault("config.json", text_file(json.dumps(config, indent=2)))
    strategy = rng.choice(["strategies/tp.yaml", "strategies/tp.yaml", RUN_STRATEGY])
    command = rng.choice([["validate"], ["explain"], ["explain", "--format", "json"]])
    src = f"tests/fixtures/hf/{name}"
    return {
        "kind": kind,
        "desc": f"$TMP/ckpt = {src} with {desc}",
        "files": {"ckpt": {"copytree": src, "replace": replace, "drop": drop}},
        "argv": [command[0], strategy, "--model", "{tmp}/ckpt", *command[1:]],
        "checks": {"json_stdout": "json" in command},
    }


def _mutate(rng, config: dict, replace: dict, drop: list[str]) -> tuple[str, str]:
    """One mutation, made in place: of `config`, or files to `replace` (name -> file) or `drop`.
    Returns (description, kind)."""
    op = rng.randrange(10)
    if op <= 3:
        key = rng.choice(HF_KEYS if rng.random() < 0.7 else sorted(config))
        value = rng.choice(JSON_VALUES)
        config[key] = value
        desc, kind = f"config.json {key} = {brief(value)}", f"config {key}"
    elif op == 4:
        key = rng.choice(sorted(config))
        del config[key]
        desc, kind = f"config.json without {key}", "config key removed"
    elif op == 5:
        config["rope_scaling"] = rng.choice(ROPE_SCALINGS)
        desc, kind = f"config.json rope_scaling = {brief(config['rope_scaling'])}", "rope_scaling"
    elif op == 6:
        value = rng.choice([[2, 3], [], "2", -1, 10**9, None, [2, 10**9], 2.0, [[2]], True])
        where = rng.choice(["config.json", "generation_config.json"])
        if where == "config.json":
            config["eos_token_id"] = value
        else:
            replace["generation_config.json"] = text_file(json.dumps({"eos_token_id": value}))
        desc, kind = f"{where} eos_token_id = {brief(value)}", "eos_token_id"
    elif op == 7:
        weight_map = rng.choice(
            [[], ["model.safetensors"], {"x": "missing.safetensors"}, {}, None, "model.safetensors"]
        )
        index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
        replace["model.safetensors.index.json"] = text_file(json.dumps(index))
        desc, kind = f"model.safetensors.index.json weight_map = {brief(weight_map)}", "safetensors index"
    elif op == 8:
        raw, kind = _broken_config(rng, config)
        replace["config.json"] = text_file(raw)
        desc = kind
    else:
        victim = rng.choice(["config.json", "tokenizer.json", "generation_config.json", "weights"])
        if victim == "tokenizer.json":
            replace["tokenizer.json"] = text_file(rng.choice(["", "{", "[]", '{"model": 5}']))
        elif victim == "weights":
            drop.append("*.safetensors")
        else:
            drop.append(victim)
        desc, kind = f"{victim} removed or broken", f"{victim} missing/broken"
    return desc, kind


def _broken_config(rng, config: dict) -> tuple[str, str]:
    """(text, kind) of a config.json that is not a readable config object."""
    return rng.choice(
        [
            ("", "empty config.json"),
            ("{", "truncated config.json"),
            ("[]", "config.json not an object"),
            ("null", "config.json not an object"),
            ('"llama"', "config.json not an object"),
            ("\ufeff" + json.dumps(config), "BOM config.json"),
            (json.dumps(config).replace('"vocab_size": 512', '"vocab_size": NaN'), "NaN in config.json"),
            ("[" * 100_000 + "]" * 100_000, "deep nesting config.json"),
            (json.dumps(config) + "\x00", "NUL after config.json"),
        ]
    )
