"""Time to solve CartPole-v1 from process start, compile included.

Runs `reinforce-jax train cartpole --num-seeds 5 --stop-at-return 475` in a
fresh process (the preset's default algorithm unless `--algo` is given) and
times it from launch to exit. Solved means: the mean return of the episodes
finished in a train step is at least 475 for every one of the 5 seeds (trained
in parallel in one jit). Compile time comes from the run's summary.

    python benchmarks/time_to_solve.py [--algo ppo] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import common

TARGET_S = 20.0


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--env", default="cartpole")
  parser.add_argument("--algo", default=None)
  parser.add_argument("--num-seeds", type=int, default=5)
  parser.add_argument("--target", type=float, default=475.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out")
  args = parser.parse_args()
  runs = []
  for repeat in range(args.repeats):
    with tempfile.TemporaryDirectory() as out:
      command = [sys.executable, "-m", "reinforce_jax", "train", args.env, "--num-seeds",
                 str(args.num_seeds), "--stop-at-return", str(args.target), "--seed",
                 str(repeat), "--no-progress", "--out", out]
      if args.algo:
        command += ["--algo", args.algo]
      start = time.perf_counter()
      subprocess.run(command, check=True, capture_output=True)
      wall = time.perf_counter() - start
      summary = json.loads((pathlib.Path(out) / "summary.json").read_text())
    run = {"seed": repeat, "wall_s": wall, "status": summary["status"],
           "solved_at_step": summary["solved_at_step"],
           "compile_s": summary["compile_time_s"], "solved_after_s": summary["solved_after_s"]}
    runs.append(run)
    print(f"seed {repeat}: {summary['status']} at step {summary['solved_at_step']}, "
          f"{wall:.1f} s from process start (compile {summary['compile_time_s']:.1f} s)",
          flush=True)
  solved = [r["wall_s"] for r in runs if r["status"] == "solved"]
  results = {"env": args.env, "algo": args.algo or "preset default", "target_return": args.target,
             "num_seeds": args.num_seeds, "runs": runs, "target_s": TARGET_S,
             "median_wall_s": statistics.median(solved) if solved else None,
             "all_solved": len(solved) == len(runs)}
  print(f"median {results['median_wall_s']} s over {len(runs)} launches "
        f"(target <= {TARGET_S} s); all solved: {results['all_solved']}")
  name = f"time_to_solve-{args.env}" + (f"-{args.algo}" if args.algo else "")
  print(f"wrote {common.write(name, results, args.out)}")


if __name__ == "__main__":
  main()
