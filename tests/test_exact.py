"""rj.exact_gradient against closed forms, and rj.check_estimator against known variances."""

import functools
import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reinforce_jax as rj


def test_bernoulli_and_products_of_bernoullis():
  theta, t = 0.3, 0.45
  p = 1 / (1 + math.exp(-theta))
  got = rj.exact_gradient(lambda b: (b - t) ** 2, lambda th: distrax.Bernoulli(logits=th),
                          jnp.float32(theta))
  np.testing.assert_allclose(got, p * (1 - p) * (1 - 2 * t), rtol=1e-5)
  # f = prod(b): E f = prod p_i, d/dtheta_i = p_i (1 - p_i) prod_{j != i} p_j.
  logits = jnp.array([0.4, -1.0, 2.0])
  probs = np.asarray(jax.nn.sigmoid(logits))
  want = [probs[i] * (1 - probs[i]) * np.prod(np.delete(probs, i)) for i in range(3)]
  for build in (lambda th: distrax.Bernoulli(logits=th),
                lambda th: distrax.Independent(distrax.Bernoulli(logits=th), 1)):
    got = rj.exact_gradient(lambda b: jnp.prod(b.astype(jnp.float32)), build, logits)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_batch_of_categoricals_and_a_params_pytree():
  """f = r0[a0] + r1[a1]: each row's gradient is pi (r - pi . r)."""
  rewards = jnp.array([[1.0, 4.0, -2.0], [0.5, 0.0, 3.0]])
  params = {"logits": jnp.array([[0.2, -0.1, 0.7], [1.0, 0.0, -1.0]]), "temperature": 2.0}

  def build(p):
    return distrax.Categorical(logits=p["logits"] / p["temperature"])

  got = rj.exact_gradient(lambda a: rewards[0, a[0]] + rewards[1, a[1]], build, params)
  pi = jax.nn.softmax(params["logits"] / 2.0, axis=-1)
  want = pi * (rewards - jnp.sum(pi * rewards, -1, keepdims=True)) / 2.0
  np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-7)
  assert jnp.shape(got["temperature"]) == ()


@pytest.mark.parametrize("cost", ["quadratic", "exponential", "cosine"])
def test_gaussians_by_gauss_hermite(cost):
  """Mohamed et al.'s three costs: E f in closed form, differentiated by JAX."""
  k = 1.7

  def expectation(mu, sigma):
    if cost == "quadratic":
      return (mu - k) ** 2 + sigma**2
    if cost == "exponential":
      return jnp.exp(-k * mu**2 / (1 + 2 * k * sigma**2)) / jnp.sqrt(1 + 2 * k * sigma**2)
    return jnp.cos(k * mu) * jnp.exp(-(k**2) * sigma**2 / 2)

  f = {"quadratic": lambda x: (x - k) ** 2, "exponential": lambda x: jnp.exp(-k * x**2),
       "cosine": lambda x: jnp.cos(k * x)}[cost]
  params = {"mu": jnp.float32(0.6), "log_sigma": jnp.log(jnp.float32(0.8))}
  got = rj.exact_gradient(f, lambda p: distrax.Normal(p["mu"], jnp.exp(p["log_sigma"])), params)
  want = jax.grad(lambda p: expectation(p["mu"], jnp.exp(p["log_sigma"])))(params)
  for name in params:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_a_diagonal_gaussian_by_a_product_rule():
  """f = |x|^2 in 2-d: E f = |mu|^2 + |sigma|^2."""
  mu, sigma = jnp.array([0.5, -1.0]), jnp.array([0.7, 1.3])
  got = rj.exact_gradient(lambda x: jnp.sum(x**2),
                          lambda p: distrax.MultivariateNormalDiag(p[0], p[1]), (mu, sigma),
                          quadrature_points=16)
  np.testing.assert_allclose(got[0], 2 * mu, rtol=1e-4)
  np.testing.assert_allclose(got[1], 2 * sigma, rtol=1e-4)


def test_supports_too_large_or_unknown_are_refused():
  with pytest.raises(ValueError, match=r"1\.049e\+06 joint outcomes for batch shape \(20,\)"):
    rj.exact_gradient(jnp.sum, lambda th: distrax.Bernoulli(logits=th), jnp.zeros(20))
  with pytest.raises(ValueError, match=r"Gauss-Hermite rule of 64 points has 1\.678e\+07"):
    rj.exact_gradient(jnp.sum, lambda m: distrax.Normal(m, 1.0), jnp.zeros(4))
  with pytest.raises(ValueError, match="got Beta"):
    rj.exact_gradient(jnp.sum, lambda a: distrax.Beta(a, 1.0), jnp.float32(2.0))
  # Allowed once max_outcomes says so.
  rj.exact_gradient(jnp.sum, lambda th: distrax.Bernoulli(logits=th), jnp.zeros(17),
                    max_outcomes=2**17)


