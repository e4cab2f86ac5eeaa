"""Hyperparameter sweeps as one program: `jax.vmap` over learning rates and seeds.

The learning rate lives in the optimizer state (`optax.inject_hyperparams`), so
a batch of runs with different rates is one `vmap` of `make_train`'s run: one
compile, every run in parallel.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reinforce_jax import plotting
from reinforce_jax.compiler import recommended_compiler_options
from reinforce_jax.config import TrainConfig
from reinforce_jax.presets import PRESETS
from reinforce_jax.train import make_run, make_train_step


def make_sweep_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Adam with its learning rate as state (then clipping, as `make_optimizer`)."""
  adam = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)
  if config.max_grad_norm is None:
    return adam
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


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


def run_sweep(env_name: str, config: TrainConfig, learning_rates: list[float], *,
              seed: int = 0, num_seeds: int = 1, algo_name: str = "",
              out_dir: str | pathlib.Path) -> dict:
  """Trains every (learning rate, seed) pair in one jit and writes a table and a plot.

  Outputs in `out_dir`: `sweep.json` (per learning rate: the final mean return
  of each seed, their mean and standard deviation, and the mean learning
  curve) and `sweep.png` (one curve per learning rate, mean over seeds).
  Seed `i` uses the same key for every learning rate.
  """
  preset = PRESETS[env_name]
  env = preset.make_env()
  policy = preset.policy(env, config)
  init_fn, train_step = make_train_step(env, policy, make_sweep_optimizer(config), config)
  run = make_run(train_step, max(config.num_steps, 1))

  def one(learning_rate, key):
    key_init, key_run = jax.random.split(key)
    state = init_fn(key_init)
    state = state._replace(opt_state=set_learning_rate(state.opt_state, learning_rate))
    return run(state, key_run, config.num_steps).metrics["mean_return"]

  keys = jax.random.split(jax.random.key(seed), num_seeds)
  grid = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))
  start = time.perf_counter()
  compiled = jax.jit(grid, compiler_options=recommended_compiler_options()).lower(
      jnp.asarray(learning_rates, jnp.float32), keys).compile()
  compile_s = time.perf_counter() - start
  returns = np.asarray(compiled(jnp.asarray(learning_rates, jnp.float32), keys))  # [L, S, N]
  wall_s = time.perf_counter() - start
  rows = []
  for lr, curves in zip(learning_rates, returns, strict=True):
    finals = []
    for curve in curves:
      finite = curve[np.isfinite(curve)]
      finals.append(float(finite[-10:].mean()) if finite.size else float("nan"))
    rows.append({"learning_rate": lr, "final_return_per_seed": finals,
                 "final_return_mean": float(np.mean(finals)),
                 "final_return_std": float(np.std(finals)),
                 "curve_mean": np.nanmean(np.where(np.isfinite(curves), curves, np.nan),
                                          axis=0).tolist()})
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  result = {"env": env_name, "algo": config.algo, "num_seeds": num_seeds,
            "num_steps": config.num_steps, "compile_s": compile_s, "wall_s": wall_s,
            "runs": len(learning_rates) * num_seeds, "rows": rows}
  (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
  plotting.plot_sweep(rows, out / "sweep.png",
                      title=f"{config.algo.upper()} on {env.name}: learning-rate sweep "
                            f"({num_seeds} seed{'s' * (num_seeds > 1)} each)")
  return result
