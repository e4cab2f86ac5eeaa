"""Bias and variance of the REINFORCE gradient under each baseline.

On the seed's bandit with fixed random linear-policy parameters, `train_step`
(with `optax.sgd(1.0)`, so the parameter change is the gradient estimate) is
replicated over independent keys and fresh environments. Reports, per
baseline, the bias against the exact gradient (in standard errors) and the
total variance relative to no baseline.

    python benchmarks/baselines.py [--num-envs 16] [--replicates 4000]
"""

from __future__ import annotations

import argparse

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import reinforce_jax as rj
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.rl.config import BASELINES
from reinforce_jax.rl.policies import CategoricalPolicy


def replicate(baseline: str, num_envs: int, replicates: int):
  env = ContextualBandit()
  policy = CategoricalPolicy(2, hidden=(), value="separate" if baseline == "value" else None)
  constant = {"baseline_constant": 0.5} if baseline == "constant" else {}
  config = rj.TrainConfig(num_envs=num_envs, baseline=baseline, **constant)
  init_fn, train_step = rj.make_train_step(env, policy, optax.sgd(1.0), config)
  state = init_fn(jax.random.key(0))
  k1, k2 = jax.random.split(jax.random.key(21))
  params = state.params
  params["params"]["logits"] = {"kernel": jax.random.normal(k1, (1, 2)),
                                "bias": jax.random.normal(k2, (2,))}
  state = state._replace(params=params)
  if baseline == "ema":
    state = state._replace(algo_state=jnp.float32(0.5))
  env_keys, keys = jax.random.split(jax.random.key(1), (2, replicates))
  carries = jax.vmap(lambda k: init_fn(k).env)(env_keys)
  new = jax.jit(jax.vmap(lambda c, k: train_step(state._replace(env=c), k)[0]))(carries, keys)

  def flat(p, lead=()):
    layer = p["params"]["logits"]
    return jnp.concatenate([layer["bias"].reshape(lead + (-1,)),
                            layer["kernel"].reshape(lead + (-1,))], -1)

  estimates = np.asarray(flat(new.params, (replicates,)) - flat(state.params)[None])

  def expected(p):
    out = policy.apply(p, env.default_params.contexts)
    dist = out[0] if isinstance(out, tuple) else out
    return ContextualBandit.expected_reward(dist.probs, env.default_params)

  exact = np.asarray(flat(jax.grad(expected)(state.params)))
  return estimates, exact


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-envs", type=int, default=16)
  parser.add_argument("--replicates", type=int, default=4000)
  parser.add_argument("--out")
  args = parser.parse_args()
  rows = {}
  for baseline in BASELINES:
    estimates, exact = replicate(baseline, args.num_envs, args.replicates)
    stderr = estimates.std(0) / np.sqrt(len(estimates))
    rows[baseline] = {
        "max_bias_in_stderr": float(np.max(np.abs(estimates.mean(0) - exact) / stderr)),
        "max_bias_in_stderr_after_shrink": float(np.max(
            np.abs(estimates.mean(0) - exact * (args.num_envs - 1) / args.num_envs) / stderr)),
        "total_variance": float(estimates.var(0).sum()),
    }
  for baseline, row in rows.items():
    row["variance_vs_none"] = row["total_variance"] / rows["none"]["total_variance"]
    print(f"{baseline:14} bias {row['max_bias_in_stderr']:6.2f} SE "
          f"(after the (B-1)/B shrink: {row['max_bias_in_stderr_after_shrink']:6.2f} SE)  "
          f"variance x{row['variance_vs_none']:.3f}")
  path = common.write("baselines", {"num_envs": args.num_envs, "replicates": args.replicates,
                                    "baselines": rows}, args.out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
