"""Raw environment stepping: our CartPole against gymnax's, side by side.

Both are stepped the same way: `jax.vmap` over `--num-envs` environments,
`lax.scan` over `--steps` steps, uniformly random actions, auto-reset included,
one jitted program per environment. Ours is also stepped through
`step_batch` (one key per batch, as the rollout does). Timings are interleaved
rounds.

    python benchmarks/env_stepping.py [--num-envs 4096] [--steps 1000]
"""

from __future__ import annotations

import argparse

import common
import jax
import jax.numpy as jnp

import reinforce_jax as rj
from reinforce_jax.envs import CartPole, make

TARGET_RATIO = 1.2


def make_stepper(env, num_envs: int, steps: int, options):
  params = env.default_params

  def run(key):
    key_reset, key_run = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key_reset, num_envs), params)

    def one(carry, key):
      state, total = carry
      key_action, key_step = jax.random.split(key)
      action = jax.random.randint(key_action, (num_envs,), 0, 2)
      _, state, reward, *_ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
          jax.random.split(key_step, num_envs), state, action, params)
      return (state, total + reward.sum()), None

    (_, total), _ = jax.lax.scan(one, (state, jnp.float32(0)), jax.random.split(key_run, steps))
    return total

  return jax.jit(run, compiler_options=options)


def make_batch_stepper(env, num_envs: int, steps: int, options):
  """The same loop through `reset_batch`/`step_batch` (one key per batch), as the rollout."""
  params = env.default_params

  def run(key):
    key_reset, key_run = jax.random.split(key)
    obs, state = env.reset_batch(key_reset, params, num_envs)

    def one(carry, key):
      state, total = carry
      key_action, key_step = jax.random.split(key)
      action = jax.random.randint(key_action, (num_envs,), 0, 2)
      _, state, reward, *_ = env.step_batch(key_step, state, action, params)
      return (state, total + reward.sum()), None

    (_, total), _ = jax.lax.scan(one, (state, jnp.float32(0)), jax.random.split(key_run, steps))
    return total

  return jax.jit(run, compiler_options=options)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-envs", type=int, default=4096)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--compiler-options", choices=["recommended", "default"],
                      default="recommended")
  parser.add_argument("--out")
  args = parser.parse_args()
  options = rj.recommended_compiler_options() if args.compiler_options == "recommended" else {}
  envs = {"reinforce_jax": CartPole()}
  try:
    envs["gymnax"] = make("gymnax:CartPole-v1")
  except ImportError:
    print("gymnax is not installed (pip install 'reinforce_jax[gymnax]'): ours only")
  key = jax.random.key(0)
  candidates = {}
  steppers = {name: make_stepper(env, args.num_envs, args.steps, options)
              for name, env in envs.items()}
  steppers["reinforce_jax_step_batch"] = make_batch_stepper(
      envs["reinforce_jax"], args.num_envs, args.steps, options)
  for name, run in steppers.items():
    common.block(run(key))
    candidates[name] = (lambda run=run: common.timed(lambda: common.block(run(key)))
                        / args.steps)
  timings = common.interleaved_medians(candidates, args.rounds)
  steps_per_s = {n: args.num_envs / t["median_s"] for n, t in timings.items()}
  results = {"num_envs": args.num_envs, "steps": args.steps, "timings": timings,
             "env_steps_per_s": steps_per_s, "compiler_options": options}
  for name, t in timings.items():
    print(f"{name:24} {t['median_s'] * 1e6:9.1f} us/step {steps_per_s[name]:>16,.0f} "
          "env steps/s")
  if "gymnax" in timings:
    ratio = timings["reinforce_jax"]["median_s"] / timings["gymnax"]["median_s"]
    batched = timings["reinforce_jax_step_batch"]["median_s"] / timings["gymnax"]["median_s"]
    results["ratio_ours_to_gymnax"] = ratio
    results["ratio_ours_step_batch_to_gymnax"] = batched
    results["target_ratio"] = TARGET_RATIO
    print(f"ours / gymnax: {ratio:.2f} with vmap(step), {batched:.2f} with step_batch "
          f"(target <= {TARGET_RATIO})")
  print(f"wrote {common.write('env_stepping-cartpole', results, args.out)}")


if __name__ == "__main__":
  main()
