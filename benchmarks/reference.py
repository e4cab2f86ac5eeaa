"""The shortest hand-written fused JAX loop for the seed's bandit: the yardstick
for `train_step`'s overhead.

It does the same work as one REINFORCE step of the library with a linear policy
and rollout length 1: draw B contexts x = +-1, sample B actions, reward 1 for the
right action, the score-function gradient of `-mean(log_prob * reward)`, and an
optimizer update; `lax.scan` fuses `n` steps into one program with no Python in
between. `per_env_keys=True` also draws each context from its own key, as any
gymnax-style (vmapped, per-environment keyed) environment must.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def make_fused_loop(num_envs: int, optimizer: optax.GradientTransformation, *,
                    per_env_keys: bool = False):
  """Returns `loop(params, opt_state, key, n) -> (params, opt_state)` (jit it, n static)."""

  def one_step(carry, key):
    params, opt_state = carry
    key_x, key_a = jax.random.split(key)
    if per_env_keys:
      u = jax.vmap(jax.random.uniform)(jax.random.split(key_x, num_envs))
      x = jnp.where(u < 0.5, -1.0, 1.0)[:, None]
    else:
      x = jnp.where(jax.random.bernoulli(key_x, 0.5, (num_envs,)), 1.0, -1.0)[:, None]

    def loss(p):
      logits = x @ p["w"] + p["b"]
      a = jax.random.categorical(key_a, jax.lax.stop_gradient(logits))
      log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), a[:, None], 1)[:, 0]
      reward = (a == (x[:, 0] > 0)).astype(jnp.float32)
      return -jnp.mean(log_prob * reward)

    updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  def loop(params, opt_state, key, n):
    return jax.lax.scan(one_step, (params, opt_state), jax.random.split(key, n))[0]

  return loop


def init_params():
  return {"w": jnp.zeros((1, 2)), "b": jnp.zeros((2,))}
