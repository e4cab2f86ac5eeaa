"""Exact gradients of expectations, and a check of any estimator against them.

`exact_gradient(f, dist_builder, params)` computes `grad_params E_{x ~ p}[f(x)]`
without sampling:

  * by enumeration for finite supports: `distrax.Bernoulli` and
    `distrax.Categorical` of any batch shape (a product of independent
    variables, also under `distrax.Independent`), up to `max_outcomes` joint
    outcomes (2^16 by default);
  * by Gauss-Hermite quadrature for Gaussians (`distrax.Normal`,
    `MultivariateNormalDiag`): a tensor-product rule of `quadrature_points`
    nodes per dimension, up to `max_outcomes` nodes in all.

In both cases `E f = sum_j w_j f(x_j) p_params(x_j) / p_stop(x_j)` over fixed
outcomes or nodes `x_j` (for enumeration `w_j = p_stop(x_j)`), so the gradient
flows through the density only: `f` need not be differentiable, and is exact
for enumeration and for polynomial `f` up to degree `2 n - 2` under quadrature.

`check_estimator` draws an estimator many times and reports its bias in
standard errors, its variance and signal-to-noise ratio per parameter
coordinate, and its time per gradient.

References:
  Mohamed, S., Rosca, M., Figurnov, M. and Mnih, A. (2020). Monte Carlo
    gradient estimation in machine learning. JMLR 21(132).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_estimator",
    "EstimatorCheck",
    "exact_expectation_and_gradient",
    "exact_gradient",
]

MAX_OUTCOMES = 2**16


def _unwrap(dist):
  while isinstance(dist, distrax.Independent):
    dist = dist.distribution
  return dist


def _too_large(kind, count, shape, max_outcomes):
  return ValueError(
      f"exact_gradient: {kind} has {count:.4g} joint outcomes for batch shape {shape}, more "
      f"than max_outcomes={max_outcomes}; enumerate a smaller problem or raise max_outcomes")


def _support(dist, max_outcomes: int, quadrature_points: int):
  """Fixed outcomes `[M, *shape]`, log-weights `[M]` (or None: use the density) and a kind."""
  inner = _unwrap(dist)
  if isinstance(inner, distrax.Bernoulli | distrax.Categorical):
    shape = tuple(inner.batch_shape)
    size = math.prod(shape)
    values = 2 if isinstance(inner, distrax.Bernoulli) else inner.num_categories
    count = float(values) ** size
    if count > max_outcomes:
      raise _too_large(type(inner).__name__, count, shape, max_outcomes)
    grid = np.array(np.meshgrid(*[np.arange(values)] * size, indexing="ij")).reshape(size, -1).T
    outcomes = jnp.asarray(grid.reshape((-1,) + shape), inner.dtype)
    return outcomes, None
  if isinstance(inner, distrax.Normal | distrax.MultivariateNormalDiag):
    loc = jnp.asarray(inner.loc)
    scale = jnp.asarray(inner.scale if isinstance(inner, distrax.Normal) else inner.scale_diag)
    shape = jnp.broadcast_shapes(loc.shape, scale.shape)
    size = math.prod(shape)
    count = float(quadrature_points) ** size
    if count > max_outcomes:
      raise _too_large(f"a Gauss-Hermite rule of {quadrature_points} points",
                       count, shape, max_outcomes)
    nodes, weights = np.polynomial.hermite.hermgauss(quadrature_points)
    # Nodes for exp(-t^2): x = loc + sqrt(2) scale t, weights / sqrt(pi) per dimension.
    grid = np.array(np.meshgrid(*[nodes] * size, indexing="ij")).reshape(size, -1).T
    log_w = np.sum(np.log(weights / math.sqrt(math.pi))[
        np.array(np.meshgrid(*[np.arange(quadrature_points)] * size, indexing="ij")).reshape(
            size, -1).T], axis=1)
    t = jnp.asarray(grid.reshape((-1,) + shape), loc.dtype)
    loc, scale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(scale)
    outcomes = loc + math.sqrt(2.0) * scale * t
    return outcomes, jnp.asarray(log_w, loc.dtype)
  raise ValueError(
      "exact_gradient enumerates distrax.Bernoulli and distrax.Categorical (of any batch shape, "
      "or under Independent) and integrates distrax.Normal / MultivariateNormalDiag by "
      f"quadrature; got {type(dist).__name__}")


def _joint_log_prob(dist, outcomes):
  return jax.vmap(lambda x: jnp.sum(dist.log_prob(x)))(outcomes)


def exact_expectation_and_gradient(
    f: Callable[[jax.Array], jax.Array],
    dist_builder: Callable[[Any], Any],
    params: Any,
    *,
    max_outcomes: int = MAX_OUTCOMES,
    quadrature_points: int = 64,
) -> tuple[jax.Array, Any]:
  """`(E f, grad_params E f)` without sampling; see `exact_gradient`."""
  frozen = jax.lax.stop_gradient(params)
  outcomes, log_w = _support(dist_builder(frozen), max_outcomes, quadrature_points)
  values = jax.lax.stop_gradient(jax.vmap(f)(outcomes))
  log_p_stop = _joint_log_prob(dist_builder(frozen), outcomes)
  if log_w is None:
    log_w = log_p_stop

  def expectation(p):
    ratio = jnp.exp(_joint_log_prob(dist_builder(p), outcomes) - log_p_stop)
    return jnp.sum(jnp.exp(log_w) * ratio * values)

  return jax.value_and_grad(expectation)(params)


def exact_gradient(
    f: Callable[[jax.Array], jax.Array],
    dist_builder: Callable[[Any], Any],
    params: Any,
    *,
    max_outcomes: int = MAX_OUTCOMES,
    quadrature_points: int = 64,
) -> Any:
  """`grad_params E_{x ~ dist_builder(params)}[f(x)]`, computed without sampling.

  Args:
    f: maps one sample `x` (of the distribution's sample shape) to a scalar.
    dist_builder: maps `params` to a `distrax.Bernoulli` or
      `distrax.Categorical` of any batch shape (a product of independent
      variables; `Independent` wrappers allowed), or a `distrax.Normal` /
      `MultivariateNormalDiag`.
    params: pytree of arrays.
    max_outcomes: the most joint outcomes (or quadrature nodes) to evaluate `f`
      at: `2^n` for n Bernoullis, `K^n` for n K-way categoricals, `points^n`
      for an n-dimensional Gaussian.
    quadrature_points: Gauss-Hermite nodes per Gaussian dimension.

  Returns:
    A pytree like `params`.

  Raises:
    ValueError: for another distribution, or a support too large to enumerate
      (the message gives the count and the batch shape).

  Example:
    >>> dist = lambda th: distrax.Bernoulli(logits=th)
    >>> exact_gradient(lambda b: (b - 0.45) ** 2, dist, jnp.float32(0.0))  # p(1-p)(1-2t)
    Array(0.025, dtype=float32)
  """
  return exact_expectation_and_gradient(f, dist_builder, params, max_outcomes=max_outcomes,
                                        quadrature_points=quadrature_points)[1]


class EstimatorCheck(NamedTuple):
  """What `check_estimator` measured; pytrees are like `params`."""

  exact: Any              # the exact gradient
  mean: Any               # mean of the replicated estimates
  bias_in_stderr: Any     # (mean - exact) / standard error of the mean, per coordinate
  variance: Any           # variance of one estimate, per coordinate
  snr: Any                # |exact| / sqrt(variance), per coordinate (inf where variance is 0)
  max_abs_bias_in_stderr: float
  seconds_per_gradient: float  # median over `timing_calls` jitted calls (nan if none)
  replicates: int


def check_estimator(
    estimator: Callable[[Callable, Callable, Any, jax.Array], Any],
    f: Callable[[jax.Array], jax.Array],
    dist_builder: Callable[[Any], Any],
    params: Any,
    key: jax.Array,
    *,
    replicates: int = 1000,
    exact: Any = None,
    timing_calls: int = 10,
    max_outcomes: int = MAX_OUTCOMES,
    quadrature_points: int = 64,
) -> EstimatorCheck:
  """Compares a gradient estimator with the exact gradient over `replicates` draws.

  Args:
    estimator: `estimator(f, dist_builder, params, key) -> gradient pytree`, e.g.
      `functools.partial(rj.grad_estimate, num_samples=10, estimator="disarm")`.
    f, dist_builder, params: the problem, as in `exact_gradient`.
    key: PRNG key; replicate i uses `jax.random.split(key, replicates)[i]`.
    replicates: independent estimates (an int >= 2), drawn in one vmapped,
      jitted call.
    exact: the exact gradient if you know it in closed form; otherwise
      `exact_gradient(f, dist_builder, params)`.
    timing_calls: jitted single-estimate calls to time after a warm-up (0: none).
    max_outcomes, quadrature_points: passed to `exact_gradient`.

  Returns:
    An `EstimatorCheck`. An unbiased estimator has `|bias_in_stderr|` below ~4
    for all coordinates with high probability; a standard error of 0 (an
    exact estimator) is floored at 1e-6 (|exact| + 1) so rounding is not bias.
  """
  if not isinstance(replicates, int) or isinstance(replicates, bool) or replicates < 2:
    raise ValueError(f"replicates must be a Python int >= 2, got {replicates!r}")
  if exact is None:
    # One compiled program rather than op-by-op dispatch over every outcome.
    exact = jax.jit(lambda p: exact_gradient(f, dist_builder, p, max_outcomes=max_outcomes,
                                             quadrature_points=quadrature_points))(params)
  exact = jax.tree.map(jnp.asarray, exact)

  def one(k):
    return estimator(f, dist_builder, params, k)

  keys = jax.random.split(key, replicates)
  estimates = jax.jit(jax.vmap(one))(keys)
  structure = jax.tree.structure(params)
  if jax.tree.structure(estimates) != structure:
    raise ValueError(f"the estimator returned a pytree {jax.tree.structure(estimates)}, not "
                     f"one like params {structure}")
  mean = jax.tree.map(lambda e: jnp.mean(e, axis=0), estimates)
  variance = jax.tree.map(lambda e: jnp.var(e, axis=0, ddof=1), estimates)

  def in_stderr(m, v, x):
    if m.shape != jnp.shape(x):
      raise ValueError(f"an estimate of shape {m.shape} against an exact gradient of shape "
                       f"{jnp.shape(x)}")
    stderr = jnp.maximum(jnp.sqrt(v / replicates), 1e-6 * (jnp.abs(x) + 1.0))
    return (m - x) / stderr

  bias_in_stderr = jax.tree.map(in_stderr, mean, variance, exact)
  snr = jax.tree.map(lambda v, x: jnp.where(v > 0, jnp.abs(x) / jnp.sqrt(v), jnp.inf),
                     variance, exact)
  worst = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(bias_in_stderr))
  seconds = math.nan
  if timing_calls > 0:
    single = jax.jit(one)
    jax.block_until_ready(single(keys[0]))
    times = []
    for i in range(timing_calls):
      start = time.perf_counter()
      jax.block_until_ready(single(keys[(i + 1) % replicates]))
      times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
  return EstimatorCheck(exact, mean, bias_in_stderr, variance, snr, worst, seconds, replicates)
