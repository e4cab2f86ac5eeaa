"""The unordered-set estimator on products of independent variables: stochastic beam search.

The sampler is checked against the law of sampling without replacement from the enumerated
joint (a chi-square test on a fixed key, which a slightly wrong law fails), the estimator
against `rj.exact_gradient` within 4.5 standard errors, on fixed keys.
"""

import functools
import itertools

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reinforce_jax as rj
from reinforce_jax.estimators import unordered_set

DRAWS = 20_000
# Chi-square quantiles at 1 - 1e-5 (scipy.stats.chi2.ppf): a correct sampler fails the
# test with probability 1e-5 on a random key; on the fixed keys here it passes.
CHI2_DF27, CHI2_DF55 = 70.35, 111.6
LOGITS3 = jnp.array([0.5, -1.0, 0.3])


def _bernoulli_levels(logits):
  return jnp.stack([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)], -1)


def _joint_probs(logits):
  """`[2^L]` probabilities of the joint outcomes, outcome index = bits read as binary."""
  p = np.asarray(jax.nn.sigmoid(logits), np.float64)
  return np.array([np.prod(np.where(np.array(bits) == 1, p, 1 - p))
                   for bits in itertools.product([0, 1], repeat=len(p))])


def _draw(logits, k, key):
  """`[DRAWS, k]` outcome indices from the beam search, one jit."""
  levels = _bernoulli_levels(logits)
  outcomes, log_p = jax.jit(jax.vmap(lambda key: unordered_set.stochastic_beam_search(
      key, levels, k)))(jax.random.split(key, DRAWS))
  weights = 2 ** np.arange(logits.shape[0])[::-1]
  return np.asarray(outcomes) @ weights, np.asarray(log_p)


def _chi_square(counts, probs):
  expected = DRAWS * probs
  return float(np.sum((counts - expected) ** 2 / expected))


def _ordered_pair_law(p):
  """P(first = i, second = j) = p_i p_j / (1 - p_i), over ordered pairs i != j."""
  pairs = list(itertools.permutations(range(len(p)), 2))
  return pairs, np.array([p[i] * p[j] / (1 - p[i]) for i, j in pairs])


def test_beam_search_draws_ordered_pairs_without_replacement():
  """L = 3, k = 2: the 56 ordered pairs (first, second) have the law of two draws without
  replacement from the 8 joint outcomes; the same counts fail against logits off by 0.25."""
  index, log_p = _draw(LOGITS3, 2, jax.random.key(0))
  assert np.all(index[:, 0] != index[:, 1])
  p = _joint_probs(LOGITS3)
  np.testing.assert_allclose(log_p, np.log(p[index]), atol=1e-5)
  pairs, law = _ordered_pair_law(p)
  cell = {pair: c for c, pair in enumerate(pairs)}
  counts = np.bincount([cell[tuple(row)] for row in index], minlength=len(pairs))
  statistic = _chi_square(counts, law)
  assert statistic < CHI2_DF55, statistic
  _, wrong = _ordered_pair_law(_joint_probs(LOGITS3 + jnp.array([0.25, 0.0, 0.0])))
  assert _chi_square(counts, wrong) > 2 * CHI2_DF55


def test_beam_search_sets_of_three_have_the_set_law():
  """L = 3, k = 3: the 56 unordered sets have probability `P(S)` (sum over the 6 orders of
  sequential draws without replacement), and the first member alone is a draw from p."""
  logits = jnp.array([-0.4, 0.9, 0.1])
  index, _ = _draw(logits, 3, jax.random.key(1))
  assert np.all(np.sort(index, 1)[:, 1:] != np.sort(index, 1)[:, :-1])
  p = _joint_probs(logits)
  sets = list(itertools.combinations(range(8), 3))
  law = np.array([sum(p[a] * p[b] * p[c] / ((1 - p[a]) * (1 - p[a] - p[b]))
                      for a, b, c in itertools.permutations(s)) for s in sets])
  np.testing.assert_allclose(law.sum(), 1.0, rtol=1e-9)
  cell = {s: c for c, s in enumerate(sets)}
  counts = np.bincount([cell[tuple(sorted(row))] for row in index], minlength=len(sets))
  assert _chi_square(counts, law) < CHI2_DF55
  first = np.bincount(index[:, 0], minlength=8) / DRAWS
  assert np.all(np.abs(first - p) < 4.5 * np.sqrt(p * (1 - p) / DRAWS)), (first, p)


