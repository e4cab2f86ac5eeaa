"""The optax.monte_carlo drop-in, against closed-form gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
