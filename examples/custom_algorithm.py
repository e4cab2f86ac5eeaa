"""A new algorithm from public parts: PPO with an adaptive KL penalty instead of clipping.

Schulman et al. (2017), "Proximal Policy Optimization Algorithms", section 4:
maximise `E[r_t A_t] - beta E[KL(pi_old(.|s_t), pi(.|s_t))]` with the ratio
`r_t = pi(a_t|s_t) / pi_old(a_t|s_t)` unclipped, and after each update measure
the KL `d`: halve `beta` if `d < d_targ / 1.5`, double it if `d > 1.5 d_targ`.

The algorithm is an `rj.Algorithm` value of five parts: its hyperparameters (a
`flax.struct.dataclass`, every float a leaf that may be traced), the library's
GAE (`algorithms.gae`), the loss below, PPO's schedule of shuffled minibatches
(`algorithms.minibatches`), and `beta` as carried state (`algorithms.Carry`),
adapted after every step. The carry's update sees the step's metrics, not its
new parameters, so the measured KL is the mean over the step's minibatch
updates of the KL to the rollout's policy before each update: smaller than the
KL after the last update, which would take one more pass over the rollout.

It trains CartPole with PureJaxRL's PPO batch (4 environments x 128 steps, 4
epochs x 4 minibatches) and Adam at 1e-3 annealed linearly to 0 over 300
updates, `--seeds` seeds in one program (`jax.vmap`). The last line is a JSON
object: `final_return` (mean over seeds of the mean return of the episodes
finished in the last 5% of the updates), `min_final_return`, each seed's final
and largest `beta`, and the mean measured KL. At the defaults: about 450, the
worst of 4 seeds about 300, in about 12 s on 2 CPU cores.

    python examples/custom_algorithm.py [--steps 300] [--seeds 4]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

import reinforce_jax as rj
from reinforce_jax import algorithms, envs, policies

# --- The algorithm ----------------------------------------------------------------


@struct.dataclass
class KLPenaltyPPO:
  """Its hyperparameters: every field is a pytree leaf, so each may be traced."""

  gamma: float = 0.99
  gae_lambda: float = 0.95
  kl_target: float = 0.01     # d_targ, the paper's value
  init_beta: float = 1.0
  min_beta: float = 1e-3
  max_beta: float = 1e3
  value_coef: float = 0.5
  entropy_coef: float = 0.01


def kl_penalty_loss(hp: KLPenaltyPPO, beta, batch: rj.Batch):
  """`-E[r A] + beta KL + c_V 0.5 (V - target)^2 - c_H entropy`, minibatch means."""
  advantage = rj.normalize_advantages(batch.advantage)
  log_ratio = batch.log_prob - batch.old_log_prob
  ratio = jnp.exp(log_ratio)
  metrics = algorithms.mean_terms(batch, {
      "surrogate": ratio * advantage,
      # k3 = (r - 1) - log r: an unbiased, non-negative sample estimate of
      # KL(pi_old, pi) on actions drawn from pi_old, with the ratio's gradient.
      "kl": (ratio - 1.0) - log_ratio,
      "value_loss": 0.5 * jnp.square(batch.value - batch.target),
      "entropy": batch.entropy,
  })
  loss = (-metrics["surrogate"] + beta * metrics["kl"] + hp.value_coef * metrics["value_loss"]
          - hp.entropy_coef * metrics["entropy"])
  return loss, {**metrics, "policy_loss": -metrics["surrogate"], "beta": beta}


def adapt_beta(hp: KLPenaltyPPO, beta, traj, advantage, target, metrics):
  del traj, advantage, target
  kl = metrics["kl"]
  beta = jnp.where(kl > 1.5 * hp.kl_target, 2.0 * beta,
                   jnp.where(kl < hp.kl_target / 1.5, 0.5 * beta, beta))
  # Bounded: as the learning rate anneals to 0 the KL does too, and 300 halvings
  # underflow float32 to a beta of 0, which doubling can never raise again.
  return jnp.clip(beta, hp.min_beta, hp.max_beta)


def kl_penalty_ppo(*, num_epochs: int = 4, num_minibatches: int = 4, **settings) -> rj.Algorithm:
  """The algorithm value; `settings` are the fields of `KLPenaltyPPO`."""
  return rj.Algorithm(
      hparams=KLPenaltyPPO(**settings), advantages=algorithms.gae, loss=kl_penalty_loss,
      schedule=algorithms.minibatches(num_epochs, num_minibatches),
      carry=algorithms.Carry(init=lambda hp: jnp.asarray(hp.init_beta, jnp.float32),
                             update=adapt_beta),
      needs_value=True)


# --- Training it --------------------------------------------------------------------



def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=300, help="train steps (updates)")
  parser.add_argument("--seeds", type=int, default=4, help="seeds trained in one program")
  parser.add_argument("--lr", type=float, default=1e-3, help="Adam's initial learning rate")
  parser.add_argument("--kl-target", type=float, default=0.01, help="d_targ")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  algo = kl_penalty_ppo(kl_target=args.kl_target)
  per_step = algo.schedule.updates_per_step
  lr = optax.linear_schedule(args.lr, 0.0, args.steps * per_step)
  optimizer = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(lr, eps=1e-5))
  policy = policies.CategoricalPolicy(2, hidden=(64, 64), value="separate")
  init_fn, train_step = rj.make_train_step(envs.CartPole(), policy, optimizer, algo,
                                           num_envs=4, rollout_length=128)
  run = rj.make_run(train_step, args.steps)

  def one_seed(key):
    key_init, key_run = jax.random.split(key)
    out = run(init_fn(key_init), key_run, args.steps)
    return out.metrics, out.state.algo_state

  keys = jax.random.split(jax.random.key(args.seed), args.seeds)
  metrics, beta = jax.device_get(jax.jit(jax.vmap(one_seed))(keys))
  final = rj.loop.final_returns(metrics["mean_return"], metrics["num_episodes"],
                        last=max(1, args.steps // 20))
  print(json.dumps({"final_return": float(final.mean()), "min_final_return": float(final.min()),
                    "final_return_per_seed": final.round(1).tolist(),
                    "final_beta_per_seed": np.asarray(beta).tolist(),
                    "max_beta_per_seed": metrics["beta"].max(axis=1).tolist(),
                    "mean_kl": float(np.mean(metrics["kl"])),
                    "steps": args.steps, "seeds": args.seeds}))


if __name__ == "__main__":
  main()