@pytest.mark.slow
def test_beam_search_is_distinct_at_sixteen_bits_and_for_categoricals():
  """k = 7 of 2^16 outcomes (a peaked product, where a with-replacement sampler repeats),
  and k = 5 of 3^2 outcomes of two categoricals: distinct rows, their joint log-probability."""
  logits = jnp.linspace(-4.0, 4.0, 16)
  outcomes, log_p = jax.jit(jax.vmap(lambda key: unordered_set.stochastic_beam_search(
      key, _bernoulli_levels(logits), 7)))(jax.random.split(jax.random.key(2), 500))
  outcomes = np.asarray(outcomes)
  for rows in outcomes:
    assert len({tuple(r) for r in rows}) == 7
  expected = np.sum(np.where(outcomes == 1, jax.nn.log_sigmoid(logits),
                             jax.nn.log_sigmoid(-logits)), -1)
  np.testing.assert_allclose(log_p, expected, rtol=1e-5)
  levels = jax.nn.log_softmax(jnp.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]]))
  outcomes, log_p = jax.jit(jax.vmap(lambda key: unordered_set.stochastic_beam_search(
      key, levels, 5)))(jax.random.split(jax.random.key(3), 200))
  for rows, lp in zip(np.asarray(outcomes), np.asarray(log_p), strict=True):
    assert len({tuple(r) for r in rows}) == 5
    np.testing.assert_allclose(lp, levels[0, rows[:, 0]] + levels[1, rows[:, 1]], rtol=1e-5)


W4 = jnp.array([[0.5, -1.0, 0.3, 0.0], [0.2, 0.1, -0.7, 0.4], [1.0, 0.4, 0.2, -0.3],
                [0.0, -0.6, 0.5, 0.8]])


def _float(b):
  return jnp.asarray(b).astype(jnp.float32)


PRODUCT_PROBLEMS = {
    # Independent(Bernoulli), L = 3, k = 3, f non-linear in the bits.
    "independent_3": (lambda b: jnp.sin(_float(b) @ jnp.array([1.0, -2.0, 0.7]) + 0.4),
                      lambda th: distrax.Independent(distrax.Bernoulli(logits=th), 1),
                      jnp.array([0.5, -1.0, 2.0]), 3),
    # A plain Bernoulli of batch shape [2, 2], k = 2, with an interaction term.
    "batch_2x2": (lambda b: (jnp.sum(_float(b) * jnp.array([[1.0, -0.5], [2.0, 0.7]])) - 1.5) ** 2
                  + 3.0 * _float(b)[0, 0] * _float(b)[1, 1],
                  lambda th: distrax.Bernoulli(logits=th), jnp.array([[0.2, -1.0], [0.8, 0.0]]),
                  2),
    # L = 4 logits from a params pytree, k = 4, a quadratic form.
    "pytree_4": (lambda b: jnp.cos(_float(b) @ W4 @ _float(b)),
                 lambda p: distrax.Independent(distrax.Bernoulli(logits=p["w"] * p["x"] + p["b"]),
                                               1),
                 {"w": jnp.array([0.5, -1.0, 1.5, 0.3]), "x": jnp.float32(0.8),
                  "b": jnp.array([0.1, 0.2, -0.3, 0.0])}, 4),
    # Peaked: the mode has probability ~0.99, the others down to 1e-6 (log-space weights).
    "peaked_3": (lambda b: jnp.sum(_float(b) * jnp.array([3.0, -1.0, 2.0])) ** 2,
                 lambda th: distrax.Independent(distrax.Bernoulli(logits=th), 1),
                 jnp.array([6.0, -5.0, 7.0]), 3),
    # Two categoricals of 3 values under Independent, k = 3.
    "categoricals_2x3": (lambda a: jnp.array([1.0, -2.0, 0.5])[a[0]] * (a[1] - 0.7),
                         lambda th: distrax.Independent(distrax.Categorical(logits=th), 1),
                         jnp.array([[0.0, 1.0, -1.0], [0.4, 0.0, 0.5]]), 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("problem", sorted(PRODUCT_PROBLEMS))
def test_unordered_set_on_products_is_unbiased(problem):
  f, build, params, k = PRODUCT_PROBLEMS[problem]
  estimate = functools.partial(rj.grad_estimate, num_samples=k, estimator="unordered_set")
  check = rj.check_estimator(estimate, f, build, params, jax.random.key(7), replicates=3000,
                             timing_calls=0)
  assert check.max_abs_bias_in_stderr < 4.5, (check.bias_in_stderr, check.exact, check.mean)
  assert jax.tree.structure(check.mean) == jax.tree.structure(params)


@pytest.mark.slow
def test_unordered_set_with_every_joint_outcome_is_exact():
  """k = 2^L: the set is the whole support and the estimate the exact gradient."""
  f = lambda b: jnp.cos(_float(b) @ jnp.array([1.0, -2.0]))  # noqa: E731
  build = lambda th: distrax.Bernoulli(logits=th)  # noqa: E731
  theta = jnp.array([0.5, -1.0])
  got = jax.jit(lambda key: rj.grad_estimate(f, build, theta, key, num_samples=4,
                                             estimator="unordered_set"))(jax.random.key(0))
  np.testing.assert_allclose(got, rj.exact_gradient(f, build, theta), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_unordered_set_weights_stay_finite_where_probabilities_underflow():
  """200 fair bits: each member has probability 2^-200 (0 in float32). The log-space
  coefficients are finite, the expectation weights sum to 1 (here 1/k each, by symmetry),
  and the probability-space `unordered_set_weights` would divide 0 by 0."""
  logits = jnp.zeros(200)
  f = lambda b: jnp.sum(_float(b) * jnp.linspace(-1.0, 1.0, 200)) ** 2  # noqa: E731
  build = lambda th: distrax.Independent(distrax.Bernoulli(logits=th), 1)  # noqa: E731
  gradient, values, expectation = jax.jit(lambda key: unordered_set.unordered_set_gradient(
      f, build, logits, key, 4))(jax.random.key(0))
  assert bool(jnp.all(jnp.isfinite(gradient))) and float(jnp.max(jnp.abs(gradient))) > 0
  np.testing.assert_allclose(expectation, 0.25, rtol=1e-4)
  assert values.shape == (4,)
  legacy = jax.jit(unordered_set.unordered_set_weights)(jnp.zeros(4), values)  # exp(-139) = 0
  assert not bool(jnp.all(jnp.isfinite(legacy)))


def test_unordered_set_expectation_weights_estimate_the_mean():
  """`sum_s p(s) R(S, s) f(s)` over the sampled set is unbiased for `E f` (the weights
  that make the VAE's pathwise decoder gradient unbiased)."""
  f, build, theta, k = PRODUCT_PROBLEMS["independent_3"]

  def estimate(key):
    _, values, expectation = unordered_set.unordered_set_gradient(f, build, theta, key, k)
    return jnp.sum(expectation * values)

  draws = jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.key(4), 3000))
  p = _joint_probs(theta)
  exact = sum(p[i] * float(f(jnp.array(bits))) for i, bits in enumerate(
      itertools.product([0, 1], repeat=3)))
  assert abs(float(jnp.mean(draws)) - exact) < 4.5 * float(jnp.std(draws)) / np.sqrt(3000)


@pytest.mark.slow
def test_unordered_set_on_products_jits_and_vmaps_over_logits():
  """As in the VAE: vmapped over a batch of logits and keys, each row as if alone."""
  f, build, _, k = PRODUCT_PROBLEMS["independent_3"]
  thetas = jnp.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])
  keys = jax.random.split(jax.random.key(5), 2)
  one = lambda th, key: rj.grad_estimate(f, build, th, key, num_samples=k,  # noqa: E731
                                         estimator="unordered_set")
  batched = jax.jit(jax.vmap(one))(thetas, keys)
  assert batched.shape == (2, 3)
  np.testing.assert_allclose(batched[1], jax.jit(one)(thetas[1], keys[1]), rtol=1e-5, atol=1e-6)


