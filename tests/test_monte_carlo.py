"""The optax.monte_carlo drop-in, against closed-form gradients."""

import inspect

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax._src.utils import multi_normal as optax_multi_normal  # the installed optax's own

from reinforce_jax import monte_carlo as mc

MU = jnp.array([0.5, -1.0, 2.0])
LOG_SIGMA = jnp.log(jnp.array([0.7, 1.2, 0.4]))
K = jnp.array([0.2, 0.0, 1.5])


def quadratic(x):
  return jnp.sum((x - K) ** 2)


def quadratic_grads():  # d/dmu = 2 (mu - k); d/dlog sigma = sigma * 2 sigma
  sigma = jnp.exp(LOG_SIGMA)
  return [2 * (MU - K), 2 * sigma**2]


def _check_unbiased(jacobians, exact, n, num_se=4.0):
  assert len(jacobians) == 2
  for jac, want in zip(jacobians, exact, strict=True):
    assert jac.shape == (n, 3)
    stderr = jnp.std(jac, axis=0) / np.sqrt(n)
    assert np.all(np.abs(jac.mean(0) - want) < num_se * stderr + 1e-6), (jac.mean(0), want)


@pytest.mark.parametrize("estimator, n", [
    (mc.score_function_jacobians, 50_000),
    (mc.pathwise_jacobians, 5_000),
    (mc.measure_valued_jacobians, 5_000),
])
def test_estimators_are_unbiased_with_optax_conventions(estimator, n):
  params = (MU, LOG_SIGMA)
  jacobians = jax.jit(estimator, static_argnums=(0, 2, 4))(
      quadratic, params, mc.multi_normal, jax.random.key(0), n)
  _check_unbiased(jacobians, quadratic_grads(), n)


def test_measure_valued_coupling_lowers_variance_and_rejects_other_builders():
  params = (MU, LOG_SIGMA)
  coupled = mc.measure_valued_jacobians(quadratic, params, mc.multi_normal, jax.random.key(1),
                                        4000, coupling=True)
  plain = mc.measure_valued_jacobians(quadratic, params, mc.multi_normal, jax.random.key(1),
                                      4000, coupling=False)
  _check_unbiased(plain, quadratic_grads(), 4000)
  assert float(jnp.var(coupled[1], 0).sum()) < float(jnp.var(plain[1], 0).sum())
  with pytest.raises(ValueError, match="multi_normal"):
    mc.measure_valued_jacobians(quadratic, params, lambda m, s: mc.MultiNormalDiag(m, s),
                                jax.random.key(0), 10)


def test_multi_normal_log_prob_and_sample():
  dist = mc.multi_normal(MU, LOG_SIGMA)
  x = dist.sample((4,), seed=jax.random.key(0))
  assert x.shape == (4, 3)
  want = jax.scipy.stats.norm.logpdf(x, MU, jnp.exp(LOG_SIGMA)).sum(-1)
  np.testing.assert_allclose(dist.log_prob(x), want, rtol=1e-5)


@pytest.mark.slow
def test_control_delta_method_removes_the_variance_of_a_quadratic():
  """For quadratic f the delta-method control variate equals f: zero variance left."""
  params = (MU, LOG_SIGMA)
  n = 2000
  jacobians, state = mc.control_variates_jacobians(
      quadratic, mc.control_delta_method, mc.score_function_jacobians, params,
      mc.multi_normal, jax.random.key(2), n)
  assert state is None
  for jac, want in zip(jacobians, quadratic_grads(), strict=True):
    np.testing.assert_allclose(jac.mean(0), want, rtol=1e-3, atol=1e-3)
    assert float(jnp.max(jnp.var(jac, 0))) < 1e-6


def test_moving_average_baseline_is_unbiased_and_tracks_f():
  params = (MU, LOG_SIGMA)
  state = (jnp.float32(0.0), 0)
  n = 20_000
  for i in range(3):
    jacobians, state = mc.control_variates_jacobians(
        quadratic, mc.moving_avg_baseline, mc.score_function_jacobians, params,
        mc.multi_normal, jax.random.key(10 + i), n, control_variate_state=state)
  _check_unbiased(jacobians, quadratic_grads(), n)
  expected_f = float(jnp.sum((MU - K) ** 2 + jnp.exp(2 * LOG_SIGMA)))
  assert abs(float(state[0]) - expected_f) < 0.1 * expected_f and state[1] == 3
  plain = mc.score_function_jacobians(quadratic, params, mc.multi_normal, jax.random.key(12), n)
  assert float(jnp.var(jacobians[0], 0).sum()) < float(jnp.var(plain[0], 0).sum())


def test_estimated_coefficients_are_scalars_near_one_for_the_delta_method():
  coefficients = mc.estimate_control_variate_coefficients(
      quadratic, mc.control_delta_method, mc.score_function_jacobians, (MU, LOG_SIGMA),
      mc.multi_normal, jax.random.key(3), 500)
  assert len(coefficients) == 2 and all(np.shape(c) == () for c in coefficients)
  np.testing.assert_allclose(coefficients, 1.0, atol=0.05)


