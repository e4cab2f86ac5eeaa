"""Baselines as functions: leave-one-out, batch mean and exponential moving average.

A baseline may depend on anything except the action it is paired with. The
leave-one-out baseline uses the other members of a batch of independent
samples, so it satisfies this exactly (not just as the batch grows).

References:
  Kool, W., van Hoof, H. and Welling, M. (2019). Buy 4 REINFORCE samples, get a
  baseline for free! ICLR Deep RL Meets Structured Prediction workshop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks

__all__ = ["batch_mean", "ema_update", "leave_one_out"]


def leave_one_out(values: jax.Array, *, axis: int = -1) -> jax.Array:
  """Mean of the other entries along `axis`: `(sum(v) - v_i) / (n - 1)`.

  Args:
    values: float array; entries along `axis` must be independent samples
      (e.g. the batch axis `B` of a `[T, B]` return array).
    axis: the sample axis, of size at least 2.

  Returns:
    An array of the same shape as `values`.
  """
  n = values.shape[axis]
  if n < 2:
    raise ValueError(
        f"leave_one_out needs at least 2 samples along axis {axis}, got shape {values.shape}")
  total = jnp.sum(values, axis=axis, keepdims=True)
  return (total - values) / (n - 1)


def batch_mean(values: jax.Array, *, axis: int = -1) -> jax.Array:
  """Mean over `axis`, the sample itself included.

  Because each entry sees its own return, the expected gradient shrinks by the
  factor `(n - 1) / n` (its direction is unchanged); `leave_one_out` is the same
  baseline rescaled to remove exactly that factor.
  """
  return jnp.broadcast_to(jnp.mean(values, axis=axis, keepdims=True), values.shape)


def ema_update(average: jax.Array, values: jax.Array, *, decay: float) -> jax.Array:
  """`decay * average + (1 - decay) * mean(values)`: the EMA baseline's next value.

  The baseline used at a step is the average *before* that step's update, so it
  depends only on earlier episodes and the estimator stays unbiased.

  Raises:
    ValueError: if a concrete `decay` is not in [0, 1] (a traced one, as in a
      sweep over `ema_decay`, cannot be checked).
  """
  checks.check_number("decay", decay, low=0.0, high=1.0)
  return decay * average + (1.0 - decay) * jnp.mean(values)
