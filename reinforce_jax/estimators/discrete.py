"""Unbiased gradient estimators for discrete stochastic nodes.

Per-sample estimators behind `grad_estimate(..., estimator=...)`:

  * `"arm"` and `"disarm"` for Bernoulli variables of any batch shape: two
    evaluations of `f` per sample, antithetic in a shared uniform. Also for a
    `distrax.Categorical` of any batch shape (`stick_breaking_per_sample`): its
    `K` categories are coded by `K - 1` independent stick-breaking bits
    (`stick_breaking_logits`), the Bernoulli estimators run on the bits and are
    pulled back to the categorical's params, and bits that neither antithetic
    sample reads get 0 (still unbiased, less variance);
  * `"rebar"` and `"relax"` for Bernoulli variables: the score function with a
    control variate `c_phi(z)` of the continuous relaxation `z`, corrected by
    its reparameterised gradient so the estimate stays unbiased for any `phi`.
    `phi` is a pytree the caller owns and trains to minimise the estimator's
    variance (`relax_gradients` returns that gradient beside the estimate);
  * `"unordered_set"`: see `reinforce_jax.estimators.unordered_set`.

All of them are pure functions of a key and a params pytree: they trace under
`jax.jit`, `jax.vmap` and `jax.grad`.

References:
  Yin, M. and Zhou, M. (2019). ARM: augment-REINFORCE-merge gradient for
    stochastic binary networks. ICLR.
  Dong, Z., Mnih, A. and Tucker, G. (2020). DisARM: an antithetic gradient
    estimator for binary latent variables. NeurIPS.
  Dong, Z., Mnih, A. and Tucker, G. (2021). Coupled gradient estimators for
    discrete latent variables. NeurIPS.
  Tucker, G. et al. (2017). REBAR: low-variance, unbiased gradient estimates for
    discrete latent variable models. NeurIPS.
  Grathwohl, W. et al. (2018). Backpropagation through the void: optimizing
    control variates for black-box gradient estimation (RELAX). ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp

__all__ = [
    "arm_per_sample",
    "bernoulli_of",
    "categorical_of",
    "ControlVariate",
    "disarm_per_sample",
    "rebar_control_variate",
    "relax_control_variate",
    "relax_per_sample",
    "stick_breaking_logits",
    "stick_breaking_per_sample",
]

def bernoulli_of(caller: str, dist: Any,
                 defined_for: str = "distrax.Bernoulli") -> distrax.Bernoulli:
  """The `distrax.Bernoulli` inside `dist` (itself, or under `Independent`).

  Anything else raises a ValueError saying `caller` is defined for `defined_for`.
  """
  inner = dist
  while isinstance(inner, distrax.Independent):
    inner = inner.distribution
  if not isinstance(inner, distrax.Bernoulli):
    raise ValueError(f"estimator={caller!r} is defined for {defined_for} (or Independent of "
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


# --- ARM / DisARM for categoricals: stick-breaking binary coding ------------------

def categorical_of(dist: Any) -> distrax.Categorical | None:
  """The plain `distrax.Categorical` inside `dist` (itself, or under `Independent`), else None.

  One-hot categoricals are not included: their samples are vectors, not indices.
  """
  inner = dist
  while isinstance(inner, distrax.Independent):
    inner = inner.distribution
  if isinstance(inner, distrax.Categorical) and not isinstance(inner, distrax.OneHotCategorical):
    return inner
  return None


def stick_breaking_logits(logits: jax.Array) -> jax.Array:
  """`[..., K - 1]` Bernoulli logits `alpha` whose stick-breaking code is `Categorical(logits)`.

  Bit `j` is `b_j ~ Bernoulli(sigmoid(alpha_j))`, independent of the others, and the
  category is the first `j` with `b_j = 1` (`K - 1` if none). With `T_j = sum_{i >= j}
  p_i`, `alpha_j = log p_j - log T_{j+1}`, so `sigmoid(alpha_j) = p_j / T_j` and
  `P(first one at j) = (p_j / T_j) prod_{i < j} T_{i+1} / T_i = p_j`.
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  log_tail = jax.lax.cumlogsumexp(log_p, axis=log_p.ndim - 1, reverse=True)   # log T_j
  return log_p[..., :-1] - log_tail[..., 1:]


def _first_one(bits: jax.Array) -> jax.Array:
  """The stick-breaking decode: index of the first 1 along the last axis, `K - 1` if none."""
  ones = jnp.ones(bits.shape[:-1] + (1,), bool)
  return jnp.argmax(jnp.concatenate([bits, ones], axis=-1), axis=-1)


def stick_breaking_per_sample(f, dist_builder, params, key, num_samples, estimator):
  """ARM or DisARM on the stick-breaking binary code of a categorical of any batch shape.

  `dist_builder(params)` is a `distrax.Categorical` with batch shape `S` and `K`
  categories (or `Independent` of one). Its category is coded by `K - 1` independent
  Bernoulli bits (`stick_breaking_logits`), so `E f(x) = E_b f(decode(b))` with `b` a
  product of independent Bernoullis, and the Bernoulli ARM / DisARM estimates of the
  gradient in the bit logits `alpha` are unbiased for `f o decode` as for any function
  of the bits; they are pulled back to `params` through `alpha(params)`.

  One change, Rao-Blackwellization: a bit that neither sample of the antithetic pair
  reads (after the first 1 in both codes) has its estimate set to 0. Given the other
  uniforms, both `f` values and that event are fixed while the bit's factor, `u - 1/2`
  (ARM) or `(-1)^{b~} 1[b != b~]` (DisARM), has mean 0, so the zeroed terms have mean
  0: the estimate stays unbiased and its second moment only drops. (Dong, Mnih and
  Tucker (2021) derive this stick-breaking estimator among their categorical ones.)

  Returns:
    `(per_sample, values)` as `arm_per_sample`: leaves `[N, *leaf.shape]`, and `[N]`
    the mean of the pair's two evaluations of `f`.
  """
  if estimator not in ("arm", "disarm"):
    raise ValueError(f"estimator must be 'arm' or 'disarm', got {estimator!r}")

  def alpha_of(p):
    return stick_breaking_logits(categorical_of(dist_builder(p)).logits)

  alpha, pullback = jax.vjp(alpha_of, params)
  inner = categorical_of(dist_builder(jax.lax.stop_gradient(params)))
  alpha = jax.lax.stop_gradient(alpha)                                   # [*S, K - 1]
  u = jax.random.uniform(key, (num_samples,) + alpha.shape, alpha.dtype)
  prob = jax.nn.sigmoid(alpha)
  b, b_anti = u < prob, (1.0 - u) < prob              # ARM's b- and b+ are these two
  x, x_anti = _first_one(b), _first_one(b_anti)       # [N, *S]
  f_b = jax.vmap(f)(x.astype(inner.dtype))
  f_anti = jax.vmap(f)(x_anti.astype(inner.dtype))
  diff = (f_anti - f_b).reshape((-1,) + (1,) * alpha.ndim)
  if estimator == "arm":
    per_bit = diff * (u - 0.5)
  else:
    sign = jnp.where(b_anti, 1.0, -1.0).astype(alpha.dtype)
    per_bit = 0.5 * diff * sign * (b != b_anti) * jax.nn.sigmoid(jnp.abs(alpha))
  read = jnp.arange(alpha.shape[-1]) <= jnp.maximum(x, x_anti)[..., None]
  per_bit = jnp.where(read, per_bit, 0.0)
  return jax.vmap(lambda g: pullback(g)[0])(per_bit), 0.5 * (f_b + f_anti)