# --- Every sampler convention: optax's own multi_normal (key=), ours (seed=), --
# --- distrax (keyword-only seed=, sample_shape=) and a positional-only one. ----


class PositionalNormal(mc.MultiNormalDiag):
  """A sampler that takes the key positionally only, under a name no one uses."""

  def sample(self, shape, k, /):
    return super().sample(shape, seed=k)


def distrax_builder(mean, log_scale):
  return distrax.MultivariateNormalDiag(mean, jnp.exp(log_scale))


BUILDERS = {
    "optax": optax_multi_normal,
    "ours": mc.multi_normal,
    "distrax": distrax_builder,
    "positional": PositionalNormal,
}
MULTI_NORMALS = ("optax", "ours")  # the builders measure_valued_jacobians accepts


def test_optax_builder_is_the_installed_one_with_a_key_argument():
  assert optax_multi_normal.__module__.startswith("optax.")
  assert "key" in inspect.signature(optax_multi_normal(MU, LOG_SIGMA).sample).parameters
  assert optax.__version__  # the test runs against whatever optax is installed


def _assert_same(got, want, rtol=1e-4, atol=1e-5):
  assert len(got) == len(want)
  for g, w in zip(got, want, strict=True):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("estimator", [mc.score_function_jacobians, mc.pathwise_jacobians])
def test_estimators_agree_across_sampler_conventions(builder, estimator):
  """Every builder draws the same samples from the same key, so the Jacobians agree."""
  params, key, n = (MU, LOG_SIGMA), jax.random.key(4), 64
  want = estimator(quadratic, params, mc.multi_normal, key, n)
  got = estimator(quadratic, params, BUILDERS[builder], key, n)
  _assert_same(got, want)


@pytest.mark.parametrize("builder", BUILDERS)
def test_measure_valued_takes_both_multi_normals_and_refuses_the_rest(builder):
  params, key, n = (MU, LOG_SIGMA), jax.random.key(5), 64
  if builder in MULTI_NORMALS:
    want = mc.measure_valued_jacobians(quadratic, params, mc.multi_normal, key, n)
    _assert_same(mc.measure_valued_jacobians(quadratic, params, BUILDERS[builder], key, n), want)
  else:
    with pytest.raises(ValueError, match="multi_normal.*grad_estimate"):
      mc.measure_valued_jacobians(quadratic, params, BUILDERS[builder], key, n)


@pytest.mark.slow
@pytest.mark.parametrize("builder", BUILDERS)
def test_control_variates_agree_across_sampler_conventions_and_with_closed_forms(builder):
  """Both control variates, with both estimators, for every builder.

  The delta method is exact for a quadratic, so its corrected Jacobians are
  the closed-form gradient at every sample; the moving average must give what
  the project's own `multi_normal` gives for the same key.
  """
  params, key, n = (MU, LOG_SIGMA), jax.random.key(6), 32
  dist_builder = BUILDERS[builder]
  for grad_estimator in (mc.score_function_jacobians, mc.pathwise_jacobians):
    jacobians, _ = mc.control_variates_jacobians(
        quadratic, mc.control_delta_method, grad_estimator, params, dist_builder, key, n,
        estimate_cv_coeffs=True, estimate_cv_coeffs_num_samples=8)
    for jac, exact in zip(jacobians, quadratic_grads(), strict=True):
      np.testing.assert_allclose(jac, np.broadcast_to(exact, jac.shape), rtol=2e-3, atol=2e-3)
    state = (jnp.float32(1.0), 2)
    want, want_state = mc.control_variates_jacobians(
        quadratic, mc.moving_avg_baseline, grad_estimator, params, mc.multi_normal, key, n,
        control_variate_state=state)
    got, got_state = mc.control_variates_jacobians(
        quadratic, mc.moving_avg_baseline, grad_estimator, params, dist_builder, key, n,
        control_variate_state=state)
    _assert_same(got, want)
    np.testing.assert_allclose(got_state[0], want_state[0], rtol=1e-5)
    assert got_state[1] == want_state[1] == 3


@pytest.mark.parametrize("builder", BUILDERS)
def test_estimated_coefficients_agree_across_sampler_conventions(builder):
  args = (quadratic, mc.control_delta_method, mc.score_function_jacobians, (MU, LOG_SIGMA))
  want = mc.estimate_control_variate_coefficients(*args, mc.multi_normal, jax.random.key(7), 32)
  got = mc.estimate_control_variate_coefficients(*args, BUILDERS[builder], jax.random.key(7), 32)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  np.testing.assert_allclose(got, 1.0, atol=0.05)  # the delta method is exact here


def test_every_public_function_is_covered_above():
  covered = {"score_function_jacobians", "pathwise_jacobians", "measure_valued_jacobians",
             "control_delta_method", "moving_avg_baseline", "control_variates_jacobians",
             "estimate_control_variate_coefficients", "multi_normal", "MultiNormalDiag"}
  assert set(mc.__all__) == covered


