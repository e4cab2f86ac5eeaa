"""Runs a preset from the command line: several seeds in one program, trained in
jitted chunks between progress-bar updates, with outputs written to a folder.

The chunked run is the same computation as `jax.vmap(make_train(...))` over the
seed keys (bit for bit): keys depend only on the seed and the step count.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm.auto import tqdm

from reinforce_jax import checkpoints, plotting
from reinforce_jax.compiler import recommended_compiler_options
from reinforce_jax.config import TrainConfig
from reinforce_jax.distributed import make_mesh, shard_state
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.presets import PRESETS
from reinforce_jax.rollout import split_output
from reinforce_jax.train import make_optimizer, make_run, make_train_step

METRICS_FILE = "metrics.jsonl"
PARAMS_FILE = "params.msgpack"


@dataclasses.dataclass
class Result:
  """What a run leaves behind (also written to `summary.json`)."""

  env: str
  steps_done: int            # train steps completed by every seed (a seed that went
                             # non-finite keeps its own last finite step's parameters)
  num_seeds: int
  status: str                # "completed", "solved", "non-finite" or "interrupted"
  final_mean_return: list[float | None]  # per seed, last step with finished episodes
  wall_time_s: float
  compile_time_s: float
  out_dir: str
  expected_reward: list[float] | None = None  # bandit only: exact, from the final policy
  solved_at_step: int | None = None    # first step where every seed reached stop_at_return
  solved_after_s: float | None = None  # seconds from the start of the run to then
  files: list[str] = dataclasses.field(default_factory=list)  # written by this process


def _seed_keys(seed: int, num_seeds: int):
  """Per-seed `(init, run)` keys, derived as `make_train(...)(key)` derives them."""
  keys = jax.random.split(jax.random.key(seed), num_seeds)
  split = jax.vmap(jax.random.split)(keys)
  return split[:, 0], split[:, 1]


def _last_finite(values: np.ndarray) -> float | None:
  finite = values[np.isfinite(values)]
  return float(finite[-1]) if finite.size else None


def _mean_return_curves(path: pathlib.Path, num_seeds: int) -> np.ndarray:
  """`[num_seeds, steps]` mean returns read back from `metrics.jsonl` (NaN where none)."""
  rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  curves = np.full((num_seeds, max((r["step"] for r in rows), default=0)), np.nan)
  for row in rows:
    if row["mean_return"] is not None:
      curves[row["seed"], row["step"] - 1] = row["mean_return"]
  return curves


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
  """Keeps the rows of steps up to `step` (a resumed run rewrites what followed)."""
  if not path.exists():
    return
  rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
  path.write_text("".join(row + "\n" for row in rows))


def _nanmean(values: np.ndarray) -> np.ndarray:
  """Mean over seeds, NaN (without a warning) where no seed finished an episode."""
  finite = np.isfinite(values)
  total = np.where(finite, values, 0.0).sum(axis=0)
  count = finite.sum(axis=0)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _jsonable(x: Any):
  x = x.item() if hasattr(x, "item") else x
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def run_experiment(
    env_name: str,
    config: TrainConfig,
    *,
    seed: int = 0,
    num_seeds: int = 1,
    out_dir: str | pathlib.Path,
    progress: bool = True,
    num_chunks: int = 50,
    stop_at_return: float | None = None,
    devices: int | None = None,
    profile_dir: str | pathlib.Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> Result:
  """Trains `num_seeds` seeds of preset `env_name` and writes the outputs.

  Outputs in `out_dir`: `metrics.jsonl` (one JSON object per train step and seed:
  `step` (1-based), `seed` (0-based index), `loss`, `mean_return` (null when no
  episode finished), `num_episodes`, `mean_length`, `entropy`, `grad_norm`),
  `learning_curve.png`, `policy.png` (bandit), `params.msgpack` (flax msgpack of
  the final parameters, every leaf with a leading `[num_seeds]` axis),
  `config.json` and `summary.json`. With `stop_at_return`, the run ends at the
  first chunk after which every seed's latest mean return reaches it. The
  environments are split over `devices` local devices (default: all of them).
  With `profile_dir`, the first chunk of training runs under `jax.profiler.trace`
  (view it with TensorBoard's profile plugin or Perfetto). With
  `checkpoint_every`, the full training state is saved with orbax to
  `out_dir/checkpoints/` every that many steps and at the end; `resume=True`
  continues the run in `out_dir` from its latest checkpoint up to
  `config.num_steps`, dropping any metrics rows written after that checkpoint.
  Steps are bit-identical to an uninterrupted run.
  """
  preset = PRESETS[env_name]
  env = preset.make_env()
  policy = preset.policy(env, config)
  init_fn, train_step = make_train_step(env, policy, make_optimizer(config), config)
  chunk = max(1, math.ceil(config.num_steps / num_chunks))
  if checkpoint_every:
    chunk = min(chunk, checkpoint_every)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  # In a multi-process run every process trains; the first one writes the files.
  writer = jax.process_index() == 0
  if writer:
    (out / "config.json").write_text(json.dumps(
        {"env": env_name, "seed": seed, "num_seeds": num_seeds,
         "stop_at_return": stop_at_return, "checkpoint_every": checkpoint_every,
         "hidden": list(preset.hidden), **dataclasses.asdict(config)}, indent=2) + "\n")

  start = time.perf_counter()
  init_keys, run_keys = _seed_keys(seed, num_seeds)
  state = jax.jit(jax.vmap(init_fn))(init_keys)
  num_devices = jax.device_count() if devices is None else devices
  if num_devices > 1:  # state leaves are [seeds, envs, ...]: split the envs
    state = shard_state(state, make_mesh(num_devices), batch_axis=1)
  runner = jax.jit(jax.vmap(make_run(train_step, chunk), in_axes=(0, 0, None)),
                   donate_argnums=0, compiler_options=recommended_compiler_options())
  runner = runner.lower(state, run_keys, 0).compile()
  compile_time = time.perf_counter() - start
  done = 0
  if resume:
    done, state = checkpoints.restore(out / "checkpoints", state)
    if writer:
      _truncate_metrics(out / METRICS_FILE, done)

  status = "completed"
  solved_at, solved_after = None, None
  latest = np.full(num_seeds, np.nan)
  bar = tqdm(total=config.num_steps, initial=done, desc=f"{env_name}", unit="step",
             disable=not progress, file=sys.stderr, dynamic_ncols=True)
  try:
    sink = (out / METRICS_FILE).open("a" if resume else "w") if writer else io.StringIO()
    with sink as log:
      while done < config.num_steps:
        n = min(chunk, config.num_steps - done)
        if profile_dir is not None and done == 0:
          with jax.profiler.trace(str(profile_dir), create_perfetto_trace=True):
            result = jax.block_until_ready(runner(state, run_keys, jnp.int32(n)))
        else:
          result = runner(state, run_keys, jnp.int32(n))
        state = result.state
        steps_done = np.asarray(result.steps_done)
        metrics = jax.tree.map(np.asarray, result.metrics)
        for i in range(int(steps_done.max())):
          for s in range(num_seeds):
            if i < steps_done[s]:
              row = {"step": done + i + 1, "seed": s}
              row.update({k: _jsonable(v[s, i]) for k, v in metrics.items()})
              log.write(json.dumps(row) + "\n")
        good = int(steps_done.min())
        done += good
        bar.update(good)
        if good:
          for seed_index, curve in enumerate(metrics["mean_return"][:, :good]):
            last = _last_finite(curve)
            latest[seed_index] = latest[seed_index] if last is None else last
          recent = _last_finite(_nanmean(metrics["mean_return"][:, :good]))
          if recent is not None:
            bar.set_postfix(mean_return=f"{recent:.3g}")
        if checkpoint_every and (done % checkpoint_every == 0 or done == config.num_steps):
          checkpoints.save(out / "checkpoints", done, state)
        if stop_at_return is not None and np.all(latest >= stop_at_return):
          status, solved_at = "solved", done
          solved_after = time.perf_counter() - start
          break
        if not np.asarray(result.finite).all():
          status = "non-finite"
          bad = np.flatnonzero(~np.asarray(result.finite)).tolist()
          tqdm.write(
              f"reinforce-jax: loss or parameters became non-finite at step {done + 1} "
              f"(seeds {bad}); stopped and kept each seed's last finite parameters",
              file=sys.stderr)
          break
  except KeyboardInterrupt:
    status = "interrupted"
    tqdm.write(f"reinforce-jax: interrupted; keeping the parameters of step {done}",
               file=sys.stderr)
  finally:
    bar.close()

  wall = time.perf_counter() - start
  files = []  # the files this process wrote
  final_mean_return = [None if np.isnan(r) else float(r) for r in latest]
  if writer:
    files = [METRICS_FILE, "config.json", PARAMS_FILE, "learning_curve.png", "summary.json"]
    mean_return = _mean_return_curves(out / METRICS_FILE, num_seeds)  # resumed runs included
    final_mean_return = [_last_finite(r) for r in mean_return]
    (out / PARAMS_FILE).write_bytes(serialization.to_bytes(jax.device_get(state.params)))
    plotting.plot_learning_curve(
        mean_return, out / "learning_curve.png",
        title=f"{config.algo.upper()} on {env.name} ({num_seeds} seed{'s' * (num_seeds > 1)})")
  expected = None
  if isinstance(env, ContextualBandit):
    contexts = env.default_params.contexts
    probs = jax.vmap(lambda p: split_output(policy.apply(p, contexts))[0].probs)(state.params)
    expected = [float(env.expected_reward(p, env.default_params)) for p in probs]
    if writer:
      plotting.plot_bandit_policy(np.asarray(probs), np.asarray(contexts), out / "policy.png",
                                  title=f"Learned policy after {done} steps")
      files.append("policy.png")
  result = Result(
      env=env_name, steps_done=done, num_seeds=num_seeds, status=status,
      final_mean_return=final_mean_return,
      wall_time_s=round(wall, 3), compile_time_s=round(compile_time, 3),
      out_dir=str(out), expected_reward=expected, files=sorted(files),
      solved_at_step=solved_at,
      solved_after_s=None if solved_after is None else round(solved_after, 3))
  if writer:
    (out / "summary.json").write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
  return result

