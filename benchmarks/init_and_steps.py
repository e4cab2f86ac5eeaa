"""A research loop's whole cost on the seed's bandit: build a state, then train.

What a user writes per seed or per sweep point, on the plain path:

    init_fn, train_step = rj.make_train_step(env, policy, optimizer, config)
    step = jax.jit(train_step)
    state = init_fn(key)              # built per seed
    for _ in range(300):
      state, metrics = step(state, key)

timed warm (both programs compiled; the first calls, compile included, are
reported beside), against the shortest hand-written fused JAX loop doing the same
work (benchmarks/reference.py: its parameters and optimizer state built, then
`lax.scan` over the steps in one plain `jax.jit` program). Each round times every
candidate once, in turn, and the ratio is of medians over rounds.

    python benchmarks/init_and_steps.py            # 4,096 episodes per update, 300 steps
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import optax
import reference

import reinforce_jax as rj
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.rl.policies import CategoricalPolicy

TARGET = 1.3  # init once + the steps, over the fused loop
GOAL = 1.1


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-envs", type=int, default=4096)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--out")
  args = parser.parse_args()

  env, policy = ContextualBandit(), CategoricalPolicy(2, hidden=())
  optimizer = optax.adam(0.01)
  config = rj.TrainConfig(num_envs=args.num_envs, rollout_length=1)
  key = jax.random.key(0)

  start = time.perf_counter()
  init_fn, train_step = rj.make_train_step(env, policy, optimizer, config)
  step = jax.jit(train_step)
  state = common.block(init_fn(key))
  first_init_s = time.perf_counter() - start
  common.block(step(state, key))
  first_step_s = time.perf_counter() - start - first_init_s

  loop = jax.jit(reference.make_fused_loop(args.num_envs, optimizer), static_argnums=3)
  start = time.perf_counter()
  params = reference.init_params()
  common.block(loop(params, optimizer.init(params), key, args.steps))
  first_reference_s = time.perf_counter() - start

  def library(seed=[0]) -> float:  # noqa: B006 (a counter: a new seed every round)
    seed[0] += 1
    start = time.perf_counter()
    s = init_fn(jax.random.key(seed[0]))
    for _ in range(args.steps):
      s, _ = step(s, key)
    common.block(s)
    return time.perf_counter() - start

  def library_init_only(seed=[0]) -> float:  # noqa: B006
    seed[0] += 1
    return common.timed(lambda: common.block(init_fn(jax.random.key(seed[0]))))

  def fused() -> float:
    start = time.perf_counter()
    p = reference.init_params()
    common.block(loop(p, optimizer.init(p), key, args.steps))
    return time.perf_counter() - start

  timings = common.interleaved_medians(
      {"init_plus_steps": library, "init_only": library_init_only, "reference_fused_loop": fused},
      args.rounds)
  ratio = timings["init_plus_steps"]["median_s"] / timings["reference_fused_loop"]["median_s"]
  payload = {
      "command": "python benchmarks/init_and_steps.py "
                 f"--num-envs {args.num_envs} --steps {args.steps} --rounds {args.rounds}",
      "num_envs": args.num_envs, "steps": args.steps, "timings": timings,
      "first_call_s": {"init_fn_compile_and_run": first_init_s,
                       "train_step_compile_and_run": first_step_s,
                       "reference_fused_loop_compile_and_run": first_reference_s},
      "ratio_init_plus_steps_to_reference": ratio,
      "target": TARGET, "goal": GOAL,
  }
  path = common.write("init_and_steps", payload, args.out)
  print(f"init_fn once + {args.steps} plain jax.jit steps: "
        f"{timings['init_plus_steps']['median_s'] * 1e3:.1f} ms; init_fn alone "
        f"{timings['init_only']['median_s'] * 1e6:.0f} us; the fused loop "
        f"{timings['reference_fused_loop']['median_s'] * 1e3:.1f} ms")
  print(f"ratio {ratio:.2f} (target <= {TARGET}, goal {GOAL}); first calls: init_fn "
        f"{first_init_s:.2f} s, train_step {first_step_s:.2f} s, fused loop "
        f"{first_reference_s:.2f} s -> {path}")


if __name__ == "__main__":
  main()
