"""Data parallelism: the same global batch and seed train the same model on 1 and 8 devices.

The multi-device checks run in a subprocess with 8 virtual CPU devices
(`--xla_force_host_platform_device_count`, which must be set before JAX starts).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from reinforce_jax.experiments.distributed import make_mesh, shard_state

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import reinforce_jax as rj
    from reinforce_jax.experiments.distributed import make_mesh, shard_state
    from reinforce_jax.experiments.presets import PRESETS
    assert jax.device_count() == 8
    report = {}
    for env_name, algo in [("cartpole", "reinforce"), ("cartpole", "ppo")]:
      preset = PRESETS[env_name]
      config = preset.configs[algo].replace(num_envs=32, rollout_length=min(
          preset.configs[algo].rollout_length, 16), num_steps=3)
      env = preset.make_env()
      policy = preset.policy(env, config)
      init_fn, step = rj.make_train_step(env, policy, rj.make_optimizer(config), config)
      runs = {}
      for n in (1, 8):
        state = shard_state(init_fn(jax.random.key(0)), make_mesh(n))
        jitted = jax.jit(step)
        losses = []
        for _ in range(3):
          state, metrics = jitted(state, jax.random.key(1))
          losses.append(float(metrics["loss"]))
        runs[n] = (jax.device_get(state), losses, str(state.env.obs.sharding.spec))
      for a, b in zip(jax.tree.leaves(runs[1][0]), jax.tree.leaves(runs[8][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
      np.testing.assert_allclose(runs[1][1], runs[8][1], rtol=2e-4, atol=2e-5)
      report[f"{env_name}-{algo}"] = runs[8][2]
    # The CLI splits the environments over every visible device by default.
    import pathlib, tempfile
    from flax import serialization
    from reinforce_jax import cli
    params = {}
    for devices in ("8", "1"):
      out = tempfile.mkdtemp()
      assert cli.main(["train", "bandit", "--steps", "3", "--num-envs", "16", "--num-seeds",
                       "2", "--devices", devices, "--out", out, "--no-progress"]) == 0
      params[devices] = serialization.msgpack_restore(
          (pathlib.Path(out) / "params.msgpack").read_bytes())
    for a, b in zip(jax.tree.leaves(params["8"]), jax.tree.leaves(params["1"])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    report["cli"] = "P('envs')"
    # A sweep spreads its runs over the devices: 3 grid points x 2 seeds = 6 runs,
    # padded to 8, give the same curves as on one device.
    from reinforce_jax.experiments.sweep import run_sweep
    config = rj.TrainConfig(num_envs=16, num_steps=4)
    grid = {"learning_rate": [0.01, 0.1, 0.3]}
    sweeps = {n: run_sweep("bandit", config, grid, num_seeds=2, devices=n,
                           out_dir=tempfile.mkdtemp()) for n in (1, 8)}
    assert sweeps[8]["devices"] == 8 and sweeps[8]["runs"] == 6
    for a, b in zip(sweeps[1]["rows"], sweeps[8]["rows"]):
      np.testing.assert_allclose(a["curve_mean"], b["curve_mean"], rtol=1e-5)
    print(json.dumps(report))
""")


@pytest.mark.slow
def test_one_and_eight_devices_train_the_same_model():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                        env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert all("envs" in spec for spec in report.values()), report


def test_mesh_and_sharding_errors():
  with pytest.raises(ValueError, match="num_devices must be in"):
    make_mesh(jax.local_device_count() + 1)
  import optax

  import reinforce_jax as rj
  from reinforce_jax.envs import ContextualBandit
  from reinforce_jax.rl.policies import CategoricalPolicy
  init_fn, _ = rj.make_train_step(ContextualBandit(), CategoricalPolicy(2, hidden=()),
                                  optax.sgd(0.1), rj.TrainConfig(num_envs=3))
  state = init_fn(jax.random.key(0))
  sharded = shard_state(state, make_mesh(1))
  assert sharded.env.obs.shape == (3, 1)
  if jax.local_device_count() > 1:
    with pytest.raises(ValueError, match="divisible"):
      shard_state(state, make_mesh(2))


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _two_processes(common, out, *extra):
  port = _free_port()
  procs = [subprocess.Popen(
      common + ["--coordinator", f"localhost:{port}", "--num-processes", "2",
                "--process-id", str(i), "--out", str(out), *extra],
      env=_CPU_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


_CPU_ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}


@pytest.mark.slow
def test_two_processes_checkpoint_resume_and_train_what_one_process_trains(tmp_path):
  """Two processes on localhost (CPU collectives over gloo), one device each,
  sharing one output folder as on a cluster's shared file system: they train 2
  steps, save a checkpoint together (each writes its shard of the environment
  state), then a second pair resumes it to step 4. One process training 4 steps
  in one go must give the same parameters and metrics."""
  import numpy as np
  from flax import serialization

  common = [sys.executable, "-m", "reinforce_jax", "train", "cartpole", "--num-envs", "16",
            "--rollout-length", "16", "--no-progress"]
  multi = tmp_path / "multi"
  _two_processes(common + ["--steps", "2"], multi, "--checkpoint-every", "2")
  assert (multi / "checkpoints" / "2").is_dir()
  printed = _two_processes(common + ["--steps", "4"], multi, "--resume", str(multi))
  assert "outputs in" in printed[0] and "process 1: trained; process 0 writes" in printed[1]
  single = subprocess.run(common + ["--steps", "4", "--out", str(tmp_path / "single")],
                          env=_CPU_ENV, capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  load = lambda d: serialization.msgpack_restore((d / "params.msgpack").read_bytes())  # noqa: E731
  for a, b in zip(jax.tree.leaves(load(multi)), jax.tree.leaves(load(tmp_path / "single")),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  rows = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
  single_rows = [json.loads(line) for line in
                 (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
  # Only process 0 writes: one row per step, none repeated by the other process.
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  np.testing.assert_allclose([r["mean_return"] for r in rows],
                             [r["mean_return"] for r in single_rows], rtol=1e-5)
