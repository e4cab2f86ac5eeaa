"""Unbiased gradient estimators for discrete stochastic nodes.

Per-sample estimators behind `grad_estimate(..., estimator=...)`:

  * `"arm"` and `"disarm"` for Bernoulli variables of any batch shape: two
    evaluations of `f` per sample, antithetic in a shared uniform;
  * `"rebar"` and `"relax"` for Bernoulli variables: the score function with a
    control variate `c_phi(z)` of the continuous relaxation `z`, corrected by
    its reparameterised gradient so the estimate stays unbiased for any `phi`.
    `phi` is a pytree the caller owns and trains to minimise the estimator's
    variance (`relax_gradients` returns that gradient beside the estimate);
  * `"unordered_set"` for one categorical variable: `k` distinct samples drawn
    without replacement (Gumbel-top-k), weighted by leave-one-out ratios of
    the probability of the unordered set, with the built-in baseline.

All of them are pure functions of a key and a params pytree: they trace under
`jax.jit`, `jax.vmap` and `jax.grad`.

References:
  Yin, M. and Zhou, M. (2019). ARM: augment-REINFORCE-merge gradient for
    stochastic binary networks. ICLR.
  Dong, Z., Mnih, A. and Tucker, G. (2020). DisARM: an antithetic gradient
    estimator for binary latent variables. NeurIPS.
  Tucker, G. et al. (2017). REBAR: low-variance, unbiased gradient estimates for
    discrete latent variable models. NeurIPS.
  Grathwohl, W. et al. (2018). Backpropagation through the void: optimizing
    control variates for black-box gradient estimation (RELAX). ICLR.
  Kool, W., van Hoof, H. and Welling, M. (2020). Estimating gradients for
    discrete random variables by sampling without replacement. ICLR.
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

# The unordered-set probability sums over the k! orderings of the set.
MAX_SET_SIZE = 7


def bernoulli_of(caller: str, dist: Any) -> distrax.Bernoulli:
  """The `distrax.Bernoulli` inside `dist` (itself, or under `Independent`)."""
  inner = dist
  while isinstance(inner, distrax.Independent):
    inner = inner.distribution
  if not isinstance(inner, distrax.Bernoulli):
    raise ValueError(f"estimator={caller!r} is defined for distrax.Bernoulli (or Independent of "
                     f"one), got {type(dist).__name__}")
  return inner


def _as_sample(inner: distrax.Bernoulli, bits: jax.Array) -> jax.Array:
  # f sees what `dist.sample` would give it (int32 by default).
  return bits.astype(inner.dtype)


def _logits_and_pullback(caller, dist_builder, params):
  """Bernoulli logits `[*S]` of `dist_builder(params)` and the VJP back to `params`."""
  def logits_of(p):
    return bernoulli_of(caller, dist_builder(p)).logits

  logits, pullback = jax.vjp(logits_of, params)
  inner = bernoulli_of(caller, dist_builder(jax.lax.stop_gradient(params)))
  return logits, (lambda g: pullback(g)[0]), inner


def _to_params(pullback, per_sample_logits):
  return jax.vmap(pullback)(per_sample_logits)


def arm_per_sample(f, dist_builder, params, key, num_samples):
  """ARM: `(f(1[u > sigma(-theta)]) - f(1[u < sigma(theta)])) (u - 1/2)` per logit.

  Returns:
    `(per_sample, values)`: a pytree like params with leaves `[N, *leaf.shape]`,
    and `[N]` the mean of the two evaluations of `f` (each an exact sample).
  """
  logits, pullback, inner = _logits_and_pullback("arm", dist_builder, params)
  logits = jax.lax.stop_gradient(logits)
  u = jax.random.uniform(key, (num_samples,) + logits.shape, logits.dtype)
  f_plus = jax.vmap(f)(_as_sample(inner, u > jax.nn.sigmoid(-logits)))
  f_minus = jax.vmap(f)(_as_sample(inner, u < jax.nn.sigmoid(logits)))
  diff = (f_plus - f_minus).reshape((-1,) + (1,) * logits.ndim)
  per_logit = diff * (u - 0.5)
  return _to_params(pullback, per_logit), 0.5 * (f_plus + f_minus)


def disarm_per_sample(f, dist_builder, params, key, num_samples):
  """DisARM: ARM with the antithetic pair's noise integrated out.

  With `b = 1[u < sigma(theta)]` and its antithetic `b~ = 1[1 - u < sigma(theta)]`,
  the estimate for logit i is `(f(b) - f(b~)) / 2 * (-1)^{b~_i} 1[b_i != b~_i]
  sigma(|theta_i|)`: a conditional expectation of ARM's, so never more variance.

  Returns:
    As `arm_per_sample`.
  """
  logits, pullback, inner = _logits_and_pullback("disarm", dist_builder, params)
  logits = jax.lax.stop_gradient(logits)
  u = jax.random.uniform(key, (num_samples,) + logits.shape, logits.dtype)
  prob = jax.nn.sigmoid(logits)
  b, b_anti = u < prob, (1.0 - u) < prob
  f_b = jax.vmap(f)(_as_sample(inner, b))
  f_anti = jax.vmap(f)(_as_sample(inner, b_anti))
  diff = (f_b - f_anti).reshape((-1,) + (1,) * logits.ndim)
  sign = jnp.where(b_anti, -1.0, 1.0).astype(logits.dtype)
  per_logit = 0.5 * diff * sign * (b != b_anti) * jax.nn.sigmoid(jnp.abs(logits))
  return _to_params(pullback, per_logit), 0.5 * (f_b + f_anti)


# --- REBAR / RELAX --------------------------------------------------------------

class ControlVariate(NamedTuple):
  """A learned control variate `c_phi(z)` of the relaxed Bernoulli logits `z`.

  `init(key, shape) -> phi` makes its parameters for Bernoulli variables of
  batch shape `shape`; `apply(phi, z) -> scalar` evaluates it at `z` of that
  shape. Both pure; `phi` is an ordinary pytree an optax optimizer can train.
  """

  init: Callable[[jax.Array, tuple[int, ...]], Any]
  apply: Callable[[Any, jax.Array], jax.Array]


def rebar_control_variate(relaxed_f: Callable[[jax.Array], jax.Array], *,
                          temperature: float = 0.5, scale: float = 1.0) -> ControlVariate:
  """REBAR's control variate `eta * f(sigmoid(z / lambda))`, `phi = {scale, log_temperature}`.

  Args:
    relaxed_f: `f` extended to relaxed samples in `[0, 1]^S` (for most `f`
      written with arithmetic, `f` itself).
    temperature: the initial `lambda > 0`.
    scale: the initial `eta`.
  """
  def init(key, shape):
    del key, shape
    return {"scale": jnp.float32(scale), "log_temperature": jnp.log(jnp.float32(temperature))}

  def apply(phi, z):
    return phi["scale"] * relaxed_f(jax.nn.sigmoid(z / jnp.exp(phi["log_temperature"])))

  return ControlVariate(init, apply)


def relax_control_variate(relaxed_f: Callable[[jax.Array], jax.Array], *,
                          hidden: int = 32, temperature: float = 0.5) -> ControlVariate:
  """RELAX's control variate: REBAR's term plus a one-hidden-layer MLP `r_rho(z)`.

  `phi = {"rebar": {scale, log_temperature}, "net": {w1, b1, w2, b2}}`; the
  network reads `z` flattened (`w1` is `[prod(S), hidden]`) and starts at 0,
  so at initialisation RELAX equals REBAR.
  """
  rebar = rebar_control_variate(relaxed_f, temperature=temperature)

  def init(key, shape):
    size = math.prod(shape)
    w1 = jax.random.normal(key, (size, hidden)) / math.sqrt(max(size, 1))
    return {"rebar": rebar.init(key, shape),
            "net": {"w1": w1, "b1": jnp.zeros(hidden), "w2": jnp.zeros(hidden),
                    "b2": jnp.float32(0.0)}}

  def apply(phi, z):
    net = phi["net"]
    hidden_units = jnp.tanh(jnp.ravel(z) @ net["w1"] + net["b1"])
    return rebar.apply(phi["rebar"], z) + hidden_units @ net["w2"] + net["b2"]

  return ControlVariate(init, apply)


def _logit(u):
  return jnp.log(u) - jnp.log1p(-u)


def relax_per_sample(f, dist_builder, params, key, num_samples, control_variate, cv_params):
  """RELAX: `[f(b) - c(z~)] d log p(b) + d c(z) - d c(z~)` per sample, as a function of phi.

  `z = theta + logit(u)`, `b = 1[z > 0]`, and `z~` is a draw of `z` given `b`
  (reparameterised through `theta` with `b` held fixed); the derivatives are
  with respect to the logits `theta`, then pulled back to `params`.

  Returns:
    As `arm_per_sample`, `values` the `[N]` values `f(b)`.
  """
  logits, pullback, inner = _logits_and_pullback("relax", dist_builder, params)
  logits = jax.lax.stop_gradient(logits)
  key_u, key_v = jax.random.split(key)
  tiny = jnp.finfo(logits.dtype).tiny
  shape = (num_samples,) + logits.shape
  u = jax.random.uniform(key_u, shape, logits.dtype, minval=tiny, maxval=1.0)
  v = jax.random.uniform(key_v, shape, logits.dtype, minval=tiny, maxval=1.0)
  c = control_variate.apply if isinstance(control_variate, ControlVariate) else control_variate

  def one(u, v):
    b = jax.lax.stop_gradient((logits + _logit(u)) > 0)

    def z_of(theta):
      return theta + _logit(u)

    def z_tilde_of(theta):
      # u given b: uniform on (1 - p, 1) if b = 1, on (0, 1 - p) if b = 0.
      p_one = jax.nn.sigmoid(theta)
      u_given_b = jnp.where(b, 1.0 - p_one + v * p_one, v * (1.0 - p_one))
      u_given_b = jnp.clip(u_given_b, tiny, 1.0 - jnp.finfo(logits.dtype).eps)
      return theta + _logit(u_given_b)

    value = f(_as_sample(inner, b))
    score = b.astype(logits.dtype) - jax.nn.sigmoid(logits)  # d log p(b) / d theta
    c_tilde, d_c_tilde = jax.value_and_grad(lambda t: c(cv_params, z_tilde_of(t)))(logits)
    d_c = jax.grad(lambda t: c(cv_params, z_of(t)))(logits)
    return (value - c_tilde) * score + d_c - d_c_tilde, value

  per_logit, values = jax.vmap(one)(u, v)
  return _to_params(pullback, per_logit), values


# --- Unordered set (sampling without replacement) -------------------------------

def _log_set_probability(probs: jax.Array, removed: jax.Array) -> jax.Array:
  """`log P(T)` of an unordered set `T` sampled without replacement from `D \\ A`.

  Args:
    probs: `[m]` probabilities (under the full domain `D`) of the members of `T`.
    removed: scalar `p(A)`, the mass already taken out of the domain.

  `P(T) = sum over orderings t of prod_i p(t_i) / (1 - p(A) - sum_{j<i} p(t_j))`.
  """
  m = probs.shape[0]
  if m == 0:
    return jnp.zeros((), probs.dtype)
  orders = np.array(list(itertools.permutations(range(m))), np.int32)  # [m!, m]
  ordered = probs[orders]
  before = jnp.cumsum(ordered, axis=1) - ordered
  remaining = jnp.maximum(1.0 - removed - before, jnp.finfo(probs.dtype).tiny)
  return jax.nn.logsumexp(jnp.sum(jnp.log(ordered) - jnp.log(remaining), axis=1))


def unordered_set_weights(probs_set: jax.Array, values: jax.Array) -> jax.Array:
  """`R(S, s) (f(s) - B(S, s))` for each member `s` of the sampled set, `[k]`.

  `R(S, s) = P^{D\\s}(S \\ s) / P(S)` is the leave-one-out ratio and
  `B(S, s) = p(s) f(s) + sum_{s' in S \\ s} p(s') R^{D\\s}(S, s') f(s')` the
  built-in baseline: the unordered-set estimate of `E f` from the other k - 1
  members given that `s` was drawn first, with
  `R^{D\\s}(S, s') = P^{D\\{s,s'}}(S \\ {s, s'}) / P^{D\\s}(S \\ s)`.

  Args:
    probs_set: `[k]` probabilities of the k distinct sampled categories.
    values: `[k]` `f` at them.
  """
  k = probs_set.shape[0]
  others = np.array([[j for j in range(k) if j != i] for i in range(k)], np.int32).reshape(k, -1)
  log_p_set = _log_set_probability(probs_set, jnp.zeros((), probs_set.dtype))
  log_p_without = jax.vmap(lambda i, rest: _log_set_probability(probs_set[rest], probs_set[i]))(
      jnp.arange(k), others)  # [k]: log P^{D\s}(S \ s)
  ratio = jnp.exp(log_p_without - log_p_set)
  if k == 1:
    return ratio * values  # no other member to build a baseline from
  # [k, k, k - 2]: S without members i and i2 (the diagonal, i2 == i, is unused).
  pairs = jnp.asarray(np.array(
      [[[j for j in range(k) if j not in (i, i2 if i2 != i else (i + 1) % k)]
        for i2 in range(k)] for i in range(k)], np.int32).reshape(k, k, k - 2))

  def baseline(i):
    def term(i2):
      removed = probs_set[i] + probs_set[i2]
      log_ratio = _log_set_probability(probs_set[pairs[i, i2]], removed) - log_p_without[i]
      return jnp.where(i2 == i, probs_set[i] * values[i],
                       probs_set[i2] * jnp.exp(log_ratio) * values[i2])
    return jnp.sum(jax.vmap(term)(jnp.arange(k)))

  return ratio * (values - jax.vmap(baseline)(jnp.arange(k)))


def unordered_set_gradient(f, dist_builder, params, key, set_size):
  """The unordered-set estimator with built-in baseline for a `distrax.Categorical`.

  Returns:
    `(gradient, values)`: a pytree like params, and `[k]` `f` at the k
    distinct sampled categories.
  """
  dist = dist_builder(jax.lax.stop_gradient(params))
  if not isinstance(dist, distrax.Categorical):
    raise ValueError("estimator='unordered_set' is defined for one distrax.Categorical, got "
                     f"{type(dist).__name__}")
  if dist.batch_shape != ():
    raise ValueError("estimator='unordered_set' samples one categorical variable without "
                     f"replacement; got batch shape {dist.batch_shape} (logits shape "
                     f"{tuple(dist.logits.shape)}): write f on the joint index instead")
  num_categories = dist.num_categories
  if set_size > num_categories or set_size > MAX_SET_SIZE:
    raise ValueError(f"estimator='unordered_set' needs num_samples <= the {num_categories} "
                     f"categories and <= {MAX_SET_SIZE} (its set probability sums over k! "
                     f"orderings), got num_samples={set_size}")
  log_probs = jax.nn.log_softmax(dist.logits)
  # Gumbel-top-k: the k largest perturbed log-probabilities are a sample without replacement.
  perturbed = log_probs + jax.random.gumbel(key, log_probs.shape, log_probs.dtype)
  _, members = jax.lax.top_k(perturbed, set_size)
  values = jax.vmap(f)(members.astype(dist.dtype))
  weights = jax.lax.stop_gradient(unordered_set_weights(jnp.exp(log_probs)[members], values))

  def surrogate(p):
    return jnp.sum(jax.nn.softmax(dist_builder(p).logits)[members] * weights)

  return jax.grad(surrogate)(params), values
