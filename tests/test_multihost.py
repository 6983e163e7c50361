"""`multihost:` and joining a cluster, in this one process (8 devices) and across processes.

In one process `multihost` is not in effect: the mesh is the plain one. The
hybrid mesh needs several processes, so those cases start real ones.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from typer.testing import CliRunner

from shardspec import ShardspecError, compile, distributed, explain, load
from shardspec.cli.main import app
from shardspec.mesh import process_ids

from conftest import ROOT
from helpers import strategy

runner = CliRunner()
MULTIHOST = ROOT / "strategies" / "multihost_dp.yaml"
DP = str(ROOT / "strategies" / "dp.yaml")


def test_one_process_ignores_multihost_and_builds_the_plain_mesh():
    plan = compile(load(MULTIHOST))
    plain = compile(dataclasses.replace(load(MULTIHOST), multihost={}))
    assert (plan.mesh.devices == plain.mesh.devices).all()
    assert process_ids(plan.mesh_shape, plan.strategy, plan.mesh) is None


def test_explain_shows_the_process_of_every_device():
    text = explain(compile(load(MULTIHOST), abstract_mesh=True))
    assert (
        "\nprocesses: 2, one per host (multihost: data 2)\n"
        "                      model 0  model 1\n"
        "  data 0 · attn_dp 0        0        0\n"
        "  data 0 · attn_dp 1        0        0\n"
        "  data 1 · attn_dp 0        1        1\n"
        "  data 1 · attn_dp 1        1        1\n"
    ) in text
    mesh = json.loads(explain(compile(load(MULTIHOST), abstract_mesh=True), format="json"))["mesh"]
    assert np.array(mesh["process_ids"]).reshape(-1).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_cross_host_factors_are_the_slowest_part_of_each_axis():
    st = strategy("parallelism: {data: 4, tensor: 2, attention_data: 1}\nmultihost: {data: 2, model: 2}")
    plan = compile(st, abstract_mesh=True)
    ids = process_ids(plan.mesh_shape, st, plan.mesh).reshape(4, 2)  # [data, model]
    # Hosts numbered row-major over (data 2, model 2); each holds a contiguous block.
    assert ids.tolist() == [[0, 1], [0, 1], [2, 3], [2, 3]]


def test_a_factor_that_does_not_divide_an_auto_axis_is_an_error():
    st = strategy("parallelism: {tensor: 8}\nmultihost: {model: 4}")  # auto: attn_dp 4 × model 2
    with pytest.raises(ShardspecError, match=r"multihost.model: 4 does not divide model=2 \(use 1 or 2\)"):
        explain(compile(st, abstract_mesh=True))


def test_join_does_nothing_without_a_cluster_or_once_devices_exist():
    assert distributed.join() == 1
    assert distributed.join(num_processes=1) == 1
    assert distributed.join(auto_detect=True) == 1  # devices exist already: stay one process
    with pytest.raises(ShardspecError, match="JAX has started its devices in this process already"):
        distributed.join("127.0.0.1:1234", 2, 0)
    assert distributed.process_count() == 1 and distributed.is_main()


def test_bad_cluster_flags_are_user_errors_listed_together():
    result = runner.invoke(app, ["check", DP, "--coordinator", "nohost", "--num-processes", "2", "--process-id", "2"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --coordinator: 'nohost' is not HOST:PORT (e.g. 10.0.0.1:1234: process 0's "
        "host and a free port)\n"
        "error: --process-id: 2 is not a process id of 2 processes (use 0 to 1)\n"
    )


def test_cluster_flags_come_from_the_environment_too():
    result = runner.invoke(app, ["check", DP], env={"SHARDSPEC_COORDINATOR": "10.0.0.1"})
    assert result.exit_code == 2 and "--coordinator: '10.0.0.1' is not HOST:PORT" in result.stderr


def test_num_processes_1_runs_alone():
    result = runner.invoke(app, ["explain", str(MULTIHOST), "--num-processes", "1"])
    assert result.exit_code == 0 and result.stdout.startswith("strategy multihost-dp")
    assert "processes: 2" in result.stdout  # the plan for 2 hosts, as without the flag


def test_host_arrays_become_global_arrays_and_come_back():
    plan = compile(load(MULTIHOST))
    sharding = NamedSharding(plan.mesh, P(("data", "attn_dp")))
    host = np.arange(16, dtype=np.int32)
    x = distributed.global_array(host, sharding)
    assert x.sharding == sharding and (distributed.fetch(x) == host).all()
    assert distributed.disagreeing(host.tolist()) == []


def test_processes_must_match_the_multihost_product():
    """2 processes, but dp.yaml keeps every axis on one host: each says so and exits 2."""
    done = subprocess.run(
        [sys.executable, "-m", "shardspec.cli.main", "launch", "--local", "2", "--", "check", DP],
        capture_output=True,
        text=True,
        timeout=240,
        env={k: v for k, v in os.environ.items() if not k.startswith("SHARDSPEC_")},
    )
    assert done.returncode == 2, done.stderr
    assert (
        f"error: {DP}: multihost: no axis crosses hosts, but 2 processes joined (set multihost factors "
        "that multiply to 2 (e.g. multihost: {data: 2}), or run 1 process)"
    ) in done.stderr
    assert jax.process_count() == 1
