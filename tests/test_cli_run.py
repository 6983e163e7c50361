"""`shardspec run` through typer's CliRunner."""

import json

from typer.testing import CliRunner

from shardspec.cli.main import app

from conftest import ROOT

runner = CliRunner()
DP = str(ROOT / "strategies" / "dp.yaml")
FAST = ["--set", "runtime.max_num_batched_tokens=32", "--set", "runtime.max_num_seqs=8"]


def test_run_prompts_to_output_in_input_order_with_json_metrics(tmp_path):
    prompts = tmp_path / "in.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "z", "prompt_token_ids": list(range(1, 40)), "max_tokens": 5, "ignore_eos": True},
                {"id": "a", "prompt_token_ids": [7], "max_tokens": 2, "ignore_eos": True},
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["run", DP, "--prompts", str(prompts), "--output", str(out), "--json", *FAST])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["generated_tokens"] == 7 and metrics["compiles"] == 3  # buckets 8, 16, 32
    assert metrics["step_costs"] == "measured" and set(metrics["step_costs_ms"]) == {"8", "16", "32"}
    cache = (metrics["cached_prompt_tokens"], metrics["computed_prompt_tokens"], metrics["prefix_hit_rate"])
    assert cache == (0, 40, 0)
    assert sum(metrics["per_rank_computed_prompt_tokens"]) == 40
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["z", "a"]
    assert [len(r["output_token_ids"]) for r in rows] == [5, 2]
    assert {r["finish_reason"] for r in rows} == {"length"}


def test_run_synthetic_prints_a_summary_table():
    result = runner.invoke(app, ["run", DP, "-n", "4", "--input-len", "3:9", "--output-len", "2", *FAST])
    assert result.exit_code == 0, result.output
    assert "padding efficiency" in result.stdout and "length 4" in result.stdout


def test_bad_request_file_exits_2_before_anything_runs(tmp_path):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt_token_ids": [1, 2]}\n{"prompt_token_ids": [1, 100000]}\n')
    result = runner.invoke(app, ["run", DP, "--prompts", str(prompts)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {prompts}:2: prompt_token_ids: token id 100000 is outside the "
        "vocabulary (ids must be below vocab_size 512)\n"
    )


def test_bad_lengths_exit_2():
    result = runner.invoke(app, ["run", DP, "--input-len", "9:3"])
    assert result.exit_code == 2 and "--input-len: '9:3' is not a length" in result.stderr
