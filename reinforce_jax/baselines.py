"""Baselines that keep the score-function estimator unbiased.

A baseline may depend on anything except the action it is paired with. The
leave-one-out baseline uses the other members of a batch of independent
episodes, so it satisfies this exactly (not just as the batch grows).

References:
  Kool, W., van Hoof, H. and Welling, M. (2019). Buy 4 REINFORCE samples, get a
  baseline for free! ICLR Deep RL Meets Structured Prediction workshop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
