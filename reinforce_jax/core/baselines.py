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


def _centred(values: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """`(first, values - first)` with `first` the first entry along `axis` (kept as an axis).

  Centring on a member before any sum makes equal entries exact zeros: a baseline of equal
  values is then exactly that value (no rounding residue in `reward - baseline`), and a large
  common offset does not cancel.
  """
  first = jax.lax.slice_in_dim(values, 0, 1, axis=axis)
  return first, values - first


def _check_samples(name: str, values: jax.Array, axis: int) -> int:
  shape = checks.shape_of(values)
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f"{name}: axis {axis} is out of range for values of shape {shape}")
  n = shape[axis]
  if n < 2:
    raise ValueError(
        f"{name} needs at least 2 samples along axis {axis} (with one, the baseline is the "
        f"sample itself or undefined), got shape {shape}")
  return n


def leave_one_out(values: jax.Array, *, axis: int = -1) -> jax.Array:
  """Mean of the other entries along `axis`: `(sum(v) - v_i) / (n - 1)`.

  Where every entry along `axis` is equal, the result is exactly that value (so
  `values - leave_one_out(values)` is exactly 0), at any magnitude.

  Args:
    values: float array; entries along `axis` must be independent samples
      (e.g. the batch axis `B` of a `[T, B]` return array).
    axis: the sample axis, of size at least 2.

  Returns:
    An array of the same shape as `values`.

  Raises:
    ValueError: at trace time, if `axis` has fewer than 2 entries.
  """
  n = _check_samples("leave_one_out", values, axis)
  first, centred = _centred(values, axis)
  total = jnp.sum(centred, axis=axis, keepdims=True)
  return first + (total - centred) / (n - 1)


def batch_mean(values: jax.Array, *, axis: int = -1) -> jax.Array:
  """Mean over `axis`, the sample itself included.

  Because each entry sees its own return, the expected gradient shrinks by the
  factor `(n - 1) / n` (its direction is unchanged); `leave_one_out` is the same
  baseline rescaled to remove exactly that factor. Where every entry along `axis` is
  equal, the result is exactly that value.

  Raises:
    ValueError: at trace time, if `axis` has fewer than 2 entries (with one sample, the
      baseline is the sample itself and every advantage is 0).
  """
  _check_samples("batch_mean", values, axis)
  first, centred = _centred(values, axis)
  mean = first + jnp.mean(centred, axis=axis, keepdims=True)
  return jnp.broadcast_to(mean, values.shape)


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