def test_check_estimator_measures_known_variances():
  """Pathwise on x ~ N(mu, sigma^2), f = (x - k)^2: the per-sample gradient in mu is
  2 (x - k), variance 4 sigma^2; in log sigma it is 2 sigma eps (mu - k + sigma eps),
  variance 4 sigma^2 (mu - k)^2 + 8 sigma^4. One sample per estimate."""
  mu, sigma, k = 0.6, 0.8, 0.2
  params = {"mu": jnp.float32(mu), "log_sigma": jnp.log(jnp.float32(sigma))}
  build = lambda p: distrax.Normal(p["mu"], jnp.exp(p["log_sigma"]))  # noqa: E731
  estimate = functools.partial(rj.grad_estimate, num_samples=1, estimator="pathwise")
  check = rj.check_estimator(estimate, lambda x: (x - k) ** 2, build, params,
                             jax.random.key(0), replicates=20_000, timing_calls=3)
  want = {"mu": 4 * sigma**2, "log_sigma": 4 * sigma**2 * (mu - k) ** 2 + 8 * sigma**4}
  for name, variance in want.items():
    np.testing.assert_allclose(check.variance[name], variance, rtol=0.05)
    np.testing.assert_allclose(check.snr[name], abs(float(check.exact[name])) / math.sqrt(
        float(check.variance[name])), rtol=1e-5)
  np.testing.assert_allclose(check.exact["mu"], 2 * (mu - k), rtol=1e-4)
  assert check.max_abs_bias_in_stderr < 4.5 and check.replicates == 20_000
  assert 0 < check.seconds_per_gradient < 1


def test_check_estimator_bernoulli_score_function_variance_in_closed_form():
  """One sample of f(b) (b - p): Var = p (1-p)^2 f(1)^2 + (1-p) p^2 f(0)^2 - g^2."""
  theta, t = 0.3, 0.45
  p = 1 / (1 + math.exp(-theta))
  g = p * (1 - p) * (1 - 2 * t)
  want = p * (1 - p) ** 2 * (1 - t) ** 4 + (1 - p) * p**2 * t**4 - g**2
  check = rj.check_estimator(functools.partial(rj.grad_estimate, num_samples=1),
                             lambda b: (b - t) ** 2, lambda th: distrax.Bernoulli(logits=th),
                             jnp.float32(theta), jax.random.key(1), replicates=20_000,
                             timing_calls=0)
  np.testing.assert_allclose(check.variance, want, rtol=0.05)
  assert check.max_abs_bias_in_stderr < 4.5 and math.isnan(check.seconds_per_gradient)


def test_check_estimator_catches_biased_estimators():
  """A baseline that includes the sample's own f (the mean of all N, a classic slip) scales
  the expected gradient by 1 - 1/N; an estimator off by 5% with no variance is caught too."""
  logits = jnp.array([0.5, -0.3, 1.0, 0.0])
  rewards = jnp.array([6.0, 8.0, 3.0, 5.5])
  f = lambda a: rewards[a]  # noqa: E731
  build = lambda th: distrax.Categorical(logits=th)  # noqa: E731

  def own_sample_baseline(f, build, params, key, n=4):
    actions = build(params).sample(seed=key, sample_shape=(n,))
    values = jax.vmap(f)(actions)
    scores = jax.vmap(lambda a: jax.grad(lambda p: build(p).log_prob(a))(params))(actions)
    return jnp.mean((values - values.mean())[:, None] * scores, axis=0)

  biased = rj.check_estimator(own_sample_baseline, f, build, logits, jax.random.key(2),
                              replicates=4000, timing_calls=0)
  assert biased.max_abs_bias_in_stderr > 10, biased.bias_in_stderr
  np.testing.assert_allclose(biased.mean, 0.75 * biased.exact, atol=0.02)
  fair = rj.check_estimator(functools.partial(rj.grad_estimate, num_samples=4, baseline="rloo"),
                            f, build, logits, jax.random.key(2), replicates=4000, timing_calls=0)
  assert fair.max_abs_bias_in_stderr < 4.5
  exact = rj.exact_gradient(f, build, logits)
  off = rj.check_estimator(lambda *_: 1.05 * exact, f, build, logits, jax.random.key(3),
                           replicates=10, timing_calls=0)
  assert off.max_abs_bias_in_stderr > 100 and np.all(np.asarray(off.snr) > 1e5)
  with pytest.raises(ValueError, match="replicates must be a Python int >= 2"):
    rj.check_estimator(lambda *_: exact, f, build, logits, jax.random.key(3), replicates=1)
