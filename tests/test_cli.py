"""The command line through typer's CliRunner: output, exit codes, error lines."""

import json

import pytest
from typer.testing import CliRunner

from shardspec.cli.main import app

from conftest import ROOT

runner = CliRunner()
ATTN = str(ROOT / "strategies" / "attention_dp.yaml")


def run(*args):
    return runner.invoke(app, list(args))


def test_validate_ok():
    result = run("validate", ATTN)
    assert result.exit_code == 0
    assert "ok:" in result.stdout and "4 DP ranks" in result.stdout


def test_explain_text_and_json():
    result = run("explain", ATTN)
    assert result.exit_code == 0 and result.stdout.startswith("strategy attention-dp · model llama3-tiny")
    result = run("explain", ATTN, "--format", "json")
    assert json.loads(result.stdout)["attention_data"] == 4


def test_explain_model_flag_and_set_override():
    result = run("explain", ATTN, "--model", "llama3-8b", "--set", "parallelism.attention_data=2", "--format", "json")
    out = json.loads(result.stdout)
    assert result.exit_code == 0 and out["model"] == "llama3-8b"
    assert out["mesh"]["axes"] == {"data": 1, "attn_dp": 2, "expert": 1, "model": 4}


def test_check_passes_and_prints_the_tolerance():
    result = run("check", ATTN)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("PASS:") and "tolerance" in result.stdout


def test_models_lists_every_preset():
    result = run("models")
    assert result.exit_code == 0
    for name in ("llama3-tiny", "llama3-small", "llama3-8b", "llama3-70b", "deepseek-v3", "deepseek-v2-lite"):
        assert name in result.stdout
    v3 = next(line for line in result.stdout.splitlines() if line.startswith("deepseek-v3 "))
    assert v3.split()[4] == "mla" and "latent 512 + rope 64" in v3  # no KV heads: one latent a token


@pytest.mark.parametrize(
    "args, expected",
    [
        (["validate", "missing.yaml"], "error: missing.yaml: file not found"),
        (["explain", ATTN, "--model", "llama3-tin"], "unknown model 'llama3-tin' (did you mean 'llama3-tiny'?"),
        (
            ["validate", ATTN, "--set", "runtime.routing=fastest"],
            "error: --set: runtime.routing: 'fastest' is not one of",
        ),
        (["validate", ATTN, "--set", "nonsense"], "error: --set: 'nonsense' is not key.path=value"),
        (
            ["check", ATTN, "--set", "parallelism.tensor=16", "--set", "parallelism.attention_data=1"],
            "parallelism.tensor: layers.0.self_attn.o_proj: dim 0 (heads = 8) is not divisible by 16 shards",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line_per_problem_and_no_traceback(args, expected):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert all(line.startswith("error: ") for line in result.stderr.splitlines())


def test_bad_strategy_file_names_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: llama3-tiny\nparallelism:\n  tensor: 8\n  attention_data: 3\n")
    result = run("validate", str(bad))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {bad}:4: parallelism.attention_data: 3 does not divide tensor=8 (use 1, 2, 4 or 8, or auto)\n"
    )


def test_debug_shows_the_traceback():
    result = run("--debug", "validate", "missing.yaml")
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_usage_errors_exit_2():
    assert run("explain", ATTN, "--format", "yaml").exit_code == 2


FACTORY_MODULE = '''
import jax
from flax import nnx


class Plain(nnx.Module):
    """No logical axes: the strategy's params: name them."""

    def __init__(self, rngs):
        self.up = nnx.Linear(64, 256, rngs=rngs)
        self.down = nnx.Linear(256, 64, rngs=rngs)


def build():
    return nnx.eval_shape(lambda: Plain(nnx.Rngs(0)))


def broken():
    raise RuntimeError("no weights here")
'''
FACTORY_STRATEGY = """
parallelism: {tensor: 8}
rules: {hidden: null, ffn: model}
params:
  - {match: 'up\\.kernel$', axes: [hidden, ffn]}
  - {match: 'up\\.bias$', axes: [ffn]}
  - {match: 'down\\.kernel$', axes: [ffn, hidden]}
  - {match: 'down\\.bias$', axes: [hidden]}
"""


def test_an_outside_model_from_package_module_factory(tmp_path, monkeypatch):
    """`--model package.module:factory`: the current directory's code, compiled like any outside model."""
    (tmp_path / "factory_models.py").write_text(FACTORY_MODULE)
    strategy = tmp_path / "plain.yaml"
    strategy.write_text(FACTORY_STRATEGY)
    monkeypatch.chdir(tmp_path)
    result = run("validate", str(strategy), "--model", "factory_models:build")
    assert result.exit_code == 0, result.output
    result = run("explain", str(strategy), "--model", "factory_models:build", "--format", "json")
    assert result.exit_code == 0, result.output
    layout = {p["path"]: p["spec"] for p in json.loads(result.stdout)["params"]}
    assert layout["up.kernel"] == [None, "model"] and layout["down.kernel"] == ["model", None]
    for spec, words in [
        ("no_such_module:build", "cannot import no_such_module"),
        ("factory_models:nothing", "factory_models has no attribute 'nothing'"),
        ("factory_models:broken", "factory_models:broken() raised RuntimeError: no weights here"),
    ]:
        result = run("validate", str(strategy), "--model", spec)
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, result.output


def test_check_and_explain_hlo_take_an_outside_servable_model_from_its_factory(monkeypatch):
    """`check --model` compares the factory's model with its own unsharded forward, and
    `explain --hlo --model` compiles its served step."""
    monkeypatch.chdir(ROOT / "examples")
    result = run("check", "gpt2.yaml", "--model", "gpt2_nnx:build")
    assert result.exit_code == 0 and result.stdout.startswith("PASS"), result.output
    result = run("explain", "gpt2.yaml", "--model", "gpt2_nnx:build", "--hlo", "--format", "json")
    assert result.exit_code == 0, result.output
    hlo = json.loads(result.stdout)["hlo"]
    assert hlo["per_layer_basis"] == "step" and hlo["collectives"]["all-reduce"] > 0


def test_run_serves_an_outside_servable_model_its_factory_makes(monkeypatch):
    """`run --model package.module:factory`: the module the factory returns, with its weights, is what runs."""
    monkeypatch.chdir(ROOT / "examples")
    result = run("run", "gpt2.yaml", "--model", "gpt2_nnx:build", "--num-requests", "3", "--output-len", "4", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["generated_tokens"] == 12
