"""Small-category sampling, scoring and normalisation without reductions.

Under a plain `jax.jit`, XLA's CPU backend (jaxlib 0.10) hands each reduction
to YNNPACK as a kernel of its own, which also cuts XLA's elementwise fusions
around it. In the bandit's train step the normalisation of two-action logits,
its gradient and the separate scalar means of the loss were seven such
kernels. With the unrolled functions here (`policies.Categorical` uses them)
and one fused reduction for the step's statistics (`column_sums`), two are
left, and the step fused in `make_run` went from 166 to 96 us at 4096
environments (A/B against the previous commit, interleaved runs). On their
own the ops are close to XLA's (`benchmarks/ops_cpu.py`): the gain is in the
fusion with the rest of the step. With many categories the usual reductions
are used. Large reductions stay with YNNPACK, which is faster for them (PPO's
minibatch updates ran 8-19% slower with it switched off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

UNROLL_MAX = 16  # categories up to which the category axis is unrolled


def log_softmax(logits: jax.Array) -> jax.Array:
  """`jax.nn.log_softmax(logits, axis=-1)`, without a reduction for few categories.

  The columns are combined one by one (max, then log-sum-exp) and stacked back,
  so neither the forward pass nor its gradient reduces over the category axis.
  The shift by the maximum is cut from the gradient: log-sum-exp does not
  depend on it, so the gradient is exactly `softmax`'s.

  Args:
    logits: `[..., K]` unnormalised log-probabilities.

  Returns:
    `[..., K]` log-probabilities, `logsumexp == 0` along the last axis.
  """
  num = logits.shape[-1]
  if num > UNROLL_MAX:
    return jax.nn.log_softmax(logits, axis=-1)
  columns = [logits[..., k] for k in range(num)]
  shift = columns[0]
  for column in columns[1:]:
    shift = jnp.maximum(shift, column)
  shift = jax.lax.stop_gradient(shift)
  total = jnp.exp(columns[0] - shift)
  for column in columns[1:]:
    total = total + jnp.exp(column - shift)
  log_norm = shift + jnp.log(total)
  return jnp.stack([column - log_norm for column in columns], axis=-1)


def column_sums(columns: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums of several same-size arrays in one reduction, as float32 scalars.

  A train step reports a handful of per-transition means (loss terms, entropy,
  episode counts); one `[N, k]` reduction is one kernel on XLA:CPU where k
  separate ones are k kernels, each cutting the step's fusions (see the module
  docstring). Counts are summed in float32: exact up to 2**24 per column.

  Args:
    columns: name -> array; every array has the same number of elements `N`.

  Returns:
    name -> `[]` sum in float32 (or the widest float input's dtype),
    differentiable where the input is.
  """
  names = list(columns)
  if not names:
    return {}
  # float32, or wider where a column is (float64 under x64): never narrower than an input.
  floats = [columns[n] for n in names if jnp.issubdtype(jnp.result_type(columns[n]), jnp.floating)]
  dtype = jnp.result_type(jnp.float32, *floats)
  stacked = jnp.stack([jnp.ravel(columns[n]).astype(dtype) for n in names], axis=-1)
  totals = jnp.sum(stacked, axis=0)
  return {name: totals[i] for i, name in enumerate(names)}


def inverse_cdf(u: jax.Array, probs: jax.Array) -> jax.Array:
  """Index `k` with `cdf[k-1] <= u < cdf[k]`: a draw from `probs` if `u ~ U[0, sum)`.

  Args:
    u: `[...]` uniform numbers in `[0, sum(probs))`.
    probs: `[..., K]` non-negative weights.

  Returns:
    `[...]` int32 indices in `[0, K)`.
  """
  num = probs.shape[-1]
  if num > UNROLL_MAX:
    cdf = jnp.cumsum(probs, axis=-1)
    return jnp.sum(u[..., None] >= cdf[..., :-1], axis=-1, dtype=jnp.int32)
  index = jnp.zeros(u.shape, jnp.int32)
  running = jnp.zeros_like(u)
  for k in range(num - 1):
    running = running + probs[..., k]
    index = index + (u >= running).astype(jnp.int32)
  return index


def categorical_score(log_probs: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(log_prob, entropy)` of `index` under normalised `log_probs`, both differentiable.

  Args:
    log_probs: `[..., K]` normalised log-probabilities (`logsumexp == 0`).
    index: `[...]` integer categories.

  Returns:
    `log_prob[...]` of `index` and the distribution's entropy `[...]`.
  """
  num = log_probs.shape[-1]
  probs = jnp.exp(log_probs)

  def plogp(p, lp):
    # 0 log 0 = 0 for impossible (masked, -inf) categories, with a zero gradient.
    possible = p > 0
    return jnp.where(possible, p * jnp.where(possible, lp, 0.0), 0.0)

  if num > UNROLL_MAX:
    log_prob = jnp.take_along_axis(log_probs, index[..., None], axis=-1)[..., 0]
    return log_prob, -jnp.sum(plogp(probs, log_probs), axis=-1)
  log_prob = log_probs[..., 0]
  entropy = -plogp(probs[..., 0], log_probs[..., 0])
  for k in range(1, num):
    log_prob = jnp.where(index == k, log_probs[..., k], log_prob)
    entropy = entropy - plogp(probs[..., k], log_probs[..., k])
  return log_prob, entropy


def categorical_statistics(log_probs: jax.Array, key: jax.Array):
  """Samples one index per row of normalised `log_probs` and scores it.

  Args:
    log_probs: `[..., K]` normalised log-probabilities (`logsumexp == 0`).
    key: PRNG key.

  Returns:
    `(index, log_prob, entropy)`, each `[...]`; `index` is int32 with no
    gradient path; `log_prob` and `entropy` are differentiable.
  """
  probs = jnp.exp(jax.lax.stop_gradient(log_probs))
  u = jax.random.uniform(key, log_probs.shape[:-1], log_probs.dtype)
  index = jax.lax.stop_gradient(inverse_cdf(u, probs))
  return (index, *categorical_score(log_probs, index))