def test_multi_normal_sample_takes_seed_or_key():
  dist = mc.multi_normal(MU, LOG_SIGMA)
  key = jax.random.key(8)
  np.testing.assert_array_equal(dist.sample((3,), key=key), dist.sample((3,), seed=key))
  np.testing.assert_array_equal(dist.sample((3,), key), dist.sample((3,), seed=key))
  with pytest.raises(TypeError, match="one PRNG key"):
    dist.sample((3,), seed=key, key=key)


def test_errors_inside_sample_are_not_masked():
  class Broken(mc.MultiNormalDiag):
    def sample(self, shape, seed):
      raise TypeError("a bug inside sample")

  with pytest.raises(TypeError, match="a bug inside sample"):
    mc.score_function_jacobians(quadratic, (MU, LOG_SIGMA), Broken, jax.random.key(0), 4)


# --- params, num_samples and decay are validated ---------------------------------

@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("params", [(MU,), (MU, LOG_SIGMA, K)], ids=["one", "three"])
def test_one_or_three_params_raise_a_value_error_naming_the_convention(builder, params):
  dist_builder, key = BUILDERS[builder], jax.random.key(0)
  calls = [
      lambda: mc.score_function_jacobians(quadratic, params, dist_builder, key, 4),
      lambda: mc.pathwise_jacobians(quadratic, params, dist_builder, key, 4),
      lambda: mc.control_variates_jacobians(quadratic, mc.moving_avg_baseline,
                                            mc.score_function_jacobians, params, dist_builder,
                                            key, 4, control_variate_state=(0.0, 0)),
      lambda: mc.estimate_control_variate_coefficients(
          quadratic, mc.control_delta_method, mc.score_function_jacobians, params,
          dist_builder, key, 4),
  ]
  if builder in MULTI_NORMALS:
    calls.append(lambda: mc.measure_valued_jacobians(quadratic, params, dist_builder, key, 4))
  for call in calls:
    with pytest.raises(ValueError, match=r"params = \[mean, log_scale\]"):
      call()


@pytest.mark.parametrize("params", [(MU,), (MU, LOG_SIGMA, K)], ids=["one", "three"])
def test_delta_method_refuses_params_other_than_mean_and_log_scale(params):
  control_variate, expected_value, _ = mc.control_delta_method(quadratic)
  with pytest.raises(ValueError, match=r"params = \[mean, log_scale\]"):
    control_variate(params, MU)
  with pytest.raises(ValueError, match=r"params = \[mean, log_scale\]"):
    expected_value(params)


def test_params_must_be_a_sequence():
  with pytest.raises(ValueError, match="sequence"):
    mc.score_function_jacobians(quadratic, MU, mc.multi_normal, jax.random.key(0), 4)


@pytest.mark.parametrize("num_samples", [0, -1, 1.5, True, 2.0])
def test_bad_num_samples_raise(num_samples):
  key = jax.random.key(0)
  for estimator in (mc.score_function_jacobians, mc.pathwise_jacobians,
                    mc.measure_valued_jacobians):
    with pytest.raises(ValueError, match="num_samples must be a Python int"):
      estimator(quadratic, (MU, LOG_SIGMA), mc.multi_normal, key, num_samples)
  with pytest.raises(ValueError, match="num_samples must be a Python int"):
    mc.control_variates_jacobians(quadratic, mc.control_delta_method,
                                  mc.score_function_jacobians, (MU, LOG_SIGMA),
                                  mc.multi_normal, key, num_samples)


def test_coefficients_need_two_samples():
  for n in (0, 1):
    with pytest.raises(ValueError, match="num_samples must be a Python int >= 2"):
      mc.estimate_control_variate_coefficients(
          quadratic, mc.control_delta_method, mc.score_function_jacobians, (MU, LOG_SIGMA),
          mc.multi_normal, jax.random.key(0), n)
    with pytest.raises(ValueError, match="estimate_cv_coeffs_num_samples"):
      mc.control_variates_jacobians(
          quadratic, mc.control_delta_method, mc.score_function_jacobians, (MU, LOG_SIGMA),
          mc.multi_normal, jax.random.key(0), 8, estimate_cv_coeffs=True,
          estimate_cv_coeffs_num_samples=n)


@pytest.mark.parametrize("decay", [-0.1, 1.5, float("nan")])
def test_moving_average_refuses_a_decay_outside_the_unit_interval(decay):
  with pytest.raises(ValueError, match="decay"):
    mc.moving_avg_baseline(quadratic, decay=decay)


def test_pathwise_refuses_discrete_distributions():
  for builder in (lambda logits: distrax.Bernoulli(logits=logits),
                  lambda logits: distrax.Bernoulli(logits=logits, dtype=jnp.float32),
                  lambda logits: distrax.Independent(distrax.Bernoulli(logits=logits), 1)):
    with pytest.raises(ValueError, match="reparameterised"):
      mc.pathwise_jacobians(lambda b: jnp.sum(b), (jnp.zeros(3),), builder, jax.random.key(0), 4)
