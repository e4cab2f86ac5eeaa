"""A/B of this working tree against an earlier commit, interleaved in one run.

Measures the programs a change must not slow down, with the API both
trees share (`TrainConfig` + `make_train_step`, the presets, the CLI):

  * `bandit_plain_jit_us`: the seed's bandit at 4096 environments, a Python
    loop over `jax.jit(train_step)` (no options), microseconds per step;
  * `cartpole_reinforce_value_ms`: CartPole REINFORCE with the value baseline
    (64 environments x 200 steps, a separate critic), `jax.jit(train_step)`,
    milliseconds per step;
  * `ppo_env_steps_per_s`: the CartPole PPO preset (4 x 128, 4 x 4 minibatch
    updates) fused by `make_run` over 50 steps, environment steps per second;
  * `ppo_2048_env_steps_per_s`: the same preset at 2048 environments (minibatches
    of 65,536 transitions), `make_run` over 2 steps;
  * `time_to_solve_s`: `reinforce-jax train cartpole --num-seeds 5` from process
    start to exit (every seed's last 100 episodes >= 475), no compilation cache.

Each round runs both trees one after the other (alternating which goes first),
in fresh processes whose `PYTHONPATH` selects the tree; medians and the ratio
new/old are written as JSON.

    python benchmarks/ab_commits.py --base 9fa0d42 --rounds 5
    python benchmarks/ab_commits.py --base 5208162 --new 736f4fd --rounds 3  # two commits
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

ROOT = pathlib.Path(__file__).resolve().parents[1]

PROBE = r"""
import json, time, statistics, sys
import jax, jax.numpy as jnp, optax
import reinforce_jax as rj
from reinforce_jax.envs import CartPole, ContextualBandit
CategoricalPolicy = rj.policies.CategoricalPolicy
# The package layout (reinforce_jax.experiments), or the flat one before it. Decided by
# the tree, not by trying: an editable install would find the other tree's subpackage.
import os
if os.path.isdir(os.path.join(sys.argv[1], "reinforce_jax", "experiments")):
  from reinforce_jax.experiments.presets import PRESETS
else:
  from reinforce_jax.presets import PRESETS
assert rj.__file__.startswith(sys.argv[1]), rj.__file__

def loop_us(config, env, policy, steps, lr):
  init_fn, train_step = rj.make_train_step(env, policy, optax.adam(lr), config)
  step = jax.jit(train_step)
  state, key = init_fn(jax.random.key(0)), jax.random.key(1)
  state, m = step(state, key); jax.block_until_ready(state)
  blocks = []
  for _ in range(5):
    t = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, key)
    jax.block_until_ready(state)
    blocks.append((time.perf_counter() - t) / steps)
  return statistics.median(blocks) * 1e6

out = {}
out["bandit_plain_jit_us"] = loop_us(rj.TrainConfig(num_envs=4096), ContextualBandit(),
                                     CategoricalPolicy(2, hidden=()), 200, 0.05)
out["cartpole_reinforce_value_ms"] = loop_us(
    rj.TrainConfig(num_envs=64, rollout_length=200, baseline="value", learning_rate=1e-3),
    CartPole(), CategoricalPolicy(2, hidden=(64, 64), value="separate"), 10, 1e-3) / 1e3
def ppo_env_steps_per_s(config, steps):
  policy = CategoricalPolicy(2, hidden=(64, 64), value="separate")
  init_fn, train_step = rj.make_train_step(CartPole(), policy, rj.make_optimizer(config), config)
  run = jax.jit(rj.make_run(train_step, steps))
  state, key = init_fn(jax.random.key(0)), jax.random.key(1)
  jax.block_until_ready(run(state, key, steps))
  times = []
  for _ in range(3):
    t = time.perf_counter(); jax.block_until_ready(run(state, key, steps))
    times.append(time.perf_counter() - t)
  return steps * config.num_envs * config.rollout_length / statistics.median(times)

config = PRESETS["cartpole"].configs["ppo"]
out["ppo_env_steps_per_s"] = ppo_env_steps_per_s(config, 50)
out["ppo_2048_env_steps_per_s"] = ppo_env_steps_per_s(config.replace(num_envs=2048), 2)
print(json.dumps(out))
"""


def probe(tree: pathlib.Path) -> dict:
  env = {**os.environ, "PYTHONPATH": str(tree)}
  with tempfile.TemporaryDirectory() as cwd:  # not the repository: PYTHONPATH decides
    result = subprocess.run([sys.executable, "-c", PROBE, str(tree)], env=env, cwd=cwd,
                            capture_output=True, text=True)
    if result.returncode:
      raise SystemExit(f"the probe failed in {tree}:\n{result.stderr}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reinforce_jax", "train", "cartpole",
                    "--num-seeds", "5", "--out", f"{cwd}/run", "--compilation-cache", "none"],
                   env=env, cwd=cwd, capture_output=True, text=True, check=True)
    out["time_to_solve_s"] = time.perf_counter() - start
    summary = json.loads(pathlib.Path(f"{cwd}/run/summary.json").read_text())
    out["solved"] = summary["status"] == "solved"
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--base", default="9fa0d42", help="the commit to compare against")
  parser.add_argument("--new", help="the commit to measure (default: this working tree)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out", default=str(ROOT / "benchmarks/results/ab_commits-cpu.json"))
  args = parser.parse_args()
  base = pathlib.Path(tempfile.mkdtemp(prefix="rj-base-"))
  subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
                 check=True, capture_output=True)
  new = ROOT
  if args.new:
    new = pathlib.Path(tempfile.mkdtemp(prefix="rj-new-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(new), args.new],
                   check=True, capture_output=True)
  head = subprocess.run(["git", "-C", str(new), "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True, check=True).stdout.strip()
  dirty = bool(subprocess.run(["git", "-C", str(new), "status", "--porcelain",
                               "reinforce_jax"], capture_output=True, text=True).stdout.strip())
  trees = {"old": base, "new": new}
  samples: dict[str, list[dict]] = {"old": [], "new": []}
  try:
    for r in range(args.rounds):
      order = ("old", "new") if r % 2 == 0 else ("new", "old")
      for name in order:
        samples[name].append(probe(trees[name]))
        print(f"round {r} {name}: {samples[name][-1]}", flush=True)
  finally:
    for tree in {base, new} - {ROOT}:
      subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                     capture_output=True)
  metrics = [k for k in samples["new"][0] if k != "solved"]
  medians = {name: {k: statistics.median(s[k] for s in runs) for k in metrics}
             for name, runs in samples.items()}
  # Ratios new / old; for throughput above 1 is faster, for times below 1 is faster.
  ratio = {k: medians["new"][k] / medians["old"][k] for k in metrics}
  import jax  # only for the device and versions

  sys.path.insert(0, str(ROOT / "benchmarks"))
  from common import environment

  result = {"benchmark": "ab_commits", "old": args.base, "new": head + ("+dirty" * dirty),
            "rounds": args.rounds, "medians": medians, "ratio_new_over_old": ratio,
            "all_solved": {n: all(s["solved"] for s in runs) for n, runs in samples.items()},
            "samples": samples, "environment": environment(), "jax": jax.__version__}
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps({"medians": medians, "ratio_new_over_old": ratio}, indent=2))


if __name__ == "__main__":
  main()
