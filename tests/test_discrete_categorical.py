"""ARM and DisARM for categoricals, through the stick-breaking binary code.

The code is checked exactly (the law of the first 1 among the bits is the categorical), the
K = 2 case against the Bernoulli estimators sample by sample, and the estimators against
`rj.exact_gradient` within 4.5 standard errors on fixed keys; their variance against the
score function's at the same number of evaluations of `f`.
"""

import functools

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reinforce_jax as rj
from reinforce_jax.estimators import discrete

REPLICATES = 3000


def _single():
  """One 5-way categorical, f with a large mean (hard for the plain score function)."""
  return (lambda a: (a - 1.7) ** 2 + 3.0, lambda p: distrax.Categorical(logits=p),
          jnp.array([0.3, -1.0, 1.2, 0.0, -0.5]))


def _batch_pytree():
  """Three 4-way categoricals with logits `w + b` from a params pytree; f couples them."""
  def f(a):
    a = a.astype(jnp.float32)
    return jnp.sin(a[0] * a[1] + 0.5 * a[2]) + 0.3 * jnp.sum(a)

  params = {"w": jnp.array([[0.2, -0.4, 0.9, 0.0], [1.0, 0.1, -0.7, 0.3],
                            [-0.2, 0.5, 0.4, -1.1]]),
            "b": jnp.array([0.1, 0.0, -0.3, 0.2])}
  return f, lambda p: distrax.Categorical(logits=p["w"] + p["b"]), params


def _independent_probs():
  """`Independent` of a 2 x 2 batch of 3-way categoricals built from probabilities."""
  target = jnp.array([[0, 2], [1, 1]])

  def f(a):
    return (jnp.sum((a - target) ** 2) + a[0, 0] * a[1, 1]).astype(jnp.float32)

  def build(p):
    return distrax.Independent(distrax.Categorical(probs=jax.nn.softmax(p)),
                               reinterpreted_batch_ndims=2)

  return f, build, jnp.array([[[0.4, -0.2, 0.1], [0.0, 0.8, -0.5]],
                              [[-0.3, 0.3, 0.6], [1.2, -0.4, 0.0]]])


PROBLEMS = {"single": _single, "batch_pytree": _batch_pytree,
            "independent_probs": _independent_probs}


def test_stick_breaking_code_has_the_categorical_law():
  """P(first 1 at j) = sigmoid(alpha_j) prod_{i<j} (1 - sigmoid(alpha_i)) = p_j, batched."""
  logits = jax.random.normal(jax.random.key(0), (2, 3, 6)) * 2.0
  q = jax.nn.sigmoid(discrete.stick_breaking_logits(logits))               # [2, 3, 5]
  stay = jnp.concatenate([jnp.ones((2, 3, 1)), jnp.cumprod(1 - q, -1)], -1)  # [2, 3, 6]
  law = stay * jnp.concatenate([q, jnp.ones((2, 3, 1))], -1)
  np.testing.assert_allclose(law, jax.nn.softmax(logits), atol=1e-6)


@pytest.mark.slow
def test_two_categories_match_the_bernoulli_estimators():
  """K = 2: category 0 is the bit set, alpha = l0 - l1, so each per-sample estimate is the
  Bernoulli one `d` (same key, same uniforms) as `(d, -d)` in the two logits."""
  logits = jnp.array([0.7, -0.4])
  g = lambda b: jnp.sin(2.0 * b) + b                                        # noqa: E731
  for estimator in ("arm", "disarm"):
    _, cat = rj.grad_estimate(lambda a: g(1.0 - a[0]),
                              lambda p: distrax.Independent(distrax.Categorical(logits=p[None]), 1),
                              logits, jax.random.key(3), num_samples=64, estimator=estimator,
                              return_stats=True)
    _, bern = rj.grad_estimate(lambda b: g(b[0].astype(jnp.float32)),
                               lambda t: distrax.Bernoulli(logits=t),
                               (logits[0] - logits[1])[None], jax.random.key(3), num_samples=64,
                               estimator=estimator, return_stats=True)
    d = bern.per_sample[:, 0]
    np.testing.assert_allclose(cat.per_sample, jnp.stack([d, -d], -1), atol=1e-6)
    np.testing.assert_allclose(cat.values, bern.values, atol=1e-6)


@pytest.mark.parametrize("estimator", ["arm", "disarm"])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_unbiased(problem, estimator):
  f, build, params = PROBLEMS[problem]()
  estimate = functools.partial(rj.grad_estimate, num_samples=2, estimator=estimator)
  check = rj.check_estimator(estimate, f, build, params, jax.random.key(5),
                             replicates=REPLICATES, timing_calls=0)
  assert check.max_abs_bias_in_stderr < 4.5, (check.bias_in_stderr, check.exact, check.mean)


def _total_variance(check):
  return sum(float(jnp.sum(v)) for v in jax.tree.leaves(check.variance))


@pytest.mark.slow
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_lower_variance_than_the_score_function(problem):
  """At equal evaluations of f (one antithetic pair vs two independent samples) DisARM's
  total variance is below the plain score function's, and not above ARM's (of which it is a
  conditional expectation) beyond the noise of 3000 replicates."""
  f, build, params = PROBLEMS[problem]()
  variance = {}
  for estimator, n in (("disarm", 1), ("arm", 1), ("score_function", 2)):
    check = rj.check_estimator(functools.partial(rj.grad_estimate, num_samples=n,
                                                 estimator=estimator),
                               f, build, params, jax.random.key(9), replicates=REPLICATES,
                               timing_calls=0)
    variance[estimator] = _total_variance(check)
  assert variance["disarm"] < 0.6 * variance["score_function"], variance
  assert variance["disarm"] < 1.1 * variance["arm"], variance


def test_one_hot_categorical_is_refused():
  with pytest.raises(ValueError, match="Bernoulli"):
    rj.grad_estimate(lambda a: jnp.sum(a), lambda p: distrax.OneHotCategorical(logits=p),
                     jnp.zeros(3), jax.random.key(0), num_samples=2, estimator="disarm")
