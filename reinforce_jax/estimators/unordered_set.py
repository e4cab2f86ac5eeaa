"""The unordered-set estimator: `k` distinct samples drawn without replacement.

The samples are weighted by leave-one-out ratios of the probability of the
unordered set, with the built-in baseline. For one categorical the set is a
Gumbel-top-k sample; for a product of independent variables (a
`distrax.Bernoulli` of any batch shape, or `Independent` of a batch of
categoricals: one categorical over `c^L` joint outcomes) it comes from
`stochastic_beam_search`, `O(L k)` work without enumerating the joint. Set
probabilities and weights are computed in log space
(`unordered_set_coefficients`), since a joint outcome's probability can
underflow. Used by `grad_estimate(..., estimator="unordered_set")`.

References:
  Kool, W., van Hoof, H. and Welling, M. (2020). Estimating gradients for
    discrete random variables by sampling without replacement. ICLR.
  Kool, W., van Hoof, H. and Welling, M. (2019). Stochastic beams and where to
    find them: the Gumbel-top-k trick for sampling sequences without
    replacement. ICML.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MAX_SET_SIZE",
    "stochastic_beam_search",
    "unordered_set_coefficients",
    "unordered_set_gradient",
    "unordered_set_weights",
]

# The unordered-set probability sums over the k! orderings of the set.
MAX_SET_SIZE = 7


def _log1mexp(x: jax.Array) -> jax.Array:
  """`log(1 - exp(x))` for `x <= 0`, accurate at both ends (Maechler 2012)."""
  x = jnp.minimum(x, 0.0)
  return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _log_set_probability(log_probs: jax.Array, log_removed: jax.Array) -> jax.Array:
  """`log P(T)` of an unordered set `T` sampled without replacement from `D \\ A`.

  Args:
    log_probs: `[m]` log-probabilities (under the full domain `D`) of the members of `T`.
    log_removed: scalar `log p(A)`, the mass already taken out of the domain
      (`-inf` for none).

  `P(T) = sum over orderings t of prod_i p(t_i) / (1 - p(A) - sum_{j<i} p(t_j))`,
  summed in log space: a member of a product space can have a probability
  below the smallest float (16 bits at p = 0.01 each: 1e-32), and
  `1 - (taken mass)` is `log1mexp` of the taken mass's logarithm, which keeps
  its digits when the taken mass is close to 1.
  """
  m = log_probs.shape[0]
  if m == 0:
    return jnp.zeros((), log_probs.dtype)
  orders = np.array(list(itertools.permutations(range(m))), np.int32)  # [m!, m]
  ordered = log_probs[orders]
  earlier = np.tril(np.ones((m, m), bool), -1)  # earlier[i, j]: j comes before i
  log_before = jax.nn.logsumexp(jnp.where(earlier, ordered[:, None, :], -jnp.inf), axis=-1)
  log_taken = jnp.logaddexp(log_before, log_removed)
  log_remaining = jnp.maximum(_log1mexp(log_taken), jnp.log(jnp.finfo(log_probs.dtype).tiny))
  return jax.nn.logsumexp(jnp.sum(ordered - log_remaining, axis=1))


def _unordered_set_parts(log_probs_set: jax.Array, values: jax.Array):
  """`(log R(S, s), B(S, s))` for each member `s`, both `[k]`: see `unordered_set_weights`."""
  k = log_probs_set.shape[0]
  none = jnp.full((), -jnp.inf, log_probs_set.dtype)
  others = np.array([[j for j in range(k) if j != i] for i in range(k)], np.int32).reshape(k, -1)
  log_p_set = _log_set_probability(log_probs_set, none)
  log_p_without = jax.vmap(
      lambda i, rest: _log_set_probability(log_probs_set[rest], log_probs_set[i]))(
          jnp.arange(k), others)  # [k]: log P^{D\s}(S \ s)
  log_ratio = log_p_without - log_p_set
  if k == 1:
    return log_ratio, jnp.zeros_like(values)  # no other member to build a baseline from
  # [k, k, k - 2]: S without members i and i2 (the diagonal, i2 == i, is unused).
  pairs = jnp.asarray(np.array(
      [[[j for j in range(k) if j not in (i, i2 if i2 != i else (i + 1) % k)]
        for i2 in range(k)] for i in range(k)], np.int32).reshape(k, k, k - 2))

  def baseline(i):
    def term(i2):
      log_removed = jnp.logaddexp(log_probs_set[i], log_probs_set[i2])
      log_ratio_2 = _log_set_probability(log_probs_set[pairs[i, i2]], log_removed) - (
          log_p_without[i])
      return jnp.where(i2 == i, jnp.exp(log_probs_set[i]) * values[i],
                       jnp.exp(log_probs_set[i2] + log_ratio_2) * values[i2])
    return jnp.sum(jax.vmap(term)(jnp.arange(k)))

  return log_ratio, jax.vmap(baseline)(jnp.arange(k))


def unordered_set_weights(probs_set: jax.Array, values: jax.Array) -> jax.Array:
  """`R(S, s) (f(s) - B(S, s))` for each member `s` of the sampled set, `[k]`.

  `R(S, s) = P^{D\\s}(S \\ s) / P(S)` is the leave-one-out ratio and
  `B(S, s) = p(s) f(s) + sum_{s' in S \\ s} p(s') R^{D\\s}(S, s') f(s')` the
  built-in baseline: the unordered-set estimate of `E f` from the other k - 1
  members given that `s` was drawn first, with
  `R^{D\\s}(S, s') = P^{D\\{s,s'}}(S \\ {s, s'}) / P^{D\\s}(S \\ s)`.
  `R` is of order `1 / p(s)`: for members of a large product space, whose
  probabilities underflow, use `unordered_set_coefficients` on log-probabilities.

  Args:
    probs_set: `[k]` probabilities of the k distinct sampled categories.
    values: `[k]` `f` at them.
  """
  log_ratio, baseline = _unordered_set_parts(jnp.log(probs_set), values)
  if probs_set.shape[0] == 1:
    return jnp.exp(log_ratio) * values
  return jnp.exp(log_ratio) * (values - baseline)


def unordered_set_coefficients(log_probs_set: jax.Array, values: jax.Array):
  """The unordered-set estimator's coefficients from the members' log-probabilities.

  Returns:
    `(expectation, score)`, both `[k]`:

    * `expectation[s] = p(s) R(S, s)`, the probability that `s` was drawn first
      given the unordered set `S` (they sum to 1). `sum_s expectation[s] g(s)`
      is the single-sample estimate `g(first member)` conditioned on `S` (Kool
      et al. 2020, eq. 4): unbiased for `E g` for any `g`, e.g. a pathwise
      gradient of the sampled function, with no more variance than one sample;
    * `score[s] = p(s) R(S, s) (f(s) - B(S, s))` (`values` = `f` at the
      members): `sum_s score[s] grad log p(s)` is the estimator with built-in
      baseline of `grad E f` (eq. 10).

  Both are formed from `log p(s)` and ratios of set probabilities in log
  space, so they stay finite where `p(s)` itself underflows.
  """
  log_ratio, baseline = _unordered_set_parts(log_probs_set, values)
  expectation = jnp.exp(log_probs_set + log_ratio)
  if log_probs_set.shape[0] == 1:
    return expectation, expectation * values
  return expectation, expectation * (values - baseline)


def _truncated_gumbel(gumbels: jax.Array, maximum: jax.Array) -> jax.Array:
  """Gumbels `[n, c]` (locations `phi`) conditioned on their row maximum being `maximum` `[n]`.

  `G' = -log(exp(-T) - exp(-Z) + exp(-G))` with `Z` the row maximum of `G` and
  `T` the target (Kool et al. 2019, eq. 23), written as
  `T - softplus(T - G + log(1 - exp(G - Z)))` so nothing overflows. A `-inf`
  entry (an impossible outcome) stays `-inf`.
  """
  row_max = jnp.max(gumbels, axis=-1, keepdims=True)
  v = maximum[:, None] - gumbels + _log1mexp(gumbels - row_max)
  return maximum[:, None] - jax.nn.softplus(v)


def stochastic_beam_search(key: jax.Array, log_probs: jax.Array, k: int):
  """`k` distinct joint outcomes of `L` independent categoricals, without replacement.

  Stochastic beam search (Kool et al. 2019): every prefix `y_{1:l}` of the
  outcome tree carries a Gumbel-perturbed log-probability `G`, each child's
  drawn with location `log p(y_{1:l+1})` and truncated so that the children's
  maximum equals the parent's `G`. The leaves' `G` are then i.i.d. Gumbels
  around `log p(y)`, and an ancestor's `G` is the maximum over its leaves, so
  keeping the `k` largest `G` at each of the `L` levels keeps exactly the
  ancestors of the top-k leaves: a Gumbel-top-k sample of the joint, i.e. `k`
  outcomes drawn without replacement, in the order they were drawn. `O(L k c)`
  work in a `lax.scan`; fixed shapes, so it jits and vmaps.

  Args:
    key: PRNG key.
    log_probs: `[L, c]` normalised log-probabilities of the `L` variables'
      `c` values (`-inf` for an impossible value).
    k: the set size, a Python int with `k <= c^L` (and at most as many outcomes
      of positive probability, or impossible ones fill the set).

  Returns:
    `(outcomes, log_p)`: `[k, L]` int32 values, distinct rows, the first a draw
    from the joint; `[k]` their joint log-probabilities.
  """
  num_levels, num_values = log_probs.shape
  log_probs = jax.lax.stop_gradient(log_probs)
  key_root, key_levels = jax.random.split(key)
  first = jnp.arange(k) == 0  # one beam (the root) is live at the start
  root_g = jax.random.gumbel(key_root, (), log_probs.dtype)
  init = (jnp.zeros((k, num_levels), jnp.int32),
          jnp.where(first, 0.0, -jnp.inf).astype(log_probs.dtype),
          jnp.where(first, root_g, -jnp.inf).astype(log_probs.dtype))

  def level(carry, inputs):
    outcomes, log_p, g = carry
    index, level_log_probs, level_key = inputs
    child_log_p = log_p[:, None] + level_log_probs[None, :]  # [k, c]
    perturbed = child_log_p + jax.random.gumbel(level_key, child_log_p.shape, child_log_p.dtype)
    live = jnp.isfinite(g)[:, None] & jnp.isfinite(child_log_p)
    child_g = jnp.where(live, _truncated_gumbel(jnp.where(live, perturbed, -jnp.inf), g),
                        -jnp.inf)
    top_g, flat = jax.lax.top_k(child_g.reshape(-1), k)
    parent, value = flat // num_values, flat % num_values
    outcomes = outcomes[parent].at[:, index].set(value.astype(jnp.int32))
    return (outcomes, child_log_p.reshape(-1)[flat], top_g), None

  inputs = (jnp.arange(num_levels), log_probs, jax.random.split(key_levels, num_levels))
  (outcomes, log_p, _), _ = jax.lax.scan(level, init, inputs)
  return outcomes, log_p


class _SetProblem(NamedTuple):
  """How `unordered_set_gradient` samples a set from one kind of distribution."""

  sample: Callable[[jax.Array], tuple[jax.Array, jax.Array]]  # key -> (samples, log p [k])
  log_prob: Callable[[Any, jax.Array], jax.Array]  # (params, one sample) -> log p_params


def _set_problem(dist_builder, params, set_size) -> _SetProblem:
  dist = dist_builder(jax.lax.stop_gradient(params))
  inner = dist
  while isinstance(inner, distrax.Independent):
    inner = inner.distribution

  def refuse_size(outcomes: str, count: int):
    if set_size > count or set_size > MAX_SET_SIZE:
      raise ValueError(f"estimator='unordered_set' needs num_samples <= the {outcomes} and <= "
                       f"{MAX_SET_SIZE} (its set probability sums over k! orderings), got "
                       f"num_samples={set_size}")

  def joint_log_prob(p, sample):  # a plain batch is a product too: sum its log-probabilities
    return jnp.sum(dist_builder(p).log_prob(sample))

  if isinstance(dist, distrax.Categorical):
    if dist.batch_shape != ():
      raise ValueError("estimator='unordered_set' samples one categorical variable without "
                       f"replacement; got batch shape {dist.batch_shape} (logits shape "
                       f"{tuple(dist.logits.shape)}): wrap it in distrax.Independent for "
                       "their product, or write f on the joint index")
    refuse_size(f"{dist.num_categories} categories", dist.num_categories)
    log_probs = jax.nn.log_softmax(dist.logits)

    def sample_categorical(key):
      # Gumbel-top-k: the k largest perturbed log-probabilities are a sample without replacement.
      perturbed = log_probs + jax.random.gumbel(key, log_probs.shape, log_probs.dtype)
      _, members = jax.lax.top_k(perturbed, set_size)
      return members.astype(dist.dtype), log_probs[members]

    return _SetProblem(sample_categorical, joint_log_prob)
  if isinstance(inner, distrax.Bernoulli):
    shape = tuple(inner.logits.shape)
    logits = jnp.ravel(inner.logits)
    level_log_probs = jnp.stack([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)], -1)
    name = "binary variable" if logits.shape[0] == 1 else "binary variables"
    refuse_size(f"2^{logits.shape[0]} = {2 ** logits.shape[0]} joint outcomes of "
                f"{logits.shape[0]} {name}", 2 ** logits.shape[0])
  elif isinstance(inner, distrax.Categorical) and isinstance(dist, distrax.Independent):
    shape = tuple(inner.logits.shape[:-1])
    level_log_probs = jax.nn.log_softmax(inner.logits.reshape(-1, inner.num_categories))
    count = level_log_probs.shape[0]
    refuse_size(f"{inner.num_categories}^{count} = {inner.num_categories ** count} joint "
                f"outcomes of {count} categorical variables", inner.num_categories ** count)
  else:
    raise ValueError("estimator='unordered_set' is defined for one distrax.Categorical, "
                     "distrax.Independent of a batch of them, and distrax.Bernoulli of any "
                     f"batch shape (or Independent of one), got {type(dist).__name__} of "
                     f"{type(inner).__name__}")

  def sample_product(key):
    outcomes, log_p = stochastic_beam_search(key, level_log_probs, set_size)
    return outcomes.reshape((set_size,) + shape).astype(inner.dtype), log_p

  return _SetProblem(sample_product, joint_log_prob)


def unordered_set_gradient(f, dist_builder, params, key, set_size):
  """The unordered-set estimator with built-in baseline (Kool et al. 2020).

  For one `distrax.Categorical` the set is a Gumbel-top-k sample; for a
  product of independent variables (`distrax.Bernoulli` of any batch shape,
  `Independent` of one, or `Independent` of a batch of categoricals) it is
  drawn by `stochastic_beam_search` over the joint outcomes, never enumerated.
  The surrogate is `sum_s stop_gradient(score[s]) log p_params(s)`, whose
  gradient is `sum_s p(s) R(S, s) (f(s) - B(S, s)) grad log p(s)`
  (`unordered_set_coefficients`).

  Returns:
    `(gradient, values, expectation)`: a pytree like params; `[k]` `f` at the
    k distinct sampled outcomes (differentiable w.r.t. anything `f` closes
    over); `[k]` the stop-gradient weights `p(s) R(S, s)` whose weighted sum
    `sum_s expectation[s] values[s]` is an unbiased estimate of `E f`.
  """
  problem = _set_problem(dist_builder, params, set_size)
  samples, log_probs_set = problem.sample(key)
  values = jax.vmap(f)(samples)
  expectation, score = jax.lax.stop_gradient(
      unordered_set_coefficients(log_probs_set, jax.lax.stop_gradient(values)))

  def surrogate(p):
    return jnp.sum(score * jax.vmap(lambda s: problem.log_prob(p, s))(samples))

  return jax.grad(surrogate)(params), values, expectation
