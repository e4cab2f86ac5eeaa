"""A drop-in home for `optax.monte_carlo` (deprecated in optax 0.2.4, removed in 0.2.7).

Same names, signatures and return conventions as optax 0.2.4, so code written
against it runs after changing one import:

    from optax import monte_carlo          # before
    from reinforce_jax import monte_carlo  # after

Conventions (as in optax 0.2.4):
  * `params` is a sequence of arrays and `dist_builder(*params)` returns a
    distribution with `sample` and `log_prob(x)`. `sample` may take the key as
    `seed=` (optax <= 0.2.6, distrax), as `key=` (optax >= 0.2.7) or
    positionally after the shape; for `multi_normal` (ours or optax's),
    `params = [mean, log_scale]`;
  * `function(x)` takes one sample and returns a scalar;
  * every estimator returns *per-sample* Jacobians: a sequence like `params`
    whose entries have shape `[num_samples, *param.shape]`; their mean over
    axis 0 is the gradient estimate, their spread its variance.

References:
  Mohamed, S., Rosca, M., Figurnov, M. and Mnih, A. (2020). Monte Carlo
  gradient estimation in machine learning. JMLR 21(132).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax._src import checks

ControlVariate = tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]
CvState = Any


class MultiNormalDiag:
  """A diagonal Gaussian parameterised by `(loc, log_scale)`, exposing both.

  `sample(shape, seed)` returns `shape + param_shape` draws (the key may also
  be passed as `key=`, optax >= 0.2.7's name); `log_prob(x)` sums over the
  parameter axes. This is the `dist_builder` the measure-valued estimator and
  `control_delta_method` understand.
  """

  def __init__(self, loc: jax.Array, log_scale: jax.Array):
    self.loc = jnp.asarray(loc)
    self.log_scale = jnp.asarray(log_scale)
    _check_mean_and_log_scale("multi_normal", self.loc, self.log_scale)
    self.scale = jnp.exp(self.log_scale)
    self.param_shape = jnp.broadcast_shapes(self.loc.shape, self.scale.shape)

  @property
  def params(self) -> list[jax.Array]:
    return [self.loc, self.log_scale]

  def sample(self, shape: Sequence[int], seed: jax.Array | None = None, *,
             key: jax.Array | None = None) -> jax.Array:
    if (seed is None) == (key is None):
      raise TypeError("MultiNormalDiag.sample takes one PRNG key, as seed= or key=")
    noise = jax.random.normal(key if seed is None else seed, tuple(shape) + self.param_shape)
    return self.loc + self.scale * noise

  def log_prob(self, x: jax.Array) -> jax.Array:
    z = (x - self.loc) / self.scale
    per_dim = -0.5 * z**2 - self.log_scale - 0.5 * math.log(2 * math.pi)
    return jnp.sum(per_dim, axis=tuple(range(-len(self.param_shape), 0)))


def multi_normal(loc: jax.Array, log_scale: jax.Array) -> MultiNormalDiag:
  """`dist_builder` for a diagonal Gaussian: `multi_normal(loc, log_scale)`."""
  return MultiNormalDiag(loc, log_scale)


def _is_multi_normal(dist_builder) -> bool:
  if dist_builder is multi_normal:
    return True
  try:  # optax still ships its own builder in some versions: accept it too.
    from optax._src import utils as optax_utils
  except ImportError:
    return False
  return dist_builder is getattr(optax_utils, "multi_normal", None)


# --- Argument handling shared with `estimators.grad_estimate` ------------------

_KEY_NAMES = ("seed", "key", "rng", "rng_key", "prng_key")
_SHAPE_NAMES = ("sample_shape", "shape")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_PARAMS_CONVENTION = "optax's convention for multi_normal is params = [mean, log_scale]"


def _sample(dist: Any, key: jax.Array, sample_shape: Sequence[int]) -> Any:
  """`dist.sample` with `sample_shape` and `key`, passed the way its signature names them.

  distrax and optax <= 0.2.6 call the key `seed=`, optax >= 0.2.7 `key=`; a
  sampler whose parameters have other names gets `(shape, key)` positionally,
  optax's order. The signature is read rather than retried on `TypeError`, so
  an error raised inside `sample` reaches the caller unchanged.
  """
  sample = dist.sample
  shape = tuple(sample_shape)
  try:
    parameters = list(inspect.signature(sample).parameters.values())
  except (TypeError, ValueError):  # no readable signature (a C callable): optax's order
    return sample(shape, key)
  named = {p.name: p for p in parameters
           if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
  key_param = next((named[n] for n in _KEY_NAMES if n in named), None)
  shape_param = next((named[n] for n in _SHAPE_NAMES if n in named), None)
  unnamed = [p for p in parameters
             if p.kind in _POSITIONAL and p.name not in {getattr(key_param, "name", None),
                                                         getattr(shape_param, "name", None)}]
  if shape_param is None and unnamed:
    shape_param = unnamed.pop(0)
  if key_param is None and unnamed:
    key_param = unnamed.pop(0)
  if key_param is None or shape_param is None:
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
      return sample(shape, key)
    raise TypeError(
        f"cannot tell how to pass the shape and the key to {type(dist).__name__}.sample"
        f"{inspect.signature(sample)}: expected a key parameter named one of {_KEY_NAMES} "
        "or positional parameters (shape, key)")
  values = {shape_param.name: shape, key_param.name: key}
  args = []
  for p in parameters:  # positional-only parameters cannot be passed by name
    if p.kind != p.POSITIONAL_ONLY or p.name not in values:
      break
    args.append(values.pop(p.name))
  return sample(*args, **values)


def _check_mean_and_log_scale(caller: str, mean: Any, log_scale: Any) -> None:
  """Raises `ValueError` unless the shapes of a Gaussian's mean and log-scale broadcast."""
  try:
    jnp.broadcast_shapes(jnp.shape(mean), jnp.shape(log_scale))
  except ValueError:
    raise ValueError(
        f"{caller}: the mean (params[0]) has shape {jnp.shape(mean)} and the log_scale "
        f"(params[1]) has shape {jnp.shape(log_scale)}; they must be equal (or broadcast)"
    ) from None


def _build(caller: str, dist_builder: Callable[..., Any], params: Sequence[Any],
           rng: jax.Array, num_samples: int) -> tuple[Any, Any]:
  """`(dist_builder(*params), num_samples draws)`; a broadcasting error names the shapes."""
  if _is_multi_normal(dist_builder):
    _check_mean_and_log_scale(caller, params[0], params[1])
  try:
    dist = dist_builder(*params)
    return dist, _sample(dist, rng, (num_samples,))
  except (TypeError, ValueError) as error:
    if "broadcast" not in str(error):
      raise
    shapes = ", ".join(f"params[{i}] {jnp.shape(p)}" for i, p in enumerate(params))
    raise ValueError(f"{caller}: the distribution of params with shapes {shapes} cannot be "
                     f"built or sampled: {error}") from error


def _scalar_function(caller: str, function: Callable[[Any], Any], name: str = "function"):
  """`function` checked, while tracing, to return one scalar per sample (shape `[]`)."""
  def scalar(x):
    value = jnp.asarray(function(x))
    if value.size != 1:
      raise ValueError(
          f"{caller}: {name} must return one scalar per sample (shape [] for one sample, "
          f"[num_samples] over all of them), got shape {list(value.shape)} for a sample of "
          f"shape {list(jnp.shape(x))}; reduce it (e.g. with jnp.sum)")
    return value.reshape(())
  return scalar


def _check_num_samples(name: str, value: Any, minimum: int = 1) -> None:
  """Raises `ValueError` unless `value` is an integer (not a bool) >= `minimum`."""
  if (not isinstance(value, int | np.integer) or isinstance(value, bool)
      or value < minimum):
    raise ValueError(f"{name} must be a Python int >= {minimum}, got {value!r}")


def _check_params(caller: str, params: Any, dist_builder: Callable[..., Any] | None = None,
                  *, count: int | None = None) -> None:
  """Raises `ValueError` unless `params` is a sequence that `dist_builder(*params)` accepts.

  `count` (2 for the Gaussian-only functions) is checked as well; for the
  `multi_normal` builders it is always 2. Only the builder's signature is
  bound; the builder itself is not called.
  """
  if not isinstance(params, Sequence) or isinstance(params, str):
    raise ValueError(f"{caller}: params must be a sequence of arrays, got "
                     f"{type(params).__name__} ({_PARAMS_CONVENTION})")
  if count is None and dist_builder is not None and _is_multi_normal(dist_builder):
    count = 2
  if count is not None and len(params) != count:
    raise ValueError(f"{caller} expects {count} params, got {len(params)}: "
                     f"{_PARAMS_CONVENTION}")
  if dist_builder is None:
    return
  try:
    signature = inspect.signature(dist_builder)
  except (TypeError, ValueError):  # nothing to check against
    return
  try:
    signature.bind(*params)
  except TypeError as error:
    raise ValueError(
        f"{caller}: dist_builder{signature} cannot take the {len(params)} entries of params "
        f"({error}); {_PARAMS_CONVENTION}") from None


_NOT_REPARAMETERISED = (
    distrax.Bernoulli, distrax.Categorical, distrax.CategoricalUniform, distrax.Multinomial,
    distrax.Quantized, distrax.MixtureSameFamily, distrax.MixtureOfTwo)


def _check_reparameterised(caller: str, dist: Any, samples: Any) -> None:
  """Raises `ValueError` for a distribution whose samples carry no pathwise gradient.

  distrax 0.1.9 has no reparameterisation flag of its own, so three tests:
  the known discrete and mixture classes (also inside `Independent`,
  `Transformed`, ...), a TFP-style `reparameterization_type` other than fully
  reparameterised, and samples that are not floating point.
  """
  inner = dist
  while inner is not None:
    if isinstance(inner, _NOT_REPARAMETERISED):
      where = "" if inner is dist else f" (in {type(dist).__name__})"
      raise ValueError(
          f"{caller} needs a reparameterised sampler; {type(inner).__name__}{where} has "
          "none, so its pathwise gradient would be zero: use the score-function estimator")
    inner = getattr(inner, "distribution", None)
  kind = getattr(dist, "reparameterization_type", None)
  if kind is not None and "FULLY_REPARAMETERIZED" not in str(kind):
    raise ValueError(f"{caller} needs a reparameterised sampler; {type(dist).__name__} "
                     f"reports reparameterization_type {kind}")
  for leaf in jax.tree.leaves(samples):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise ValueError(
          f"{caller} needs a reparameterised sampler; {type(dist).__name__} draws "
          f"{jnp.result_type(leaf)} samples, which carry no gradient: use the score-function "
          "estimator")


def score_function_jacobians(
    function: Callable[[jax.Array], float],
    params: Sequence[jax.Array],
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
) -> Sequence[jax.Array]:
  """Per-sample score-function (REINFORCE) Jacobians of `E_{x ~ p(params)} f(x)`.

  Each sample contributes `f(x) * grad_params log p(x; params)` with `x` held
  fixed (`stop_gradient`). Works for discrete and continuous `x`; `f` need not
  be differentiable.

  Returns:
    A sequence like `params` with entries `[num_samples, *param.shape]`.

  Raises:
    ValueError: if `num_samples` is not an int >= 1, `dist_builder` cannot
      take `params` (or their shapes), or `function` returns more than a scalar.
  """
  _check_num_samples("num_samples", num_samples)
  _check_params("score_function_jacobians", params, dist_builder)
  function = _scalar_function("score_function_jacobians", function)

  def per_sample_surrogates(params):
    dist, xs = _build("score_function_jacobians", dist_builder, params, rng, num_samples)
    xs = jax.lax.stop_gradient(xs)
    return jax.vmap(lambda x: jax.lax.stop_gradient(function(x)) * dist.log_prob(x))(xs)

  return jax.jacfwd(per_sample_surrogates)(params)


def pathwise_jacobians(
    function: Callable[[jax.Array], float],
    params: Sequence[jax.Array],
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
) -> Sequence[jax.Array]:
  """Per-sample pathwise (reparameterisation) Jacobians of `E_{x ~ p(params)} f(x)`.

  Differentiates `f(g(eps, params))` through the sampler; needs a
  reparameterised `sample` and a differentiable `f`.

  Returns:
    A sequence like `params` with entries `[num_samples, *param.shape]`.

  Raises:
    ValueError: if `num_samples` is not an int >= 1, `dist_builder` cannot take
      `params` (or their shapes), its distribution has no reparameterised sampler
      (discrete samples would get a zero gradient), or `function` returns more
      than a scalar.
  """
  _check_num_samples("num_samples", num_samples)
  _check_params("pathwise_jacobians", params, dist_builder)
  function = _scalar_function("pathwise_jacobians", function)

  def per_sample_values(params):
    dist, xs = _build("pathwise_jacobians", dist_builder, params, rng, num_samples)
    _check_reparameterised("pathwise_jacobians", dist, xs)
    return jax.vmap(function)(xs)

  return jax.jacfwd(per_sample_values)(params)


def _with_diagonal(base: jax.Array, diagonal: jax.Array) -> jax.Array:
  """`[N, D] -> [N, D, D]`: D copies of each sample, copy d with coordinate d replaced."""
  dim = base.shape[-1]
  tiled = jnp.broadcast_to(base[:, None, :], base.shape[:1] + (dim, dim))
  eye = jnp.eye(dim, dtype=bool)
  return jnp.where(eye, diagonal[:, :, None], tiled)


def _weak_derivative_grads(function, plus, minus, base, constant):
  """`(f(x with x_d = plus_d) - f(x with x_d = minus_d)) / constant`, `[N, D]`."""
  evaluate = jax.vmap(jax.vmap(function))
  return (evaluate(_with_diagonal(base, plus)) - evaluate(_with_diagonal(base, minus))) / constant


def measure_valued_jacobians(
    function: Callable[[jax.Array], float],
    params: Sequence[jax.Array],
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
    coupling: bool = True,
) -> Sequence[jax.Array]:
  """Per-sample measure-valued Jacobians for a diagonal Gaussian (`multi_normal`).

  Uses the weak derivatives of the Gaussian: for the mean, the difference of
  two Weibull(sqrt 2, 2)-shifted samples scaled by `1 / (sqrt(2 pi) sigma)`; for
  the scale, a double-sided Maxwell sample against a Gaussian one (with
  `coupling`, the uniform-times-Maxwell coupling) scaled by `1 / sigma`, then
  multiplied by `sigma` for the chain rule to `log_scale`. `coupling=True`
  reuses randomness between the positive and negative parts to lower variance.

  Returns:
    `[mean_jacobians, log_scale_jacobians]`, each `[num_samples, D]`.

  Raises:
    ValueError: for any `dist_builder` other than `multi_normal` (this
      module's or optax's), params other than `[mean, log_scale]` of shape
      `[D]`, `num_samples` not an int >= 1, or a `function` that returns more
      than a scalar.
  """
  if not _is_multi_normal(dist_builder):
    raise ValueError(
        "measure_valued_jacobians supports only the multi_normal dist_builder (this module's "
        f"or optax's), got {getattr(dist_builder, '__name__', dist_builder)!r}; for "
        "distrax.Normal or MultivariateNormalDiag use reinforce_jax.grad_estimate(..., "
        "estimator='measure_valued')")
  _check_num_samples("num_samples", num_samples)
  _check_params("measure_valued_jacobians", params, dist_builder, count=2)
  if jnp.ndim(params[0]) != 1 or jnp.shape(params[1]) != jnp.shape(params[0]):
    raise ValueError(
        "measure_valued_jacobians needs a mean (params[0]) and a log_scale (params[1]) of the "
        f"same shape [D], got shapes {jnp.shape(params[0])} and {jnp.shape(params[1])}")
  function = _scalar_function("measure_valued_jacobians", function)
  dist = dist_builder(*params)
  loc, scale = dist.params[0], jnp.exp(dist.params[1])
  base = _sample(dist, rng, (num_samples,))
  key_plus, key_minus = jax.random.split(rng)

  # Mean: weak derivative (Weibull(sqrt 2, 2) shifts on either side).
  weibull = jax.random.weibull_min(key_plus, math.sqrt(2.0), 2.0, base.shape)
  weibull_minus = weibull if coupling else jax.random.weibull_min(
      key_minus, math.sqrt(2.0), 2.0, base.shape)
  mean_grads = _weak_derivative_grads(
      function, loc + scale * weibull, loc - scale * weibull_minus, base,
      math.sqrt(2 * math.pi) * scale)

  # Scale: double-sided Maxwell against Gaussian (or uniform * Maxwell when coupled).
  maxwell = jax.random.double_sided_maxwell(key_plus, 0.0, 1.0, base.shape)
  if coupling:
    other = jax.random.uniform(key_minus, base.shape) * maxwell
  else:
    other = jax.random.normal(key_minus, base.shape)
  scale_grads = _weak_derivative_grads(
      function, loc + scale * maxwell, loc + scale * other, base, scale)
  return [mean_grads, scale * scale_grads]


# --- Control variates -------------------------------------------------------

def control_delta_method(function: Callable[[jax.Array], float]) -> ControlVariate:
  """Second-order Taylor expansion of `function` at the Gaussian's mean.

  `h(x) = f(mu) + (x - mu) . grad f(mu) + (x - mu)^T H(mu) (x - mu) / 2`, whose
  expectation under `N(mu, diag(sigma^2))` is `f(mu) + sum(sigma^2 diag H) / 2`.
  For `params = (mu, log_sigma)` (the `multi_normal` builder).

  Returns:
    `(control_variate(params, x, state), expected_value(params, state),
    update_state(params, samples, state))`; the state is unused.
  """

  def control_variate(params, x, state=None):
    del state
    _check_params("control_delta_method", params, count=2)
    mu = params[0]
    d = x - mu
    return (function(mu) + jnp.dot(d, jax.grad(function)(mu))
            + jnp.dot(d, jnp.dot(jax.hessian(function)(mu), d)) / 2.0)

  def expected_value(params, state=None):
    del state
    _check_params("control_delta_method", params, count=2)
    mu, variance = params[0], jnp.exp(2.0 * params[1])
    return function(mu) + jnp.sum(variance * jnp.diag(jax.hessian(function)(mu))) / 2.0

  def update_state(params, samples, state=None):
    del params, samples
    return state

  return control_variate, expected_value, update_state


def moving_avg_baseline(
    function: Callable[[jax.Array], float],
    decay: float = 0.99,
    zero_debias: bool = True,
    use_decay_early_training_heuristic: bool = True,
) -> ControlVariate:
  """A moving average of `f` over earlier samples: a constant control variate.

  The state is `(average, step)`; start it at `(0.0, 0)`. With the early
  heuristic the decay at step i is `min(decay, (1 + i) / (10 + i))`; with
  `zero_debias` the average is divided by `1 - decay_i ** (i + 1)`. It lowers
  the score function's variance and has no effect on pathwise or
  measure-valued estimates (its gradient is zero).

  Returns:
    `(control_variate, expected_value, update_state)` as in `control_delta_method`.

  Raises:
    ValueError: if a concrete `decay` is not in [0, 1].
  """
  checks.check_number("decay", decay, low=0.0, high=1.0)

  def control_variate(params, x, state):
    del params, x
    return state[0]

  def expected_value(params, state):
    del params
    return state[0]

  def update_state(params, samples, state):
    del params
    average, step = state
    rate = decay
    if use_decay_early_training_heuristic:
      rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    average = rate * average + (1.0 - rate) * jnp.mean(jax.vmap(function)(samples))
    if zero_debias:
      average = average / (1.0 - jnp.power(rate, step + 1))
    return jax.lax.stop_gradient(average), step + 1

  return control_variate, expected_value, update_state


def estimate_control_variate_coefficients(
    function: Callable[[jax.Array], float],
    control_variate_from_function: Callable[[Callable], ControlVariate],
    grad_estimator: Callable[..., Sequence[jax.Array]],
    params: Sequence[jax.Array],
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
    control_variate_state: CvState = None,
    eps: float = 1e-3,
) -> Sequence[jax.Array]:
  """Per-parameter coefficient `sum_k cov(df_k, dh_k) / (sum_k var(dh_k) + eps)`.

  `df_k` and `dh_k` are the per-sample Jacobians of `f` and of the control
  variate `h` for coordinate k of a parameter, from `num_samples` fresh draws
  (a key derived from `rng`, so the samples differ from the estimate's). The
  minimiser of the variance of `df - c dh`, summed over coordinates.

  Returns:
    One scalar per entry of `params` (no gradient).

  Raises:
    ValueError: if `num_samples` is not an int >= 2 (a covariance needs two
      samples), `eps` is negative or not finite, or `dist_builder` cannot take
      `params`.
  """
  _check_num_samples("num_samples", num_samples, minimum=2)
  checks.check_number("eps", eps, low=0.0)
  _check_params("estimate_control_variate_coefficients", params, dist_builder)
  key, _ = jax.random.split(rng)
  control_variate = control_variate_from_function(function)[0]
  h_jacobians = grad_estimator(
      lambda x: control_variate(params, x, control_variate_state),
      params, dist_builder, key, num_samples)
  f_jacobians = grad_estimator(function, params, dist_builder, key, num_samples)

  def coefficient(f_jac, h_jac):
    f_jac, h_jac = f_jac.reshape(num_samples, -1), h_jac.reshape(num_samples, -1)
    covariance = jnp.mean((f_jac - f_jac.mean(0)) * (h_jac - h_jac.mean(0)), axis=0)
    return jax.lax.stop_gradient(jnp.sum(covariance) / (jnp.sum(jnp.var(h_jac, axis=0)) + eps))

  return [coefficient(f, h) for f, h in zip(f_jacobians, h_jacobians, strict=True)]


def control_variates_jacobians(
    function: Callable[[jax.Array], float],
    control_variate_from_function: Callable[[Callable], ControlVariate],
    grad_estimator: Callable[..., Sequence[jax.Array]],
    params: Sequence[jax.Array],
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
    control_variate_state: CvState = None,
    estimate_cv_coeffs: bool = False,
    estimate_cv_coeffs_num_samples: int = 20,
) -> tuple[Sequence[jax.Array], CvState]:
  """Per-sample Jacobians of `E f` with a control variate `h`:

      grad E f = grad E[f - c h] + c grad E h,

  the first term by `grad_estimator` on `f - c h` (plus the direct dependence
  of `h` on `params`), the second in closed form from `h`'s expected value.
  The control variate's state is updated once (with this call's samples) before
  it is used; the coefficients `c` are 1, or estimated from
  `estimate_cv_coeffs_num_samples` fresh samples.

  Returns:
    `(jacobians, new_state)`, jacobians like `params` with entries
    `[num_samples, *param.shape]`.

  Raises:
    ValueError: if `num_samples` is not an int >= 1 (with `estimate_cv_coeffs`,
      `estimate_cv_coeffs_num_samples` an int >= 2), or `dist_builder` cannot
      take `params`.
  """
  _check_num_samples("num_samples", num_samples)
  _check_params("control_variates_jacobians", params, dist_builder)
  if estimate_cv_coeffs:
    _check_num_samples("estimate_cv_coeffs_num_samples", estimate_cv_coeffs_num_samples, 2)
  control_variate, expected_value, update_state = control_variate_from_function(function)
  if estimate_cv_coeffs:
    coefficients = estimate_control_variate_coefficients(
        function, control_variate_from_function, grad_estimator, params, dist_builder, rng,
        estimate_cv_coeffs_num_samples, control_variate_state)
  else:
    coefficients = [1.0] * len(params)
  f_jacobians = grad_estimator(function, params, dist_builder, rng, num_samples)
  samples = _build("control_variates_jacobians", dist_builder, params, rng, num_samples)[1]
  state = update_state(params, samples, control_variate_state)
  frozen = jax.lax.stop_gradient(params)
  h_jacobians = grad_estimator(lambda x: control_variate(frozen, x, state), params,
                               dist_builder, rng, num_samples)
  fixed_samples = jax.lax.stop_gradient(samples)
  direct = jax.grad(lambda p: jnp.mean(
      jax.vmap(lambda x: control_variate(p, x, state))(fixed_samples)))(params)
  closed_form = jax.grad(lambda p: expected_value(p, state))(params)
  jacobians = [
      f_jac - c * (h_jac + d - e)
      for f_jac, h_jac, d, e, c in zip(f_jacobians, h_jacobians, direct, closed_form,
                                        coefficients, strict=True)
  ]
  return jacobians, state


__all__ = [
    "MultiNormalDiag",
    "control_delta_method",
    "control_variates_jacobians",
    "estimate_control_variate_coefficients",
    "measure_valued_jacobians",
    "moving_avg_baseline",
    "multi_normal",
    "pathwise_jacobians",
    "score_function_jacobians",
]
