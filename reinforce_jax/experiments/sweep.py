"""Hyperparameter sweeps as one program: `jax.vmap` over a grid and over seeds.

The runs are spread over the local devices (each trains its share; nothing is
communicated).

The learning rate lives in the optimizer state (`optax.inject_hyperparams`) and
the algorithm's hyperparameters in `TrainState.hyperparams` (`algorithms.traced`),
so a batch of runs with different values is one `vmap` of a run: one compile,
every run in parallel.
"""

from __future__ import annotations

import csv
import json
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from reinforce_jax.experiments import loop, plotting, run_folder
from reinforce_jax.experiments.distributed import AXIS, make_mesh
from reinforce_jax.experiments.presets import PRESETS
from reinforce_jax.experiments.runner import CHUNK_SECONDS, steps_per_call
from reinforce_jax.rl.algorithms import traced
from reinforce_jax.rl.config import TrainConfig, sweep_grid
from reinforce_jax.rl.train import make_optimizer, make_run, make_train_step

__all__ = [
    "make_sweep_optimizer",
    "run_sweep",
    "set_learning_rate",
]


def make_sweep_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Adam with its learning rate as state (then clipping, as `make_optimizer`)."""
  return make_optimizer(
      config, adam=optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate))


def set_learning_rate(opt_state, learning_rate):
  """The optimizer state of `make_sweep_optimizer` with another learning rate."""
  # Duck-typed: the state's class is InjectHyperparamsState or, in newer optax,
  # InjectStatefulHyperparamsState; both carry a `hyperparams` dict.
  def has_hyperparams(state):
    return hasattr(state, "hyperparams") and "learning_rate" in state.hyperparams

  def replace(state):
    if has_hyperparams(state):
      hyperparams = {**state.hyperparams,
                     "learning_rate": jnp.asarray(learning_rate, jnp.float32)}
      return state._replace(hyperparams=hyperparams)
    return state
  return jax.tree.map(replace, opt_state, is_leaf=has_hyperparams)


def _run_chunks(runner, states, keys, num_steps: int, chunk: int,
                should_stop: Callable[[], bool] | None) -> tuple[np.ndarray, np.ndarray]:
  """Runs a vmapped `make_run` runner in chunks of about `CHUNK_SECONDS`.

  Returns `[runs, num_steps]` mean returns (NaN past a run's non-finite step) and
  `[runs]` bools: which runs stopped on a non-finite value. Raises
  `KeyboardInterrupt` when `should_stop()` turns true between chunks.
  """
  bounded = loop.BoundedChunks(CHUNK_SECONDS)
  size = bounded.first
  stopped = np.zeros(len(keys), bool)
  curves, done = [], 0
  while done < num_steps:
    asked = min(size, chunk, num_steps - done)
    begun = time.perf_counter()
    output = runner(states, keys, jnp.int32(asked))
    returns = np.asarray(output.metrics["mean_return"])[:, :asked]
    steps_done = np.asarray(output.steps_done)
    size = bounded.next_size(asked, time.perf_counter() - begun)
    ran = (np.arange(asked)[None, :] < steps_done[:, None]) & ~stopped[:, None]
    curves.append(np.where(ran, returns, np.nan))
    stopped |= steps_done < asked  # make_run stops a run on a non-finite value
    states, done = output.state, done + asked
    if should_stop is not None and should_stop():
      raise KeyboardInterrupt("while the sweep ran; nothing written")
  empty = np.zeros((len(keys), 0), np.float32)
  return np.concatenate(curves, axis=1) if curves else empty, stopped


# What a sweep writes into its folder (through `run_folder`: whole files, never through a link).
_FILES = ("sweep.json", "metrics.jsonl", "sweep.csv", "sweep.png")


def _label(combo: Mapping[str, float]) -> str:
  short = {"learning_rate": "lr"}
  return ", ".join(f"{short.get(k, k)} {v:g}" for k, v in combo.items())


def run_sweep(env_name: str, config: TrainConfig, grid: Mapping[str, Sequence[float]], *,
              seed: int = 0, num_seeds: int = 1, devices: int | None = None,
              out_dir: str | pathlib.Path,
              should_stop: Callable[[], bool] | None = None,
              loggers: Sequence[Any] = ()) -> dict:
  """Trains every (grid point, seed) pair in one jit and writes a table and a plot.

  Args:
    env_name: a preset (`reinforce_jax.experiments.presets.PRESETS`).
    config: the settings shared by every run.
    grid: values per swept name, e.g. `{"learning_rate": [1e-3, 3e-3],
      "entropy_coef": [0.0, 0.01]}`: every combination is trained. Names:
      `learning_rate` and the algorithm's float hyperparameters (`config.SWEEPABLE`).
    seed, num_seeds: seed `i` uses the same key at every grid point.
    devices: local devices to spread the runs over (default: all). Runs are
      independent, so each device trains its share with no communication; the
      run count is padded up to a multiple of `devices` (the padding is dropped).
    out_dir: where `sweep.json` (per grid point: each seed's final mean return
      (mean of its last 10 finite steps), their mean and standard deviation, the
      mean learning curve), `sweep.csv` (the table) and `sweep.png` (one mean
      curve per grid point) go, once the runs are done (the folder too). Each
      is written whole and renamed into place (`run_folder`); a symbolic link at
      any of them raises `run_folder.SymlinkError` before one is written.
    should_stop: polled once the program has compiled and after every chunk of
      about a second (`loop.BoundedChunks`); when true, `KeyboardInterrupt` is
      raised and nothing is written (the CLI passes its Ctrl-C flag).
    loggers: `reinforce_jax.experiments.loggers` loggers (anything with `log_curves`): each
      is given every run's `mean_return` curve, `[runs, steps]` in the order of
      `metrics.jsonl`'s `run`.

  `metrics.jsonl` holds one JSON object per train step and run: `step`
  (1-based), `run` (grid point major: run `r` is grid point `r // num_seeds`,
  seed `r % num_seeds`), `seed`, the grid point's values and `mean_return`
  (null where no episode finished).

  Each run equals the standalone run with `config.replace(**grid_point)`. A run
  whose loss or parameters become non-finite stops there (the others go on): its
  later steps are NaN in the curves (null in `metrics.jsonl`), its final return is
  that of its last finite steps, and its row's `non_finite_per_seed` says so.
  """
  combos = sweep_grid(config, grid)
  names = list(grid)
  preset = PRESETS[env_name]
  env = preset.make_env()
  policy = preset.policy(env, config)
  sweep_lr = "learning_rate" in names
  optimizer = make_sweep_optimizer(config) if sweep_lr else make_optimizer(config)
  init_fn, train_step = make_train_step(env, policy, optimizer, config)
  chunk = steps_per_call(max(config.num_steps, 1), 1)
  run = make_run(train_step, chunk)
  hp_names = [n for n in names if n != "learning_rate"]

  def init_one(values, key):
    key_init, key_run = jax.random.split(key)
    state = init_fn(key_init)
    if sweep_lr:
      state = state._replace(
          opt_state=set_learning_rate(state.opt_state, values["learning_rate"]))
    if hp_names:
      state = state._replace(hyperparams=traced(
          config.algorithm, **{n: values[n] for n in hp_names}))
    return state, key_run

  # One flat batch of runs, grid point major: run r = (combo r // S, seed r % S).
  num_runs = len(combos) * num_seeds
  num_devices = jax.local_device_count() if devices is None else devices
  if not 1 <= num_devices <= jax.local_device_count():
    raise ValueError(f"devices must be in [1, {jax.local_device_count()}], got {num_devices}")
  padded = -(-num_runs // num_devices) * num_devices
  index = np.minimum(np.arange(padded), num_runs - 1)  # padding repeats the last run
  values = {n: jnp.asarray([combos[r // num_seeds][n] for r in index], jnp.float32)
            for n in names}
  keys = jax.random.split(jax.random.key(seed), num_seeds)[index % num_seeds]
  if num_devices > 1:
    runs_axis = NamedSharding(make_mesh(num_devices), PartitionSpec(AXIS))
    values, keys = jax.device_put((values, keys), runs_axis)
  start = time.perf_counter()
  states, run_keys = jax.jit(jax.vmap(init_one))(values, keys)
  runner = jax.jit(jax.vmap(run, in_axes=(0, 0, None)), donate_argnums=0)
  runner = runner.lower(states, run_keys, 0).compile()
  compile_s = time.perf_counter() - start
  if should_stop is not None and should_stop():
    raise KeyboardInterrupt("before the sweep ran; nothing written")
  curves, stopped = _run_chunks(runner, states, run_keys, config.num_steps, chunk, should_stop)
  returns = curves[:num_runs].reshape(len(combos), num_seeds, -1)  # [points, seeds, steps]
  stopped = stopped[:num_runs].reshape(len(combos), num_seeds)
  wall_s = time.perf_counter() - start
  rows = []
  for combo, curves, diverged in zip(combos, returns, stopped, strict=True):
    finals = []
    for curve in curves:
      finite = curve[np.isfinite(curve)]
      finals.append(float(finite[-10:].mean()) if finite.size else float("nan"))
    rows.append({**combo, "label": _label(combo), "final_return_per_seed": finals,
                 "non_finite_per_seed": diverged.tolist(),
                 "final_return_mean": float(np.mean(finals)),
                 "final_return_std": float(np.std(finals)),
                 "curve_mean": np.nanmean(np.where(np.isfinite(curves), curves, np.nan),
                                          axis=0).tolist()})
  means = [r["final_return_mean"] for r in rows]
  best = int(np.nanargmax(means)) if np.isfinite(means).any() else None
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for name in _FILES:  # no link among the outputs: refused before any of them is written
    run_folder.refuse_links(out / name)
  result = {"env": env_name, "algo": config.algo, "swept": {n: list(grid[n]) for n in names},
            "num_seeds": num_seeds, "num_steps": config.num_steps, "compile_s": compile_s,
            "wall_s": wall_s, "runs": num_runs, "devices": num_devices,
            "best": None if best is None else {n: rows[best][n] for n in names},
            "config": {k: v for k, v in config.to_dict().items() if k not in names},
            "rows": rows}
  run_folder.write_text(out / "sweep.json", json.dumps(result, indent=2) + "\n")
  with run_folder.atomic_writer(out / "metrics.jsonl") as f:
    for step in range(returns.shape[-1]):
      for run in range(num_runs):
        value = float(returns[run // num_seeds, run % num_seeds, step])
        f.write(json.dumps({"step": step + 1, "run": run, "seed": run % num_seeds,
                            **combos[run // num_seeds],
                            "mean_return": value if np.isfinite(value) else None}) + "\n")
  for logger in loggers:
    logger.log_curves({"mean_return": returns.reshape(num_runs, -1)})
  with run_folder.atomic_writer(out / "sweep.csv", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([*names, "final_return_mean", "final_return_std",
                     *(f"seed_{i}" for i in range(num_seeds))])
    for row in rows:
      writer.writerow([*(row[n] for n in names), row["final_return_mean"],
                       row["final_return_std"], *row["final_return_per_seed"]])
  swept = " x ".join(names)
  plotting.plot_sweep(rows, out / "sweep.png",
                      title=f"{config.algo.upper()} on {env.name}: {swept} sweep "
                            f"({num_seeds} seed{'s' * (num_seeds > 1)} each)")
  return result
