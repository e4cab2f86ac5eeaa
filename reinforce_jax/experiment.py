"""Runs a preset from the command line: several seeds in one program, trained in
jitted chunks between progress-bar updates, with outputs written to a folder.

The chunked run is the same computation as `jax.vmap(make_train(...))` over the
seed keys (bit for bit): keys depend only on the seed and the step count.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm.auto import tqdm

from reinforce_jax import checkpoints, plotting
from reinforce_jax.checkpoints import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    PARAMS_FILE,
    SUMMARY_FILE,
    CheckpointError,
)
from reinforce_jax.config import TrainConfig
from reinforce_jax.distributed import make_mesh, shard_state
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.presets import PRESETS
from reinforce_jax.rollout import split_output
from reinforce_jax.train import make_optimizer, make_run, make_train_step


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
  # Per seed, the mean return of its last 100 finished episodes (what `stop_at_return`
  # is checked on; None until 100 have finished in this process's part of the run).
  recent_mean_return: list[float | None] = dataclasses.field(default_factory=list)


def _seed_keys(seed: int, num_seeds: int):
  """Per-seed `(init, run)` keys, derived as `make_train(...)(key)` derives them."""
  keys = jax.random.split(jax.random.key(seed), num_seeds)
  split = jax.vmap(jax.random.split)(keys)
  return split[:, 0], split[:, 1]


def _last_finite(values: np.ndarray) -> float | None:
  finite = values[np.isfinite(values)]
  return float(finite[-1]) if finite.size else None


def _read_metrics(path: pathlib.Path) -> list[dict]:
  """The rows of `metrics.jsonl`, without a torn last line (said on stderr).

  A process killed while writing leaves its last line unfinished; any other
  unreadable line is an error.
  """
  lines = path.read_text().splitlines() if path.exists() else []
  rows = []
  for number, line in enumerate(lines, start=1):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if number < len(lines):
        raise CheckpointError(f"{path}, line {number}: not a JSON row") from None
      tqdm.write(f"reinforce-jax: dropped the torn last line of {path} (line {number}, "
                 "left by a process stopped while writing it)", file=sys.stderr)
  return rows


def _mean_return_curves(path: pathlib.Path, num_seeds: int) -> np.ndarray:
  """`[num_seeds, steps]` mean returns read back from `metrics.jsonl` (NaN where none)."""
  rows = _read_metrics(path)
  curves = np.full((num_seeds, max((r["step"] for r in rows), default=0)), np.nan)
  for row in rows:
    if row["mean_return"] is not None:
      curves[row["seed"], row["step"] - 1] = row["mean_return"]
  return curves


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
  """Keeps the rows of steps up to `step` (a resumed run rewrites what followed)."""
  if not path.exists():
    return
  rows = [row for row in _read_metrics(path) if row["step"] <= step]
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _make_folder(path: pathlib.Path) -> list[pathlib.Path]:
  """Creates `path` and its missing parents; returns those it created, deepest first."""
  missing = [p for p in (path, *path.parents) if not p.exists()]
  path.mkdir(parents=True, exist_ok=True)
  return missing


def _remove(created: list[pathlib.Path], files: list[pathlib.Path]) -> None:
  """Undoes a failed start: removes `files`, then the folders in `created` (deepest first)."""
  for path in files:
    path.unlink(missing_ok=True)
  for path in created:
    try:
      path.rmdir()
    except OSError:  # not empty: something else wrote there meanwhile
      break


def _alive(state) -> bool:
  """Whether no buffer of `state` was donated to a computation (and so deleted)."""
  return not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state))


SOLVED_EPISODES = 100  # gymnasium's reward threshold is a mean over 100 consecutive episodes


class RecentEpisodes:
  """Per seed, the mean return of the last `SOLVED_EPISODES` finished episodes.

  Fed one train step at a time with each seed's mean return and episode count
  of that step; a step's episodes are kept or dropped together, so the window
  holds at least `SOLVED_EPISODES` episodes once that many have finished.
  """

  def __init__(self, num_seeds: int, episodes: int = SOLVED_EPISODES):
    self.episodes = episodes
    self.windows = [collections.deque() for _ in range(num_seeds)]

  def add(self, mean_return: np.ndarray, num_episodes: np.ndarray) -> None:
    """`[num_seeds, steps]` arrays of one chunk, oldest step first."""
    for window, means, counts in zip(self.windows, mean_return, num_episodes, strict=True):
      for mean, count in zip(means, counts, strict=True):
        if count > 0 and np.isfinite(mean):
          window.append((float(mean) * int(count), int(count)))
          while sum(c for _, c in window) - window[0][1] >= self.episodes:
            window.popleft()

  def means(self) -> np.ndarray:
    """`[num_seeds]`: the window's mean return, NaN until `episodes` have finished."""
    out = np.full(len(self.windows), np.nan)
    for i, window in enumerate(self.windows):
      count = sum(c for _, c in window)
      if count >= self.episodes:
        out[i] = sum(total for total, _ in window) / count
    return out


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
    should_stop: Callable[[], bool] | None = None,
) -> Result:
  """Trains `num_seeds` seeds of preset `env_name` and writes the outputs.

  Outputs in `out_dir`: `metrics.jsonl` (one JSON object per train step and seed:
  `step` (1-based), `seed` (0-based index), `loss`, `mean_return` (null when no
  episode finished), `num_episodes`, `mean_length`, `entropy`, `grad_norm`),
  `learning_curve.png`, `policy.png` (bandit), `params.msgpack` (flax msgpack of
  the final parameters, every leaf with a leading `[num_seeds]` axis),
  `config.json` and `summary.json`. With `stop_at_return`, the run ends at the
  first chunk after which, for every seed, the mean return of its last 100
  finished episodes reaches it (gymnasium's definition of solved). The
  environments are split over `devices` local devices (default: all of them).
  With `profile_dir`, the first chunk of training runs under `jax.profiler.trace`
  (view it with TensorBoard's profile plugin or Perfetto).

  The full training state is saved with orbax to `out_dir/checkpoints/` when
  the run ends, however it ends (completed, solved, non-finite: each seed's
  last finite state, interrupted), and with `checkpoint_every` also every that
  many steps (chunks of training end on those steps). `resume=True` continues
  the run in `out_dir` from its latest checkpoint up to `config.num_steps`,
  dropping any metrics rows written after that checkpoint (and a torn last
  line). Steps are bit-identical to an uninterrupted run.

  The folder is created, and `config.json` written, only once the program has
  compiled (and a checkpoint to resume was read); if that fails, what this
  call created is removed. `should_stop` is polled after compiling and after
  every chunk: true before the first chunk raises `KeyboardInterrupt` with
  nothing written; later it ends the run as "interrupted". A
  `KeyboardInterrupt` during training also ends it as "interrupted".
  """
  preset = PRESETS[env_name]
  env = preset.make_env()
  policy = preset.policy(env, config)
  init_fn, train_step = make_train_step(env, policy, make_optimizer(config), config)
  chunk = max(1, math.ceil(config.num_steps / num_chunks))
  if checkpoint_every:
    chunk = min(chunk, checkpoint_every)
  out = pathlib.Path(out_dir)
  # In a multi-process run every process trains; the first one writes the files.
  writer = jax.process_index() == 0

  start = time.perf_counter()
  init_keys, run_keys = _seed_keys(seed, num_seeds)
  state = jax.jit(jax.vmap(init_fn))(init_keys)
  num_devices = jax.device_count() if devices is None else devices
  if num_devices > 1:  # state leaves are [seeds, envs, ...]: split the envs
    state = shard_state(state, make_mesh(num_devices), batch_axis=1)
  # Plain XLA options: the step compiles well without any (reinforce_jax/compiler.py).
  runner = jax.jit(jax.vmap(make_run(train_step, chunk), in_axes=(0, 0, None)),
                   donate_argnums=0)
  runner = runner.lower(state, run_keys, 0).compile()
  compile_time = time.perf_counter() - start
  done, saved = 0, None  # steps trained, step of the latest checkpoint
  if resume:
    done, state = checkpoints.restore(out / CHECKPOINTS_DIR, state)
    saved = done
    if done > config.num_steps:
      raise CheckpointError(f"the latest checkpoint in {out / CHECKPOINTS_DIR} is of step "
                            f"{done}, past num_steps={config.num_steps}")
  first_step = done
  if should_stop is not None and should_stop():
    raise KeyboardInterrupt("before the first train step; nothing written")

  sink = io.StringIO()
  if writer:
    created, written = _make_folder(out), []
    try:
      if resume:
        _truncate_metrics(out / METRICS_FILE, done)
      written.append(out / CONFIG_FILE)
      (out / CONFIG_FILE).write_text(json.dumps(
          {"env": env_name, "seed": seed, "num_seeds": num_seeds,
           "stop_at_return": stop_at_return, "checkpoint_every": checkpoint_every,
           "hidden": list(preset.hidden), **dataclasses.asdict(config)}, indent=2) + "\n")
      if not resume:
        written.append(out / METRICS_FILE)
      sink = (out / METRICS_FILE).open("a" if resume else "w")
    except BaseException:
      _remove(created, [] if resume else written)
      raise

  status = "completed"
  solved_at, solved_after = None, None
  latest = np.full(num_seeds, np.nan)
  recent_episodes = RecentEpisodes(num_seeds)
  bar = tqdm(total=config.num_steps, initial=done, desc=f"{env_name}", unit="step",
             disable=not progress, file=sys.stderr, dynamic_ncols=True)
  try:
    with sink as log:
      while done < config.num_steps:
        n = min(chunk, config.num_steps - done)
        if checkpoint_every:  # end the chunk on the next checkpoint's step
          n = min(n, checkpoint_every - done % checkpoint_every)
        if profile_dir is not None and done == first_step:
          with jax.profiler.trace(str(profile_dir), create_perfetto_trace=True):
            result = jax.block_until_ready(runner(state, run_keys, jnp.int32(n)))
        else:
          result = runner(state, run_keys, jnp.int32(n))
        steps_done = np.asarray(result.steps_done)
        metrics = jax.tree.map(np.asarray, result.metrics)
        for i in range(int(steps_done.max())):
          for s in range(num_seeds):
            if i < steps_done[s]:
              row = {"step": done + i + 1, "seed": s}
              row.update({k: _jsonable(v[s, i]) for k, v in metrics.items()})
              log.write(json.dumps(row) + "\n")
        good = int(steps_done.min())
        state, done = result.state, done + good  # together: a checkpoint pairs them
        bar.update(good)
        if good:
          recent_episodes.add(metrics["mean_return"][:, :good], metrics["num_episodes"][:, :good])
          for seed_index, curve in enumerate(metrics["mean_return"][:, :good]):
            last = _last_finite(curve)
            latest[seed_index] = latest[seed_index] if last is None else last
          recent = _last_finite(_nanmean(metrics["mean_return"][:, :good]))
          if recent is not None:
            bar.set_postfix(mean_return=f"{recent:.3g}")
        if checkpoint_every and done % checkpoint_every == 0 and done < config.num_steps:
          log.flush()
          checkpoints.save(out / CHECKPOINTS_DIR, done, state)
          saved = done
        if not np.asarray(result.finite).all():
          status = "non-finite"
          bad = np.flatnonzero(~np.asarray(result.finite)).tolist()
          tqdm.write(
              f"reinforce-jax: loss or parameters became non-finite at step {done + 1} "
              f"(seeds {bad}); stopped and kept each seed's last finite parameters",
              file=sys.stderr)
          break
        if stop_at_return is not None and np.all(recent_episodes.means() >= stop_at_return):
          status, solved_at = "solved", done
          solved_after = time.perf_counter() - start
          break
        if should_stop is not None and should_stop():
          raise KeyboardInterrupt
  except KeyboardInterrupt:
    if not _alive(state):  # stopped between a chunk's start and its result: nothing to save
      raise
    status = "interrupted"
    tqdm.write(f"reinforce-jax: interrupted; saved the state of step {done} "
               f"(continue with --resume {out})", file=sys.stderr)
  finally:
    bar.close()
  if saved != done:  # the final (or last good) state: every run can be resumed
    checkpoints.save(out / CHECKPOINTS_DIR, done, state)

  wall = time.perf_counter() - start
  files = []  # the files this process wrote
  final_mean_return = [None if np.isnan(r) else float(r) for r in latest]
  if writer:
    files = [METRICS_FILE, CONFIG_FILE, PARAMS_FILE, "learning_curve.png", SUMMARY_FILE,
             CHECKPOINTS_DIR]
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
      solved_after_s=None if solved_after is None else round(solved_after, 3),
      recent_mean_return=[None if np.isnan(r) else float(r) for r in recent_episodes.means()])
  if writer:
    (out / SUMMARY_FILE).write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
  return result

