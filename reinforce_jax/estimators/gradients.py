"""Gradient estimators for stochastic computation graphs beyond RL.

`grad_estimate` estimates `grad_params E_{x ~ p(params)}[f(x)]` for a params
pytree with the score-function, pathwise or measure-valued estimator and a
choice of baseline, or, for discrete variables, ARM, DisARM, REBAR, RELAX and
the unordered-set estimator (`reinforce_jax/discrete.py`); the result has the
structure of `params` and feeds `optimizer.update` directly. `relax_gradients`
also returns the gradient of the estimator's variance with respect to RELAX's
control-variate parameters, for an optax optimizer of their own. Also here:
DiCE's magic box (correct higher-order derivatives), VIMCO for multi-sample
objectives, and the Gumbel-softmax and straight-through relaxations for comparison.

References:
  Mohamed, S. et al. (2020). Monte Carlo gradient estimation in machine learning. JMLR.
  Kool, W., van Hoof, H. and Welling, M. (2019). Buy 4 REINFORCE samples, get a baseline
    for free! (RLOO).
  Foerster, J. et al. (2018). DiCE: the infinitely differentiable Monte Carlo estimator. ICML.
  Mnih, A. and Rezende, D. (2016). Variational inference for Monte Carlo objectives (VIMCO).
  Jang, E., Gu, S. and Poole, B. (2017). Categorical reparameterization with Gumbel-softmax.
  Bengio, Y., Leonard, N. and Courville, A. (2013). Estimating or propagating gradients
    through stochastic neurons (straight-through).
  Yin, M. and Zhou, M. (2019). ARM. ICLR. Dong, Z., Mnih, A. and Tucker, G. (2020).
    DisARM. NeurIPS. Dong, Z., Mnih, A. and Tucker, G. (2021). Coupled gradient
    estimators for discrete latent variables. NeurIPS. Tucker, G. et al. (2017). REBAR.
    NeurIPS. Grathwohl, W. et al. (2018). RELAX. ICLR. Kool, W., van Hoof, H. and
    Welling, M. (2020). Estimating gradients for discrete random variables by sampling
    without replacement. ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp

from reinforce_jax._src import checks
from reinforce_jax.estimators import discrete, unordered_set
from reinforce_jax.estimators.discrete import (
    ControlVariate,
    rebar_control_variate,
)
from reinforce_jax.estimators.monte_carlo import (
    _check_num_samples,
    _check_reparameterised,
    _scalar_function,
    _weak_derivative_grads,
)
from reinforce_jax.estimators.monte_carlo import _sample as _sample_with_key

__all__ = [
    "dice_objective",
    "grad_estimate",
    "GradStats",
    "gumbel_softmax",
    "magic_box",
    "relax_gradients",
    "straight_through",
    "vimco_objective",
]

ESTIMATORS = ("score_function", "pathwise", "measure_valued", "arm", "disarm", "rebar", "relax",
              "unordered_set")


class GradStats(NamedTuple):
  """Per-sample detail of a `grad_estimate`."""

  per_sample: Any     # pytree like params, leaves [num_samples, *leaf.shape]
  variance: Any       # pytree like params: variance of the mean estimate (per_sample var / n)
  values: jax.Array   # [num_samples] f at the samples


def _sample(dist, key, num_samples):
  return _sample_with_key(dist, key, (num_samples,))


def _is_rloo(baseline) -> bool:
  return isinstance(baseline, str) and baseline == "rloo"


def _score_per_sample(f, dist_builder, params, key, num_samples, baseline, cv_samples):
  key, key_cv = jax.random.split(key)
  xs = jax.lax.stop_gradient(_sample(dist_builder(params), key, num_samples))
  values = jax.vmap(f)(xs)
  scores = jax.vmap(lambda x: jax.grad(lambda p: dist_builder(p).log_prob(x).sum())(params))(xs)
  if baseline is None:
    weights = values
  elif _is_rloo(baseline):
    weights = values - (jnp.sum(values) - values) / (num_samples - 1)
  elif isinstance(baseline, str) and baseline == "optimal":
    # c = Cov(f s, s) / Var(s) per coordinate, from independent samples so the
    # estimate stays unbiased.
    xs_cv = jax.lax.stop_gradient(_sample(dist_builder(params), key_cv, cv_samples))
    f_cv = jax.vmap(f)(xs_cv)
    s_cv = jax.vmap(lambda x: jax.grad(lambda p: dist_builder(p).log_prob(x).sum())(params))(
        xs_cv)

    def coefficient(s):
      fs = f_cv.reshape((-1,) + (1,) * (s.ndim - 1)) * s
      cov = jnp.mean((fs - fs.mean(0)) * (s - s.mean(0)), axis=0)
      return cov / (jnp.var(s, axis=0) + 1e-12)

    coefficients = jax.tree.map(coefficient, s_cv)
    per_sample = jax.tree.map(
        lambda s, c: (values.reshape((-1,) + (1,) * (s.ndim - 1)) - c) * s, scores, coefficients)
    return per_sample, values
  elif isinstance(baseline, str):
    raise ValueError(f"baseline must be None, 'rloo', 'optimal' or a number, got {baseline!r}")
  else:
    checks.check_number("baseline", baseline)
    weights = values - jnp.asarray(baseline, values.dtype)
  per_sample = jax.tree.map(
      lambda s: weights.reshape((-1,) + (1,) * (s.ndim - 1)) * s, scores)
  return per_sample, values


def _pathwise_per_sample(f, dist_builder, params, key, num_samples):
  def values_of(p):
    dist = dist_builder(p)
    xs = _sample(dist, key, num_samples)
    _check_reparameterised("estimator='pathwise'", dist, xs)
    return jax.vmap(f)(xs)

  # Forward mode: one pass per parameter coordinate gives all N per-sample rows.
  per_sample = jax.jacfwd(values_of)(params)
  return per_sample, values_of(params)


def _measure_valued_per_sample(f, dist_builder, params, key, num_samples):
  """Gaussian weak derivatives for (loc, scale), chained to `params` by a VJP."""

  def loc_scale(p):
    dist = dist_builder(p)
    if not isinstance(dist, distrax.Normal | distrax.MultivariateNormalDiag):
      raise ValueError(
          "estimator='measure_valued' is defined here for distrax.Normal and "
          f"distrax.MultivariateNormalDiag, got {type(dist).__name__}")
    if isinstance(dist, distrax.Normal):
      return dist.loc, dist.scale
    return dist.loc, dist.scale_diag

  (loc, scale), pullback = jax.vjp(loc_scale, params)
  shape = loc.shape
  loc, scale = loc.reshape(-1), scale.reshape(-1)
  dim = loc.shape[0]
  # Independent keys: a fold_in of a key that is also sampled from can repeat
  # its stream (fold_in(k, 1) equals the second block of split(k)).
  key_base, key_weibull, key_maxwell, key_uniform = jax.random.split(key, 4)
  base = loc + scale * jax.random.normal(key_base, (num_samples, dim))
  weibull = jax.random.weibull_min(key_weibull, math.sqrt(2.0), 2.0, (num_samples, dim))
  maxwell = jax.random.double_sided_maxwell(key_maxwell, 0.0, 1.0, (num_samples, dim))
  coupled = jax.random.uniform(key_uniform, (num_samples, dim)) * maxwell

  def flat_f(x):
    return f(x.reshape(shape))

  d_loc = _weak_derivative_grads(flat_f, loc + scale * weibull, loc - scale * weibull, base,
                                 math.sqrt(2 * math.pi) * scale)
  d_scale = _weak_derivative_grads(flat_f, loc + scale * maxwell, loc + scale * coupled, base,
                                   scale)
  per_sample = jax.vmap(lambda dl, ds: pullback((dl.reshape(shape), ds.reshape(shape)))[0])(
      d_loc, d_scale)
  values = jax.vmap(flat_f)(base)
  return per_sample, values


def _rebar_or_relax(estimator, f, dist_builder, params, control_variate, cv_params):
  """The control variate and its parameters for `"rebar"` / `"relax"`."""
  if estimator == "relax" and control_variate is None:
    raise ValueError("estimator='relax' needs control_variate= (a ControlVariate, e.g. "
                     "relax_control_variate(f)) and cv_params= (its trained parameters)")
  if control_variate is None:
    control_variate = rebar_control_variate(f)
  if cv_params is None:
    if not isinstance(control_variate, ControlVariate):
      raise ValueError("cv_params= is needed when control_variate is a plain function")
    logits = discrete.bernoulli_of(estimator, dist_builder(params)).logits
    cv_params = control_variate.init(jax.random.key(0), tuple(logits.shape))
  return control_variate, cv_params


def grad_estimate(
    f: Callable[[jax.Array], jax.Array],
    dist_builder: Callable[[Any], Any],
    params: Any,
    key: jax.Array,
    *,
    num_samples: int,
    estimator: str = "score_function",
    baseline: str | float | jax.Array | None = None,
    optimal_baseline_samples: int = 64,
    control_variate: ControlVariate | Callable[[Any, jax.Array], jax.Array] | None = None,
    cv_params: Any = None,
    return_stats: bool = False,
):
  """Estimates `grad_params E_{x ~ dist_builder(params)}[f(x)]`.

  Args:
    f: maps one sample `x` to a scalar (shape `[]`; an array of one element
      is read as its scalar).
    dist_builder: maps the params pytree to a distribution with `sample` and
      `log_prob`: any distrax distribution, or one whose `sample(shape, key)`
      takes the key as `seed=`, `key=` or positionally (optax's `multi_normal`).
    params: pytree of arrays.
    key: PRNG key.
    num_samples: Monte Carlo samples `N`, a Python int >= 1 (>= 2 for `"rloo"`).
      For `"arm"` and `"disarm"` each sample costs two evaluations of `f`; for
      `"unordered_set"` it is the size `k` of the set drawn without replacement.
    estimator: `"score_function"` (any distribution, any `f`), `"pathwise"`
      (reparameterised sampler, differentiable `f`), `"measure_valued"`
      (Gaussian `distrax.Normal` / `MultivariateNormalDiag`); for a
      `distrax.Bernoulli` of any batch shape `S` (or `Independent` of one),
      `"arm"`, `"disarm"`, `"rebar"` (control variate `eta f(sigmoid(z /
      lambda))`, so `f` must accept relaxed samples in `[0, 1]^S`) and `"relax"`
      (a learned `control_variate`); `"arm"` and `"disarm"` also for a
      `distrax.Categorical` of any batch shape (or `Independent` of one), on
      its stick-breaking binary code (Dong, Mnih and Tucker 2021); and
      `"unordered_set"` (`k` distinct samples without replacement, built-in
      baseline) for one `distrax.Categorical` (Gumbel-top-k) and for a product
      of independent variables, drawn by stochastic beam search over the joint
      outcomes: a `distrax.Bernoulli` of any batch shape (or `Independent` of
      one; `k <= 2^L` for `L` bits) or `Independent` of a batch of
      categoricals. `f` gets each sample in the shape and dtype `dist.sample()`
      gives. `k <= unordered_set.MAX_SET_SIZE` (7).
    baseline: score function only: `None`, a number (a constant or an EMA you
      keep, see `baselines.ema_update`), `"rloo"` (leave-one-out: each sample's
      baseline is the mean of the other samples' `f`) or `"optimal"` (the
      variance-minimising control-variate coefficient per parameter
      coordinate, estimated from `optimal_baseline_samples` independent draws).
      All keep the estimate unbiased.
    optimal_baseline_samples: draws for the `"optimal"` coefficient, an int >= 2.
    control_variate: `"rebar"` / `"relax"`: a `ControlVariate` (or a bare
      `apply(phi, z)`); defaults to `rebar_control_variate(f)` for `"rebar"`.
    cv_params: its parameters `phi` (train them with `relax_gradients`);
      defaults to `control_variate.init`.
    return_stats: also return `GradStats` (per-sample gradients, the variance
      of the mean estimate, the values of `f`). Not for `"unordered_set"`,
      whose k draws are not independent.

  Returns:
    A pytree like `params` (the mean of the per-sample gradients), or
    `(gradient, GradStats)` with `return_stats`. It is the gradient of an
    expectation to *ascend*: pass its negation to an optax optimizer to
    maximise, or use it directly to minimise `E f`.

  Raises:
    ValueError: for an unknown estimator or baseline, a sample count that is
      not an int in range, a non-finite constant baseline, `"pathwise"` on a
      distribution without a reparameterised sampler (discrete, mixtures),
      `"measure_valued"` on anything but a distrax Gaussian, a discrete
      estimator on a distribution it is not defined for, `"unordered_set"`
      with more samples than (joint) outcomes or than `MAX_SET_SIZE`, or an
      `f` that returns more than one scalar per sample (checked while tracing).
  """
  f = _scalar_function("grad_estimate", f, "f")
  _check_num_samples("num_samples", num_samples)
  if _is_rloo(baseline) and num_samples < 2:
    raise ValueError(f"baseline='rloo' needs num_samples >= 2, got {num_samples}")
  _check_num_samples("optimal_baseline_samples", optimal_baseline_samples, 2)
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  if baseline is not None and estimator != "score_function":
    raise ValueError(f"baselines apply to the score-function estimator, not {estimator!r}")
  if (control_variate is not None or cv_params is not None) and estimator not in (
      "rebar", "relax"):
    raise ValueError(f"control_variate applies to 'rebar' and 'relax', not {estimator!r}")
  if estimator == "unordered_set":
    if return_stats:
      raise ValueError("return_stats needs independent samples; the unordered set's k draws "
                       "are without replacement: compare keys with check_estimator instead")
    return unordered_set.unordered_set_gradient(f, dist_builder, params, key, num_samples)[0]
  if estimator == "score_function":
    per_sample, values = _score_per_sample(
        f, dist_builder, params, key, num_samples, baseline, optimal_baseline_samples)
  elif estimator == "pathwise":
    per_sample, values = _pathwise_per_sample(f, dist_builder, params, key, num_samples)
  elif estimator == "measure_valued":
    per_sample, values = _measure_valued_per_sample(f, dist_builder, params, key, num_samples)
  elif estimator in ("arm", "disarm"):
    dist = dist_builder(params)
    if discrete.categorical_of(dist) is not None:
      per_sample, values = discrete.stick_breaking_per_sample(
          f, dist_builder, params, key, num_samples, estimator)
    else:
      discrete.bernoulli_of(estimator, dist, "distrax.Bernoulli or distrax.Categorical")
      per_sample_fn = discrete.arm_per_sample if estimator == "arm" else discrete.disarm_per_sample
      per_sample, values = per_sample_fn(f, dist_builder, params, key, num_samples)
  else:
    control_variate, cv_params = _rebar_or_relax(
        estimator, f, dist_builder, params, control_variate, cv_params)
    per_sample, values = discrete.relax_per_sample(
        f, dist_builder, params, key, num_samples, control_variate, cv_params)
  gradient = jax.tree.map(lambda g: jnp.mean(g, axis=0), per_sample)
  if not return_stats:
    return gradient
  variance = jax.tree.map(lambda g: jnp.var(g, axis=0) / num_samples, per_sample)
  return gradient, GradStats(per_sample, variance, values)


def relax_gradients(
    f: Callable[[jax.Array], jax.Array],
    dist_builder: Callable[[Any], Any],
    params: Any,
    cv_params: Any,
    key: jax.Array,
    *,
    num_samples: int,
    control_variate: ControlVariate | Callable[[Any, jax.Array], jax.Array],
    return_stats: bool = False,
):
  """RELAX's gradient estimate and the gradient of its variance w.r.t. `cv_params`.

  The estimate `g_phi` is unbiased for every `phi`, so `E |g_phi|^2` differs
  from its total variance by a constant and
  `grad_phi Var = E[2 g_phi . d g_phi / d phi]`: one differentiation of the
  (second-order) estimate itself. Both outputs are plain pytrees; train `phi`
  with any optax optimizer, separate from the one for `params`:

      grads, cv_grads = rj.relax_gradients(f, dist, params, phi, key, num_samples=1,
                                           control_variate=cv)
      updates, opt_state = opt.update(grads, opt_state, params)         # minimises E f
      cv_updates, cv_state = cv_opt.update(cv_grads, cv_state, phi)     # minimises Var
      phi = optax.apply_updates(phi, cv_updates)

  Args:
    f, dist_builder, params, key, num_samples: as in `grad_estimate` (a
      Bernoulli of any batch shape).
    cv_params: the control variate's parameters `phi`, a pytree.
    control_variate: a `ControlVariate` (`rebar_control_variate`,
      `relax_control_variate` or your own) or a bare `apply(phi, z)`.
    return_stats: also return `GradStats` (per-sample gradients, the variance
      of the mean estimate, `f` at the samples `b`: e.g. for a pathwise loss of
      a decoder inside `f`).

  Returns:
    `(gradient, cv_gradient)`: like `params`, and like `cv_params` (the
    gradient of the summed squared estimate, whose descent lowers the variance);
    `(gradient, cv_gradient, GradStats)` with `return_stats`.

  References:
    Grathwohl, W. et al. (2018). Backpropagation through the void: optimizing
    control variates for black-box gradient estimation. ICLR.

  Raises:
    ValueError: if `num_samples` is not an int >= 1, or `f` returns more than
      one scalar per sample.
  """
  f = _scalar_function("relax_gradients", f, "f")
  _check_num_samples("num_samples", num_samples)

  def estimate(phi):
    per_sample, values = discrete.relax_per_sample(
        f, dist_builder, params, key, num_samples, control_variate, phi)
    gradient = jax.tree.map(lambda g: jnp.mean(g, axis=0), per_sample)
    return sum(jnp.sum(g**2) for g in jax.tree.leaves(gradient)), (gradient, per_sample, values)

  cv_gradient, (gradient, per_sample, values) = jax.grad(estimate, has_aux=True)(cv_params)
  if not return_stats:
    return gradient, cv_gradient
  variance = jax.tree.map(lambda g: jnp.var(g, axis=0) / num_samples, per_sample)
  return gradient, cv_gradient, GradStats(per_sample, variance, values)


# --- DiCE ---------------------------------------------------------------------

def magic_box(x: jax.Array) -> jax.Array:
  """DiCE's magic box `exp(x - stop_gradient(x))`: equals 1, and `d box(x) = box(x) dx`."""
  return jnp.exp(x - jax.lax.stop_gradient(x))


def dice_objective(log_probs: jax.Array, costs: jax.Array, *, axis: int = 0) -> jax.Array:
  """The DiCE surrogate `sum_t box(sum_{t' <= t} log p_t') * cost_t`, averaged over samples.

  Its value is the (sampled) total cost, and derivatives of every order are
  unbiased estimates of the derivatives of the expected cost, where the plain
  score-function surrogate gets the second and higher ones wrong.

  Args:
    log_probs: `[..., T, ...]` log-probabilities of the stochastic nodes that
      influence each cost (differentiable w.r.t. the parameters).
    costs: same shape: the cost incurred after each node.
    axis: the time axis `T` (dependencies accumulate along it); other axes are
      averaged as independent samples.

  Returns:
    A scalar.
  """
  if log_probs.shape != costs.shape:
    raise ValueError(
        f"log_probs has shape {log_probs.shape} but costs has shape {costs.shape}")
  dependencies = jnp.cumsum(log_probs, axis=axis)
  total = jnp.sum(magic_box(dependencies) * costs, axis=axis)
  return jnp.mean(total)


# --- VIMCO --------------------------------------------------------------------

def vimco_objective(log_weights: jax.Array, log_q: jax.Array) -> jax.Array:
  """Surrogate whose gradient is VIMCO's estimate of `grad E[log mean_k w_k]`.

  `L = logmeanexp_k log w_k`. Sample k's learning signal is `L - L_{-k}`, where
  `L_{-k}` replaces `log w_k` by the mean of the other `log w_j` (a per-sample
  baseline independent of sample k), so the score-function term is
  `sum_k stop_gradient(L - L_{-k}) log q(z_k)`; the pathwise term comes from
  `L` itself (gradients through `log w` w.r.t. model parameters).

  Args:
    log_weights: `[K, ...]` log importance weights `log p(x, z_k) - log q(z_k)`
      for K samples (K >= 2) per batch entry.
    log_q: `[K, ...]` log-probabilities `log q(z_k)` of the samples.

  Returns:
    A scalar to *maximise* (mean over the batch axes).
  """
  if log_weights.shape != log_q.shape:
    raise ValueError(
        f"log_weights has shape {log_weights.shape} but log_q has shape {log_q.shape}")
  k = log_weights.shape[0]
  if k < 2:
    raise ValueError(f"VIMCO needs K >= 2 samples, got shape {log_weights.shape}")
  bound = jax.nn.logsumexp(log_weights, axis=0) - math.log(k)
  lw = jax.lax.stop_gradient(log_weights)
  others_mean = (jnp.sum(lw, axis=0, keepdims=True) - lw) / (k - 1)
  eye = jnp.eye(k, dtype=bool).reshape((k, k) + (1,) * (lw.ndim - 1))
  replaced = jnp.where(eye, others_mean[None], lw[None])  # [k (replaced), k, ...]
  bound_minus = jax.nn.logsumexp(replaced, axis=1) - math.log(k)
  signal = jax.lax.stop_gradient(bound) - bound_minus
  return jnp.mean(bound + jnp.sum(jax.lax.stop_gradient(signal) * log_q, axis=0))


# --- Relaxations ----------------------------------------------------------------

def gumbel_softmax(key: jax.Array, logits: jax.Array, temperature: float, *,
                   hard: bool = False) -> jax.Array:
  """A relaxed one-hot sample `softmax((logits + g) / temperature)`, g ~ Gumbel.

  With `hard=True` the forward value is the one-hot argmax and the gradient is
  the relaxed sample's (straight-through Gumbel-softmax). Biased for any
  temperature > 0; the bias vanishes as the temperature goes to 0 while the
  variance grows.

  Raises:
    ValueError: if a concrete `temperature` is not finite and positive (a
      traced one cannot be checked).
  """
  checks.check_number("temperature", temperature, low=0.0, low_open=True)
  gumbel = jax.random.gumbel(key, logits.shape, logits.dtype)
  soft = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
  if not hard:
    return soft
  one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
  return soft + jax.lax.stop_gradient(one_hot - soft)


def straight_through(key: jax.Array, logits: jax.Array) -> jax.Array:
  """An exact one-hot categorical sample whose gradient is that of `softmax(logits)`.

  Forward: `one_hot(a)`, `a ~ Categorical(logits)`. Backward: as if the output
  were the probabilities (a biased but low-variance estimator).
  """
  probs = jax.nn.softmax(logits, axis=-1)
  sample = jax.random.categorical(key, logits, axis=-1)
  one_hot = jax.nn.one_hot(sample, logits.shape[-1], dtype=probs.dtype)
  return probs + jax.lax.stop_gradient(one_hot - probs)
