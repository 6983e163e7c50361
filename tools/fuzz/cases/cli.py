"""The cli target: hostile flags and paths (empty, missing, NUL, /dev/zero, FIFO, directory, symlink loop,
50 MB file ...) on validate / explain / run."""

from ..config import FAST, RUN_STRATEGY
from ..seeds import Seeds
from ..show import brief
from .encode import jsonl, text_file

_VALID_STRATEGY = "name: fifo\nmodel: llama3-tiny\nparallelism: {data: 1, tensor: 8, attention_data: auto, expert: 1}\n"


def _odd_path(rng) -> tuple[str, dict, str]:
    """(path argument, files to make, kind) of a hostile path."""
    kind = rng.choice(
        [
            "/dev/zero",
            "/dev/null",
            "/dev/stdin",
            "/dev/full",
            "fifo",
            "directory",
            "symlink loop",
            "dangling symlink",
            "50 MB file",
            "NUL in path",
            "empty path",
            "dash",
            "missing",
            "long name",
            "newline in path",
        ]
    )
    path, files = {
        "/dev/zero": ("/dev/zero", {}),
        "/dev/null": ("/dev/null", {}),
        "/dev/stdin": ("/dev/stdin", {}),
        "/dev/full": ("/dev/full", {}),
        "fifo": ("{tmp}/fifo", {"fifo": {"fifo": True}}),
        "directory": ("{tmp}/dir", {"dir": {"dir": True}}),
        "symlink loop": ("{tmp}/loop_a", {"loop_a": {"symlink": "loop_b"}, "loop_b": {"symlink": "loop_a"}}),
        "dangling symlink": ("{tmp}/dangling", {"dangling": {"symlink": "nowhere"}}),
        "50 MB file": ("{tmp}/big", {"big": {"repeat": rng.choice(["x", "\n", "# c\n", "9"]), "bytes": 50 << 20}}),
        "NUL in path": ("abc\x00", {}),
        "empty path": ("", {}),
        "dash": ("-", {}),
        "missing": ("/no/such/dir/file", {}),
        "long name": ("{tmp}/" + "n" * 300, {}),
        "newline in path": ("{tmp}/a\nb.yaml", {}),
    }[kind]
    return path, files, kind


def gen_cli(rng, seeds: Seeds) -> dict:
    strategy = rng.choice(seeds.strategies)
    small_run = ["run", RUN_STRATEGY, "-n", "1", "--input-len", "2", "--output-len", "1", *FAST]
    made = _MAKERS[rng.randrange(12)](rng, strategy, small_run)
    return {
        "kind": made["kind"],
        "desc": made["kind"],
        "files": made.get("files", {}),
        "argv": made["argv"],
        "expect_ok": made.get("expect_ok", False),
        "checks": made.get("checks", {}),
    }


# Each maker: (rng, a seed strategy, a small `run` command line) -> {"argv", "kind"[, "files", "checks",
# "expect_ok"]}.


def _model_flag(rng, strategy: str, small_run: list[str]) -> dict:
    files = {}
    model = rng.choice(
        [
            "",
            "/no/such/dir",
            "strategies/tp.yaml",
            "{tmp}/empty",
            "abc\x00",
            "llama3-tiny ",
            "LLAMA3-TINY",
            "..",
            "~",
        ]
    )
    if model == "{tmp}/empty":
        files["empty"] = {"dir": True}
    command = rng.choice(["validate", "explain"])
    return {"argv": [command, strategy, "--model", model], "kind": f"--model {brief(model)}", "files": files}


def _length_flag(rng, strategy: str, small_run: list[str]) -> dict:
    flag = rng.choice(["--input-len", "--output-len"])
    value = rng.choice(
        ["1000000000", "1:999999", "0", "-1", "a", "3:2", "1:2:3", " 4", "٣", "1_0", "4:", ":4", "", "1e3", "0x10"]
        + ["9" * 30, "1:1000000000"]
    )
    argv = ["run", RUN_STRATEGY, "-n", "1", flag, value, *FAST]
    argv += ["--output-len", "1"] if flag == "--input-len" else ["--input-len", "2"]
    return {"argv": argv, "kind": f"{flag} {brief(value)}"}


