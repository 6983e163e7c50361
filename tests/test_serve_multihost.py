"""`shardspec launch --local 2 -- serve`: process 0 takes HTTP, both step one engine."""

import json
import os
import signal

import httpx
import numpy as np
import pytest

from shardspec import compile, load
from shardspec.runtime.engine import Engine

from conftest import ROOT
from helpers import serving

pytestmark = pytest.mark.slow  # a real server or cluster per test module

STRATEGY = ROOT / "strategies" / "multihost_dp.yaml"  # data 2 across 2 processes
SMALL = ["--set", "runtime.max_num_batched_tokens=64"]


def test_two_process_serve_gives_the_tokens_of_one_process_and_stops_on_sigterm(tmp_path):
    serve = ["serve", str(STRATEGY), "--served-model-name", "tiny", *SMALL]
    log = tmp_path / "launch.log"
    with serving(["launch", "--local", "2", "--", *serve], log) as (base, launch):
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, 512, n).tolist() for n in (3, 17, 40, 9)]
        body = {"model": "tiny", "prompt": prompts, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        got = httpx.post(base + "/v1/completions", json=body, timeout=120).json()
        one = Engine(compile(load(STRATEGY, overrides={"runtime.max_num_batched_tokens": "64"})))
        want = one.generate([{"prompt_token_ids": p, "max_tokens": 8, "ignore_eos": True} for p in prompts])
        assert [c["token_ids"] for c in got["choices"]] == [list(o.output_token_ids) for o in want]

        stream = {**body, "prompt": prompts[0], "max_tokens": 200, "stream": True}
        lines = []
        with httpx.stream("POST", base + "/v1/completions", json=stream, timeout=60) as response:
            for line in response.iter_lines():
                if line and not lines:
                    os.kill(_process_0_pid(log), signal.SIGTERM)  # as a service manager stops process 0
                if line:
                    lines.append(line)
        assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "abort"
        assert launch.wait(timeout=60) == 0, log.read_text()


def _process_0_pid(log) -> int:
    line = next(x for x in log.read_text().splitlines() if "process 0: pid" in x)
    return int(line.split()[-1])