def test_unordered_set_on_products_says_what_it_needs():
  f = lambda b: jnp.sum(_float(b))  # noqa: E731
  bern = lambda th: distrax.Bernoulli(logits=th)  # noqa: E731
  with pytest.raises(ValueError, match=r"num_samples <= the 2\^2 = 4 joint outcomes"):
    rj.grad_estimate(f, bern, jnp.zeros(2), jax.random.key(0), num_samples=5,
                     estimator="unordered_set")
  with pytest.raises(ValueError, match=r"<= 7 \(its set probability sums over k! orderings"):
    rj.grad_estimate(f, bern, jnp.zeros(10), jax.random.key(0), num_samples=8,
                     estimator="unordered_set")
  cats = lambda th: distrax.Independent(distrax.Categorical(logits=th), 1)  # noqa: E731
  with pytest.raises(ValueError, match=r"3\^1 = 3 joint outcomes of 1 categorical"):
    rj.grad_estimate(f, cats, jnp.zeros((1, 3)), jax.random.key(0), num_samples=4,
                     estimator="unordered_set")
  with pytest.raises(ValueError, match="wrap it in distrax.Independent"):
    rj.grad_estimate(f, lambda th: distrax.Categorical(logits=th), jnp.zeros((2, 3)),
                     jax.random.key(0), num_samples=2, estimator="unordered_set")
  with pytest.raises(ValueError, match="is defined for one distrax.Categorical"):
    rj.grad_estimate(f, lambda th: distrax.Normal(th, 1.0), jnp.zeros(2), jax.random.key(0),
                     num_samples=2, estimator="unordered_set")
  with pytest.raises(ValueError, match="return_stats needs independent samples"):
    rj.grad_estimate(f, bern, jnp.zeros(3), jax.random.key(0), num_samples=2,
                     estimator="unordered_set", return_stats=True)