def _count_flag(rng, strategy: str, small_run: list[str]) -> dict:
    value = rng.choice(["0", "-1", "a", str(10**12), "1.5", ""])
    return {"argv": ["run", RUN_STRATEGY, "-n", value, "--input-len", "2", "--output-len", "1", *FAST], "kind": "-n"}


def _output_flag(rng, strategy: str, small_run: list[str]) -> dict:
    files = {}
    out = rng.choice(["/no/such/dir/out.jsonl", "{tmp}", "/dev/full", "", "{tmp}/loop_a", "abc\x00"])
    if out == "{tmp}/loop_a":
        files.update({"loop_a": {"symlink": "loop_b"}, "loop_b": {"symlink": "loop_a"}})
    return {"argv": [*small_run, "--output", out], "kind": f"--output {brief(out)}", "files": files}


def _prompts_path(rng, strategy: str, small_run: list[str]) -> dict:
    path, files, what = _odd_path(rng)
    made = {"argv": [*small_run, "--prompts", path], "kind": f"--prompts {what}", "files": files}
    if what == "fifo":
        # Written if ever opened; shardspec reads regular files only, so a FIFO is a user error.
        made.update(checks={"fifo_text": jsonl([{"prompt_token_ids": [1, 2], "max_tokens": 1}])})
    return made


def _strategy_path(rng, strategy: str, small_run: list[str]) -> dict:
    path, files, what = _odd_path(rng)
    made = {"argv": [rng.choice(["validate", "explain"]), path], "kind": f"strategy path {what}", "files": files}
    if what == "fifo":
        made.update(checks={"fifo_text": _VALID_STRATEGY})  # refused unread, as --prompts is
    return made


def _inline_strategy(rng, strategy: str, small_run: list[str]) -> dict:
    inline = rng.choice(["parallelism: {tensor: 8}", "tp", "a: b", "[1, 2]", "{}", "- a", "*x", "!!int a"])
    return {"argv": ["validate", inline], "kind": "strategy argument that is not a path"}


def _bad_flags(rng, strategy: str, small_run: list[str]) -> dict:
    argv, kind = rng.choice(
        [
            (["explain", strategy, "--format", "xml"], "--format xml"),
            (["explain", strategy, "-f", "JSON"], "--format JSON"),
            (["validate", strategy, "--bogus"], "unknown flag"),
            (["validat", strategy], "unknown command"),
            (["validate"], "missing argument"),
            (["models", "extra"], "extra argument"),
            ([*small_run, "--num-processes", "0"], "--num-processes 0"),
            ([*small_run, "--process-id", "-1"], "--process-id -1"),
            ([*small_run, "--seed", "-1"], "--seed -1"),
            ([*small_run, "--seed", str(2**64)], "--seed 2**64"),
            (["--debug", "validate", "/no/such.yaml"], "--debug user error"),
        ]
    )
    return {"argv": argv, "kind": kind}


def _set_combination(rng, strategy: str, small_run: list[str]) -> dict:
    sets = rng.choice(
        [
            ["runtime.routing=least_tokens", "runtime.routing=round_robin"],
            ["=", "a=b=c"],
            ["parallelism.tensor=4", "parallelism=null"],
            ["parallelism=null", "parallelism.tensor=4"],
            ["model=llama3-8b"],
            ["model=/no/such/dir"],
            ["devices=0"],
        ]
    )
    return {"argv": ["validate", strategy] + [a for s in sets for a in ("--set", s)], "kind": "--set combination"}


def _hlo_with_expect(rng, strategy: str, small_run: list[str]) -> dict:
    budget = rng.choice(["{per_layer: {all-reduce: 0}}", "{per_layer: {all-reduce: -1}}", "{total: {nope: 1}}"])
    files = {"s.yaml": text_file(_VALID_STRATEGY + "expect: " + budget + "\n")}
    return {"argv": ["explain", "{tmp}/s.yaml", "--hlo", *FAST], "kind": "explain --hlo with expect", "files": files}


_MAKERS = (  # by the pick of rng.randrange(12): paths twice as often
    _model_flag,
    _length_flag,
    _count_flag,
    _output_flag,
    _prompts_path,
    _prompts_path,
    _strategy_path,
    _strategy_path,
    _inline_strategy,
    _bad_flags,
    _set_combination,
    _hlo_with_expect,
)
