"""PPO with this library's Gaussian policy on Brax's inverted pendulum, against Brax's PPO.

Both train on `brax.envs.get_environment("inverted_pendulum")` (the `generalized`
pipeline) with a 200-step time limit (a return of 200 is the most: +1 per step
the pole stays up), the same number of environment steps, environments and
rollout length, 4 epochs x 4 minibatches, Adam at 3e-4, gamma 0.99, GAE 0.95,
clip 0.2. Ours: `reinforce_jax.rl.algorithms.ppo` through `make_train_step`, a
tanh-squashed `GaussianPolicy` (32x32, separate critic), the environment
through `reinforce_jax.envs.BraxEnv`; the learning curve is each train step's
mean return of the episodes finished in it. Brax's: `brax.training.agents.ppo`
with its own evaluation episodes (`eval/episode_reward`, deterministic policy).

    python benchmarks/brax_ppo.py [--env-steps 163840] [--num-seeds 2]

writes benchmarks/results/brax_ppo-<device>.json and .png.
"""

from __future__ import annotations

import argparse
import functools
import time

import common
import jax
import numpy as np

import reinforce_jax as rj
from reinforce_jax import envs
from reinforce_jax.rl.policies import GaussianPolicy

EPISODE_LENGTH = 200


def ours(args) -> dict:
  env = envs.make("brax:inverted_pendulum", episode_length=EPISODE_LENGTH)
  steps = args.env_steps // (args.num_envs * args.rollout_length)
  config = rj.TrainConfig(algo="ppo", num_envs=args.num_envs, rollout_length=args.rollout_length,
                          num_steps=steps, gamma=0.99, gae_lambda=0.95, num_epochs=4,
                          num_minibatches=4, learning_rate=3e-4, max_grad_norm=0.5,
                          normalize_advantages=True)
  policy = GaussianPolicy(1, hidden=(32, 32), squash=env.action_bounds, value="separate")
  train = jax.jit(jax.vmap(rj.make_train(env, policy, rj.make_optimizer(config), config)))
  keys = jax.random.split(jax.random.key(0), args.num_seeds)
  start = time.perf_counter()
  compiled = train.lower(keys).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  out = common.block(compiled(keys))
  run_s = time.perf_counter() - start
  curves = np.asarray(out.metrics["mean_return"])  # [seeds, steps]
  env_steps = (np.arange(steps) + 1) * args.num_envs * args.rollout_length
  final = [float(np.nanmean(c[-max(1, steps // 10):])) for c in curves]
  return {"compile_s": compile_s, "run_s": run_s, "train_steps": steps,
          "env_steps": int(env_steps[-1]),
          "env_steps_per_s": args.num_seeds * int(env_steps[-1]) / run_s,
          "curve_env_steps": env_steps.tolist(),
          "curves": [[None if np.isnan(v) else float(v) for v in c] for c in curves],
          "first_return": [float(np.nanmean(c[:max(1, steps // 10)])) for c in curves],
          "final_return": final}


def _replicated(tree, devices):
  """`jax.device_put_replicated`, gone from JAX 0.10 but still called by Brax 0.14's PPO."""
  import jax.numpy as jnp

  return jax.tree.map(lambda a: jax.device_put(jnp.stack([a] * len(devices))), tree)


def brax_ppo(args) -> dict:
  from brax import envs as brax_envs
  from brax.training.agents.ppo import networks as ppo_networks
  from brax.training.agents.ppo import train as ppo

  if jax.device_count() > 1:
    raise SystemExit("brax_ppo.py's stand-in for device_put_replicated takes one device")
  jax.device_put_replicated = _replicated
  results = []
  for seed in range(args.num_seeds):
    points = []
    start = time.perf_counter()

    def progress(step, metrics, points=points, start=start):
      points.append((int(step), float(metrics["eval/episode_reward"]),
                     time.perf_counter() - start))

    batch = args.num_envs * args.rollout_length // 4
    ppo.train(
        environment=brax_envs.get_environment("inverted_pendulum"),
        num_timesteps=args.env_steps, episode_length=EPISODE_LENGTH, num_envs=args.num_envs,
        unroll_length=args.rollout_length, batch_size=batch // args.rollout_length,
        num_minibatches=4, num_updates_per_batch=4, learning_rate=3e-4, entropy_cost=1e-2,
        discounting=0.99, gae_lambda=0.95, clipping_epsilon=0.2, normalize_observations=False,
        reward_scaling=1.0, num_evals=args.num_evals, seed=seed, progress_fn=progress,
        network_factory=functools.partial(ppo_networks.make_ppo_networks,
                                          policy_hidden_layer_sizes=(32, 32),
                                          value_hidden_layer_sizes=(32, 32)))
    results.append({"seed": seed, "wall_s": time.perf_counter() - start, "evals": points})
  return {"runs": results,
          "first_return": [r["evals"][0][1] for r in results],
          "final_return": [r["evals"][-1][1] for r in results]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--env-steps", type=int, default=163840)
  parser.add_argument("--num-envs", type=int, default=32)
  parser.add_argument("--rollout-length", type=int, default=64)
  parser.add_argument("--num-seeds", type=int, default=2)
  parser.add_argument("--num-evals", type=int, default=6, help="Brax PPO's evaluations")
  parser.add_argument("--skip-brax", action="store_true", help="only this library's PPO")
  parser.add_argument("--out")
  args = parser.parse_args()
  result = {"env": "brax:inverted_pendulum", "episode_length": EPISODE_LENGTH,
            "args": vars(args), "reinforce_jax": ours(args)}
  r = result["reinforce_jax"]
  print(f"reinforce_jax PPO: {r['env_steps']} env steps x {args.num_seeds} seeds in "
        f"{r['run_s']:.1f} s (+{r['compile_s']:.1f} s compile); mean return first 10% "
        f"{np.mean(r['first_return']):.1f}, last 10% {np.mean(r['final_return']):.1f} "
        f"(per seed {[round(x, 1) for x in r['final_return']]})", flush=True)
  if not args.skip_brax:
    result["brax"] = b = brax_ppo(args)
    print(f"brax PPO: {args.env_steps} env steps per seed in "
          f"{np.mean([x['wall_s'] for x in b['runs']]):.1f} s a seed (compile included); eval "
          f"return first {np.mean(b['first_return']):.1f}, last {np.mean(b['final_return']):.1f} "
          f"(per seed {[round(x, 1) for x in b['final_return']]})", flush=True)
  path = common.write("brax_ppo", result, args.out)
  _plot(result, path.with_suffix(".png"))
  print(f"wrote {path}")


def _plot(result, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  ours_result = result["reinforce_jax"]
  for i, curve in enumerate(ours_result["curves"]):
    ax.plot(ours_result["curve_env_steps"], [np.nan if v is None else v for v in curve],
            color="C0", alpha=0.8,
            label="reinforce_jax PPO (training episodes)" if i == 0 else None)
  for i, run in enumerate(result.get("brax", {}).get("runs", [])):
    steps, returns, _ = zip(*run["evals"], strict=True)
    ax.plot(steps, returns, "o-", color="C1", alpha=0.8,
            label="brax.training PPO (eval episodes)" if i == 0 else None)
  ax.set_xlabel("environment steps")
  ax.set_ylabel(f"episode return (max {result['episode_length']})")
  ax.set_title("PPO on Brax inverted_pendulum, 2 CPU cores")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  main()
