"""Every algorithm on every environment with the presets' defaults: returns,
steps and wall time, plus one figure of the learning curves.

Each cell is `reinforce-jax train ENV --algo ALGO --num-seeds N --stop-at-return
none` in a fresh process (compile included in the wall time): every preset's
whole budget. Writes
benchmarks/results/algorithms-<device>.json and algorithms-<device>.png.

    python benchmarks/algorithms.py [--num-seeds 3]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import common
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CELLS = [("cartpole", "reinforce"), ("cartpole", "a2c"), ("cartpole", "ppo"),
         ("pendulum", "reinforce"), ("pendulum", "a2c"), ("pendulum", "ppo")]


def run_cell(env: str, algo: str, num_seeds: int) -> dict:
  with tempfile.TemporaryDirectory() as out:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reinforce_jax", "train", env, "--algo", algo,
                    "--num-seeds", str(num_seeds), "--no-progress", "--out", out,
                    # Each preset's whole budget, not the stop at a solved threshold.
                    "--stop-at-return", "none"],
                   check=True, capture_output=True)
    wall = time.perf_counter() - start
    summary = json.loads((pathlib.Path(out) / "summary.json").read_text())
    config = json.loads((pathlib.Path(out) / "config.json").read_text())
    rows = [json.loads(line) for line in (pathlib.Path(out) / "metrics.jsonl").open()]
  curves = np.full((num_seeds, summary["steps_done"]), np.nan)
  for row in rows:
    if row["mean_return"] is not None:
      curves[row["seed"], row["step"] - 1] = row["mean_return"]
  # Mean of the last 10 steps with finished episodes, per seed.
  last = [float(np.mean(c[np.isfinite(c)][-10:])) for c in curves]
  return {
      "env": env, "algo": algo, "num_seeds": num_seeds, "wall_s": wall,
      "compile_s": summary["compile_time_s"], "steps": summary["steps_done"],
      "env_steps_per_seed": summary["steps_done"] * config["num_envs"] * config["rollout_length"],
      "final_return_per_seed": last, "final_return_mean": float(np.mean(last)),
      "final_return_worst": float(np.min(last)), "curve_mean": np.nanmean(curves, 0).tolist(),
      "env_steps_per_train_step": config["num_envs"] * config["rollout_length"],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-seeds", type=int, default=3)
  parser.add_argument("--out")
  parser.add_argument("--replot", metavar="JSON", help="only redraw the figure of a result")
  args = parser.parse_args()
  if args.replot:
    result = json.loads(pathlib.Path(args.replot).read_text())
    plot(result["cells"], result["num_seeds"], pathlib.Path(args.replot).with_suffix(".png"))
    return
  cells = []
  for env, algo in CELLS:
    cell = run_cell(env, algo, args.num_seeds)
    cells.append(cell)
    print(f"{env:9} {algo:9} return {cell['final_return_mean']:8.1f} "
          f"(worst seed {cell['final_return_worst']:8.1f}) after {cell['steps']} steps "
          f"= {cell['env_steps_per_seed']:,} env steps per seed, {cell['wall_s']:.1f} s "
          f"(compile {cell['compile_s']:.1f} s)", flush=True)
  path = common.write("algorithms", {"num_seeds": args.num_seeds, "cells": cells}, args.out)
  plot(cells, args.num_seeds, path.with_suffix(".png"))
  print(f"wrote {path} and {path.with_suffix('.png')}")


def plot(cells, num_seeds, figure):
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
  for ax, env in zip(axes, ("cartpole", "pendulum"), strict=True):
    for cell in cells:
      if cell["env"] == env:
        curve = np.asarray(cell["curve_mean"], dtype=float)
        x = np.arange(1, len(curve) + 1) * cell["env_steps_per_train_step"]
        ok = np.isfinite(curve)  # steps in which no episode finished have no return
        ax.plot(x[ok], curve[ok], label=cell["algo"])
    ax.set_title(f"{env} (mean of {num_seeds} seeds)")
    ax.set_xlabel("environment steps per seed")
    ax.set_ylabel("mean episode return")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(figure)
  plt.close(fig)


if __name__ == "__main__":
  main()
