"""Raw environment stepping: our CartPole against gymnax's, side by side.

Both are stepped the same way: `jax.vmap` over `--num-envs` environments,
`lax.scan` over `--steps` steps, uniformly random actions, auto-reset included,
one jitted program per environment, under plain `jax.jit`. Ours is also stepped
through `step_batch` (one key per batch, as the rollout does). Timings are
interleaved rounds.

Every program returns what a training loop consumes: the final environment
state, a checksum of every step's observations and the sum of the rewards. A
benchmark that drops the state and only sums CartPole's constant reward lets
XLA delete the physics (the optimised program then has no sin or cos);
`tests/test_benchmarks.py` checks that this one keeps them.

    python benchmarks/env_stepping.py [--num-envs 4096] [--steps 1000]
"""

from __future__ import annotations

import argparse

import common
import jax
import jax.numpy as jnp

from reinforce_jax.envs import CartPole, make

TARGET_RATIO = 1.2


def make_stepper(env, num_envs: int, steps: int, *, batched: bool = False,
                 consume: bool = True):
  """`run(key)`, not jitted, stepping `num_envs` copies of `env` for `steps` steps.

  With `batched`, through `reset_batch`/`step_batch`; else `vmap` over `reset`
  and `step` with a key per environment. With `consume=False` it returns only
  the reward sum, as this benchmark used to (kept for the test that shows why
  that is wrong).
  """
  params = env.default_params

  def run(key):
    key_reset, key_run = jax.random.split(key)
    if batched:
      obs, state = env.reset_batch(key_reset, params, num_envs)
    else:
      obs, state = jax.vmap(env.reset, in_axes=(0, None))(
          jax.random.split(key_reset, num_envs), params)

    def one(carry, key):
      state, reward_sum, obs_sum = carry
      key_action, key_step = jax.random.split(key)
      action = jax.random.randint(key_action, (num_envs,), 0, 2)
      if batched:
        obs, state, reward, *_ = env.step_batch(key_step, state, action, params)
      else:
        obs, state, reward, *_ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(key_step, num_envs), state, action, params)
      return (state, reward_sum + reward.sum(), obs_sum + obs.sum()), None

    zero = jnp.float32(0)
    (state, reward_sum, obs_sum), _ = jax.lax.scan(
        one, (state, zero, zero), jax.random.split(key_run, steps))
    if not consume:
      return reward_sum
    return state, reward_sum, obs_sum

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-envs", type=int, default=4096)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--out")
  args = parser.parse_args()
  envs = {"reinforce_jax": CartPole()}
  try:
    envs["gymnax"] = make("gymnax:CartPole-v1")
  except ImportError:
    print("gymnax is not installed (pip install 'reinforce_jax[gymnax]'): ours only")
  key = jax.random.key(0)
  candidates = {}
  steppers = {name: jax.jit(make_stepper(env, args.num_envs, args.steps))
              for name, env in envs.items()}
  steppers["reinforce_jax_step_batch"] = jax.jit(make_stepper(
      envs["reinforce_jax"], args.num_envs, args.steps, batched=True))
  for name, run in steppers.items():
    common.block(run(key))
    candidates[name] = (lambda run=run: common.timed(lambda: common.block(run(key)))
                        / args.steps)
  timings = common.interleaved_medians(candidates, args.rounds)
  steps_per_s = {n: args.num_envs / t["median_s"] for n, t in timings.items()}
  results = {"num_envs": args.num_envs, "steps": args.steps, "timings": timings,
             "env_steps_per_s": steps_per_s,
             "consumes": "final state, observation checksum, reward sum"}
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
