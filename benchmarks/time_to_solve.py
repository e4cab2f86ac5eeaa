"""Time to solve CartPole-v1 from process start, with the CLI's defaults.

Runs `reinforce-jax train cartpole --num-seeds 5` (nothing else but `--seed` and
an output folder; `--algo` if given) in fresh processes and times each from
launch to exit. With its defaults the CartPole preset stops once every seed's
latest mean return reaches gymnasium's solved threshold, 475. Each launch runs
twice: cold (an empty compilation cache) and warm (the cache the cold run
filled), since the CLI keeps JAX's persistent compilation cache by default.

    python benchmarks/time_to_solve.py [--algo ppo] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import common

TARGET_S = 20.0
GOAL_S = 10.0


def launch(args, seed: int, cache: str) -> dict:
  with tempfile.TemporaryDirectory() as out:
    command = [sys.executable, "-m", "reinforce_jax", "train", args.env, "--num-seeds",
               str(args.num_seeds), "--seed", str(seed), "--no-progress", "--out", out]
    if args.algo:
      command += ["--algo", args.algo]
    env = {**os.environ, "REINFORCE_JAX_CACHE_DIR": cache}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    summary = json.loads((pathlib.Path(out) / "summary.json").read_text())
  returns = [r for r in summary["final_mean_return"] if r is not None]
  recent = summary.get("recent_mean_return") or []
  return {"seed": seed, "wall_s": wall, "status": summary["status"],
          "steps_done": summary["steps_done"], "solved_at_step": summary["solved_at_step"],
          "compile_s": summary["compile_time_s"], "solved_after_s": summary["solved_after_s"],
          "worst_final_return": min(returns) if returns else None,
          "worst_last_100_episodes": (min(recent) if recent and None not in recent else None)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--env", default="cartpole")
  parser.add_argument("--algo", default=None)
  parser.add_argument("--num-seeds", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out")
  args = parser.parse_args()
  runs = {"cold": [], "warm": []}
  for seed in range(args.repeats):
    with tempfile.TemporaryDirectory() as cache:
      for start in ("cold", "warm"):
        run = launch(args, seed, cache)
        runs[start].append(run)
        print(f"seed {seed} {start}: {run['status']} after {run['steps_done']} steps, worst seed's "
              f"last 100 episodes {run['worst_last_100_episodes']} (last step "
              f"{run['worst_final_return']}), {run['wall_s']:.1f} s from process start "
              f"(compile {run['compile_s']:.1f} s)", flush=True)
  results = {"env": args.env, "algo": args.algo or "preset default", "num_seeds": args.num_seeds,
             "command": f"reinforce-jax train {args.env} --num-seeds {args.num_seeds}",
             "runs": runs, "target_s": TARGET_S, "goal_s": GOAL_S}
  for start, rows in runs.items():
    results[f"median_wall_s_{start}"] = statistics.median(r["wall_s"] for r in rows)
    results[f"median_compile_s_{start}"] = statistics.median(r["compile_s"] for r in rows)
  # Gymnasium's definition: the mean over each seed's last 100 episodes.
  results["every_seed_ended_at_475"] = all(
      r["status"] == "solved" and r["worst_last_100_episodes"] is not None
      and r["worst_last_100_episodes"] >= 475.0 for rows in runs.values() for r in rows)
  print(f"median from process start: cold {results['median_wall_s_cold']:.1f} s, warm "
        f"{results['median_wall_s_warm']:.1f} s (target <= {TARGET_S} s, goal {GOAL_S} s); "
        f"every seed's last 100 episodes ended at >= 475: {results['every_seed_ended_at_475']}")
  name = f"time_to_solve-{args.env}" + (f"-{args.algo}" if args.algo else "")
  print(f"wrote {common.write(name, results, args.out)}")


if __name__ == "__main__":
  main()
