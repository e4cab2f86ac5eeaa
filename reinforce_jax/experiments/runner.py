"""Runs a preset from the command line: several seeds in one program, trained in
jitted chunks between progress-bar updates (`reinforce_jax.experiments.loop.run_loop` and its
callbacks), with outputs written to a folder.

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
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import serialization
from tqdm.auto import tqdm

from reinforce_jax.experiments import checkpoints, loop, plotting, run_folder
from reinforce_jax.experiments.checkpoints import (
  CHECKPOINTS_DIR,
  CONFIG_FILE,
  METRICS_FILE,
  PARAMS_FILE,
  RUN_FILES,
  SUMMARY_FILE,
  CheckpointError,
)
from reinforce_jax.experiments.distributed import make_mesh, shard_state
from reinforce_jax.experiments.episodes import (  # noqa: F401 (the first two lived here once)
  SOLVED_EPISODES,
  RecentEpisodes,
  last_finite,
)
from reinforce_jax.experiments.presets import PRESETS
from reinforce_jax.rl.config import TrainConfig
from reinforce_jax.rl.train import make_optimizer, make_run, make_train_step

__all__ = [
    "Result",
    "run_experiment",
    "steps_per_call",
]


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


class _LatestReturns(loop.Callback):
  """Per seed, the latest finite mean return (the summary's where no metrics file is written)."""

  def __init__(self, num_seeds: int):
    self.values = np.full(num_seeds, np.nan)

  def after_chunk(self, ctx: loop.LoopContext) -> None:
    for seed_index, curve in enumerate(ctx.output.metrics["mean_return"][:, :ctx.new_steps]):
      last = last_finite(curve)
      self.values[seed_index] = self.values[seed_index] if last is None else last


def _read_metrics(path: pathlib.Path, num_seeds: int) -> list[dict]:
  """The rows of `metrics.jsonl`, without a torn last line (said on stderr).

  A process killed while writing leaves its last line unfinished; any other
  unreadable line, or a row that is not what `loop.WriteMetrics` writes for
  `num_seeds` seeds, is an error.

  Raises:
    CheckpointError: naming the file, the line and what is wrong with it.
  """
  lines = path.read_text().splitlines() if path.exists() else []
  rows = []
  for number, line in enumerate(lines, start=1):
    try:
      row = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
      if number < len(lines):
        raise CheckpointError(f"{path}, line {number}: not a JSON row") from None
      tqdm.write(f"reinforce-jax: dropped the torn last line of {path} (line {number}, "
                 "left by a process stopped while writing it)", file=sys.stderr)
      continue
    problem = _row_problem(row, num_seeds)
    if problem is not None:
      raise CheckpointError(f"{path}, line {number}: {problem}")
    rows.append(row)
  return rows


def _row_problem(row, num_seeds: int) -> str | None:
  """What makes `row` other than a metrics row of a run of `num_seeds` seeds, or None."""
  def integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

  if not isinstance(row, dict):
    return f"{_short(row)} is not a JSON object"
  for key in ("step", "seed", "mean_return"):
    if key not in row:
      return f"the row has no {key!r}"
  if not integer(row["step"]) or row["step"] < 1:
    return f"step {_short(row['step'])} is not an integer >= 1"
  if not integer(row["seed"]) or not 0 <= row["seed"] < num_seeds:
    return f"seed {_short(row['seed'])} is not a seed index of this run's {num_seeds} seed(s)"
  for key, value in row.items():
    if key not in ("step", "seed") and value is not None and (
        not isinstance(value, int | float) or isinstance(value, bool)):
      return f"{key!r} is {_short(value)}, not a number or null"
  return None


def _short(value, limit: int = 60) -> str:
  text = json.dumps(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _mean_return_curves(path: pathlib.Path, num_seeds: int) -> np.ndarray:
  """`[num_seeds, steps]` mean returns read back from `metrics.jsonl` (NaN where none)."""
  rows = _read_metrics(path, num_seeds)
  curves = np.full((num_seeds, max((r["step"] for r in rows), default=0)), np.nan)
  for row in rows:
    if row["mean_return"] is not None:
      curves[row["seed"], row["step"] - 1] = row["mean_return"]
  return curves


def _truncate_metrics(path: pathlib.Path, step: int, num_seeds: int) -> None:
  """Keeps the rows of steps up to `step` (a resumed run rewrites what followed)."""
  if not path.exists():
    return
  rows = [row for row in _read_metrics(path, num_seeds) if row["step"] <= step]
  run_folder.write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


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


# A call of the chunk program runs at most this many steps (its metrics buffer holds as
# many), and about CHUNK_SECONDS of wall time (`loop.BoundedChunks`), so that Ctrl-C, the
# progress bar and the metrics file answer within a few seconds at any step count.
MAX_STEPS_PER_CALL = 1 << 14
CHUNK_SECONDS = 1.0
# A checkpoint is saved after the first chunk that ends this long after the latest save,
# so a killed process loses at most a few minutes of training.
CHECKPOINT_SECONDS = 120.0


def steps_per_call(num_steps: int, num_chunks: int, checkpoint_every: int | None = None) -> int:
  """The most steps one call of a run's chunk program takes (its metrics buffer's length).

  At most `num_steps / num_chunks` (rounded up), `checkpoint_every` and
  `MAX_STEPS_PER_CALL`, and at least 1.
  """
  chunk = min(math.ceil(num_steps / num_chunks), MAX_STEPS_PER_CALL)
  if checkpoint_every:
    chunk = min(chunk, checkpoint_every)
  return max(1, chunk)


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
    callbacks: Sequence[loop.Callback] = (),
    options: dict | None = None,
) -> Result:
  """Trains `num_seeds` seeds of preset `env_name` and writes the outputs.

  A sequence preset (`Preset.build_step`: sort) builds its own step from `config`
  and `options` (its settings over the preset's: estimator, group size, ...; recorded
  in `config.json` under "options"); its `mean_return` is the mean reward.

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

  Every file goes through `reinforce_jax.experiments.run_folder`: whole files
  are written to a temporary file and renamed into place, `metrics.jsonl` is
  appended to, and a symbolic link among the run's files (`RUN_FILES`, anything
  in `checkpoints/`) raises `run_folder.SymlinkError` before compiling, and
  before anything is written through it. Two runs must not share `out_dir`: the
  CLI holds `run_folder.lock_folder(out_dir)` for the life of a run.

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
  `KeyboardInterrupt` during training also ends it as "interrupted". Chunks
  take about `CHUNK_SECONDS` each (at most `MAX_STEPS_PER_CALL` steps), so the
  poll comes within seconds at any step count; a checkpoint is also saved after
  the first chunk that ends `CHECKPOINT_SECONDS` after the latest one. An error
  that leaves training (out of memory, a failed write) keeps the folder as its
  latest checkpoint left it, for `resume`; a new run with no checkpoint yet
  removes what it wrote.

  `callbacks` (such as `reinforce_jax.experiments.loggers`' TensorBoard and W&B loggers)
  run after the metrics file is written, in process 0 only.
  """
  preset = PRESETS[env_name]
  env = preset.make_env()
  if preset.build_step is not None:  # a sequence task: its own step (`options`: its settings)
    options = {**(preset.options or {}), **(options or {})}
    policy, (init_fn, train_step) = None, preset.build_step(config, options)
  else:
    policy = preset.policy(env, config)
    init_fn, train_step = make_train_step(env, policy, make_optimizer(config), config)
  chunk = steps_per_call(config.num_steps, num_chunks, checkpoint_every)
  out = pathlib.Path(out_dir)
  # In a multi-process run every process trains; the first one writes the files.
  writer = jax.process_index() == 0
  if writer:  # a link among the run's files is refused before compiling, not after training
    for name in RUN_FILES:
      run_folder.refuse_links(out / name)

  start = time.perf_counter()
  init_keys, run_keys = _seed_keys(seed, num_seeds)
  state = jax.jit(jax.vmap(init_fn))(init_keys)
  num_devices = jax.device_count() if devices is None else devices
  if num_devices > 1 and policy is not None:  # state leaves are [seeds, envs, ...]: split them
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
  if should_stop is not None and should_stop():
    raise KeyboardInterrupt("before the first train step; nothing written")

  sink = io.StringIO()
  if writer:
    created, written = _make_folder(out), []
    try:
      if resume:
        _truncate_metrics(out / METRICS_FILE, done, num_seeds)
      written.append(out / CONFIG_FILE)
      run_folder.write_text(out / CONFIG_FILE, json.dumps(
          {"env": env_name, "seed": seed, "num_seeds": num_seeds,
           "stop_at_return": stop_at_return, "checkpoint_every": checkpoint_every,
           "hidden": list(preset.hidden), **config.to_dict(),
           **({"options": options} if preset.build_step is not None else {})},
          indent=2) + "\n")
      if not resume:
        written.append(out / METRICS_FILE)
        run_folder.write_bytes(out / METRICS_FILE, b"")  # a new, empty file
      sink = run_folder.open_append(out / METRICS_FILE)
    except BaseException:
      _remove(created, [] if resume else written)
      raise

  latest = _LatestReturns(num_seeds)
  checkpoint = loop.Checkpoint(
      out / CHECKPOINTS_DIR, every=checkpoint_every, saved_step=saved,
      every_seconds=CHECKPOINT_SECONDS if jax.process_count() == 1 else None)
  recent = loop.EarlyStop(stop_at_return)
  extra_callbacks = list(callbacks)
  callbacks = [loop.ProfileFirstChunk(profile_dir)] if profile_dir is not None else []
  if writer:
    callbacks += [loop.WriteMetrics(sink), *extra_callbacks]
  # In the order the checks ran before the loop existed: a Ctrl-C raised from the bar
  # leaves the chunk out of the episode means, as it did.
  callbacks += [
      loop.ProgressBar(desc=env_name, disable=not progress, tqdm_class=tqdm),
      recent, latest,
      checkpoint]
  if jax.process_count() == 1:  # timings differ between processes, and chunks may not
    callbacks.append(loop.BoundedChunks(CHUNK_SECONDS))
  try:
    with sink:
      outcome = loop.run_loop(runner, state, run_keys, num_steps=config.num_steps,
                              chunk=chunk, start_step=done, callbacks=callbacks,
                              should_stop=should_stop)
  except BaseException:  # out of memory, a failed write, a second Ctrl-C, ...
    if writer and not resume and checkpoint.saved_step is None:
      _remove(created, written)  # nothing to resume from: no half-made run is left behind
    raise  # otherwise the folder resumes from its latest checkpoint
  state, done, status = outcome.state, outcome.step, outcome.status
  solved_at, solved_after = None, None
  if status == "solved":
    solved_at = recent.stopped_at[0]
    solved_after = recent.stopped_at[1] - start
  elif status == "non-finite":
    bad = np.flatnonzero(~outcome.output.finite).tolist()
    tqdm.write(
        f"reinforce-jax: loss or parameters became non-finite at step {done + 1} "
        f"(seeds {bad}); stopped and kept each seed's last finite parameters",
        file=sys.stderr)
  elif status == "interrupted":
    tqdm.write(f"reinforce-jax: interrupted; saved the state of step {done} "
               f"(continue with --resume {out})", file=sys.stderr)

  wall = time.perf_counter() - start
  files = []  # the files this process wrote
  final_mean_return = [None if np.isnan(r) else float(r) for r in latest.values]
  if writer:
    files = [METRICS_FILE, CONFIG_FILE, PARAMS_FILE, "learning_curve.png", SUMMARY_FILE,
             CHECKPOINTS_DIR]
    mean_return = _mean_return_curves(out / METRICS_FILE, num_seeds)  # resumed runs included
    final_mean_return = [last_finite(r) for r in mean_return]
    run_folder.write_bytes(out / PARAMS_FILE,
                           serialization.to_bytes(jax.device_get(state.params)))
    plotting.plot_learning_curve(
        mean_return, out / "learning_curve.png",
        title=f"{config.algo.upper()} on {env.name} ({num_seeds} seed{'s' * (num_seeds > 1)})")
  extra = {}
  if preset.report is not None:  # the preset's own outputs (the bandit's exact reward)
    report = preset.report(env, policy, state.params, out if writer else None, done)
    extra = report.summary
    files += list(report.files) if writer else []
  result = Result(
      env=env_name, steps_done=done, num_seeds=num_seeds, status=status,
      final_mean_return=final_mean_return,
      wall_time_s=round(wall, 3), compile_time_s=round(compile_time, 3),
      out_dir=str(out), files=sorted(files),
      solved_at_step=solved_at,
      solved_after_s=None if solved_after is None else round(solved_after, 3),
      recent_mean_return=[None if np.isnan(r) else float(r) for r in recent.means(num_seeds)],
      **extra)
  if writer:
    run_folder.write_text(out / SUMMARY_FILE,
                          json.dumps(dataclasses.asdict(result), indent=2) + "\n")
  return result

