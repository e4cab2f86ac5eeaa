"""Contextual bandit: the seed tutorial's task, generalised by its params.

Each episode lasts one step: a context `c` is drawn with probability
`context_probs[c]`, the agent sees `contexts[c]`, picks an action `a`, receives
`rewards[c, a]` and the episode terminates. The default params are the seed's
task: x = -1 or +1 with equal probability, reward 1 for action 0 when x < 0 and
for action 1 when x > 0, else 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from reinforce_jax._src.categorical import inverse_cdf
from reinforce_jax.envs.base import Environment

__all__ = [
    "BanditParams",
    "BanditState",
    "ContextualBandit",
    "make_params",
    "seed_params",
]


@struct.dataclass
class BanditParams:
  contexts: jax.Array       # [C, D] float32, the observation shown for each context
  rewards: jax.Array        # [C, A] float32, reward of action a in context c
  context_probs: jax.Array  # [C] float32, probability of each context (sums to 1)


@struct.dataclass
class BanditState:
  context: jax.Array  # [] int32, index of the current context
  time: jax.Array     # [] int32, steps taken in the current episode (always 0)


def seed_params() -> BanditParams:
  """The seed tutorial's bandit: contexts -1 and +1, the 'right' action pays 1."""
  return BanditParams(
      contexts=jnp.array([[-1.0], [1.0]], jnp.float32),
      rewards=jnp.array([[1.0, 0.0], [0.0, 1.0]], jnp.float32),
      context_probs=jnp.array([0.5, 0.5], jnp.float32),
  )


def make_params(contexts, rewards, context_probs=None) -> BanditParams:
  """Validated `BanditParams` (uniform contexts unless `context_probs` is given)."""
  contexts = jnp.asarray(contexts, jnp.float32)
  rewards = jnp.asarray(rewards, jnp.float32)
  if contexts.ndim != 2 or rewards.ndim != 2 or contexts.shape[0] != rewards.shape[0]:
    raise ValueError(
        f"contexts must be [C, D] and rewards [C, A] with the same C, got contexts "
        f"{contexts.shape} and rewards {rewards.shape}")
  if context_probs is None:
    context_probs = jnp.full((contexts.shape[0],), 1.0 / contexts.shape[0], jnp.float32)
  context_probs = jnp.asarray(context_probs, jnp.float32)
  if context_probs.shape != (contexts.shape[0],):
    raise ValueError(
        f"context_probs must have shape ({contexts.shape[0]},), got {context_probs.shape}")
  return BanditParams(contexts, rewards, context_probs)


class ContextualBandit(Environment[BanditState, BanditParams]):
  """One-step contextual bandit (see module docstring).

  Args:
    params: the default `BanditParams`; the seed's task if omitted. The number of
      actions (a static property used to build policies) comes from it.
  """

  deterministic_transitions = True

  def __init__(self, params: BanditParams | None = None):
    self._params = seed_params() if params is None else params

  @property
  def default_params(self) -> BanditParams:
    return self._params

  @property
  def num_actions(self) -> int:
    return self._params.rewards.shape[1]

  @property
  def num_contexts(self) -> int:
    return self._params.rewards.shape[0]

  @property
  def observation_shape(self) -> tuple[int, ...]:
    return (self._params.contexts.shape[1],)

  def reset_env(self, key, params):
    return self._reset(key, params, ())

  def reset_batch(self, key, params, num_envs):
    return self._reset(key, params, (num_envs,))

  def _reset(self, key, params, shape):
    # Inverse-CDF sampling: one uniform per draw, where `categorical` needs C.
    probs = params.context_probs
    context = inverse_cdf(jax.random.uniform(key, shape) * jnp.sum(probs), probs)
    state = BanditState(context=context, time=jnp.zeros(shape, jnp.int32))
    return params.contexts[context], state

  def step_env(self, key, state, action, params):
    del key
    reward = params.rewards[state.context, action]
    obs = params.contexts[state.context]
    terminated = jnp.ones((), jnp.bool_)
    truncated = jnp.zeros((), jnp.bool_)
    return obs, state.replace(time=state.time + 1), reward, terminated, truncated, {}

  @staticmethod
  def expected_reward(action_probs: jax.Array, params: BanditParams) -> jax.Array:
    """Exact expected reward `sum_c p_c sum_a pi(a | c) R[c, a]`.

    Args:
      action_probs: `[C, A]` probability of each action in each context.
      params: the bandit's params.

    Returns:
      A float scalar, differentiable with respect to `action_probs`.
    """
    if action_probs.shape != params.rewards.shape:
      raise ValueError(
          f"action_probs has shape {action_probs.shape} but the reward table has "
          f"shape {params.rewards.shape}")
    return jnp.sum(params.context_probs[:, None] * action_probs * params.rewards)
