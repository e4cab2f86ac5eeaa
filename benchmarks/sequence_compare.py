"""RLOO, GRPO and Dr. GRPO training the sort preset's transformer: same budget, several seeds.

Each estimator is paired with its published aggregation (RLOO: `sequence_sum`;
GRPO: `sequence_mean`; Dr. GRPO: `constant`) and trains the sort preset
(5 digits of 0-9, 32 prompts x 8 completions a step, Adam 1e-3) for the same
number of steps; the seeds of one estimator are one program
(`jax.vmap` over `make_run`). Reported per estimator: the mean reward of the
last 20 steps (mean and spread over seeds), the first step whose 10-step mean
reward reaches 0.9 (per seed), and the wall time.

    .venv/bin/python benchmarks/sequence_compare.py [--steps 300] [--seeds 4]

Writes `benchmarks/results/sequence_compare-<device>.json` and `.png`.
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import numpy as np

from reinforce_jax.experiments.presets import PRESETS
from reinforce_jax.rl.train import make_run

RUNS = {
    "RLOO": {"estimator": "rloo", "aggregation": "sequence_sum"},
    "GRPO": {"estimator": "grpo", "aggregation": "sequence_mean"},
    "Dr. GRPO": {"estimator": "dr_grpo", "aggregation": "constant"},
}
THRESHOLD = 0.9


def _first_reaching(curve: np.ndarray, window: int = 10) -> int | None:
  smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
  hits = np.flatnonzero(smooth >= THRESHOLD)
  return int(hits[0] + window) if hits.size else None


def _train(settings: dict, steps: int, seeds: int) -> dict:
  preset = PRESETS["sort"]
  config = preset.configs["reinforce"].replace(num_steps=steps)
  init_fn, train_step = preset.build_step(config, {**preset.options, **settings})
  keys = jax.random.split(jax.random.key(0), seeds)
  init_keys, run_keys = keys, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  runner = jax.jit(jax.vmap(make_run(train_step, steps), in_axes=(0, 0, None)))
  start = time.perf_counter()
  states = jax.jit(jax.vmap(init_fn))(init_keys)
  compiled = runner.lower(states, run_keys, steps).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  out = common.block(compiled(states, run_keys, steps))
  train_s = time.perf_counter() - start
  curves = np.asarray(out.metrics["mean_return"])  # [seeds, steps]
  final = curves[:, -20:].mean(axis=1)
  return {
      "settings": settings, "steps": steps, "seeds": seeds,
      "compile_s": compile_s, "train_s": train_s,
      "final_reward_mean": float(final.mean()), "final_reward_std": float(final.std()),
      "final_reward_per_seed": final.tolist(),
      "step_reaching_0.9": [_first_reaching(c) for c in curves],
      "final_entropy": float(np.asarray(out.metrics["entropy"])[:, -20:].mean()),
      "final_kl": float(np.asarray(out.metrics["kl"])[:, -20:].mean()),
      "curve_mean": curves.mean(axis=0).tolist(),
      "curve_min": curves.min(axis=0).tolist(),
      "curve_max": curves.max(axis=0).tolist(),
  }


def _plot(results: dict, path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4))
  for name, r in results.items():
    x = np.arange(1, r["steps"] + 1)
    (line,) = ax.plot(x, r["curve_mean"], label=f"{name} ({r['settings']['aggregation']})")
    ax.fill_between(x, r["curve_min"], r["curve_max"], color=line.get_color(), alpha=0.15)
  ax.axhline(THRESHOLD, color="grey", lw=0.8, ls="--")
  ax.set_xlabel("train step (32 prompts x 8 completions)")
  ax.set_ylabel("mean reward (fraction of positions right)")
  ax.set_title(f"Sorting 5 digits of 0-9 from scratch ({next(iter(results.values()))['seeds']} "
               "seeds: mean, min-max)")
  ax.set_ylim(0, 1.02)
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--out")
  args = parser.parse_args()
  results = {name: _train(settings, args.steps, args.seeds) for name, settings in RUNS.items()}
  print(f"{'estimator':<10} {'aggregation':<14} {'final reward':>14} {'step to 0.9 (per seed)':>26}"
        f" {'train s':>8}")
  for name, r in results.items():
    print(f"{name:<10} {r['settings']['aggregation']:<14} "
          f"{r['final_reward_mean']:>8.3f} +- {r['final_reward_std']:.3f} "
          f"{str(r['step_reaching_0.9']):>26} {r['train_s']:>8.1f}")
  path = common.write("sequence_compare", {"threshold": THRESHOLD, "results": results}, args.out)
  _plot(results, path.with_suffix(".png"))
  print(path, path.with_suffix(".png"))


if __name__ == "__main__":
  main()
