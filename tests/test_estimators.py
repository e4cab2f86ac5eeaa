"""grad_estimate, DiCE, VIMCO and the relaxations, on closed-form problems."""

import functools
import itertools

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reinforce_jax as rj

N = 20_000


def gaussian(p):
  return distrax.Normal(p["mu"], jnp.exp(p["log_sigma"]))


GAUSS = {"mu": jnp.float32(0.6), "log_sigma": jnp.log(jnp.float32(0.8))}
SIGMA = 0.8


def closed_form(problem):
  mu = 0.6
  if problem == "quadratic":  # f = (x - k)^2, k = 0.2
    return lambda x: (x - 0.2) ** 2, {"mu": 2 * (mu - 0.2), "log_sigma": 2 * SIGMA**2}
  omega = 1.7  # f = cos(omega x): E f = cos(omega mu) exp(-omega^2 sigma^2 / 2)
  damp = np.exp(-(omega**2) * SIGMA**2 / 2)
  return jnp.cos if omega == 1 else (lambda x: jnp.cos(omega * x)), {
      "mu": -omega * np.sin(omega * mu) * damp,
      "log_sigma": -(omega**2) * SIGMA**2 * np.cos(omega * mu) * damp,
  }


def assert_within(gradient, stats, exact, num_se=4.0):
  for name, want in exact.items():
    stderr = float(jnp.sqrt(stats.variance[name]))
    assert abs(float(gradient[name]) - want) < num_se * stderr + 1e-6, (name, gradient, exact)


@pytest.mark.parametrize("problem", ["quadratic", "cosine"])
@pytest.mark.parametrize("estimator, baseline", [
    ("score_function", None), ("score_function", "rloo"), ("score_function", "optimal"),
    ("score_function", 0.5), ("pathwise", None), ("measure_valued", None)])
def test_gaussian_problems_unbiased(problem, estimator, baseline):
  f, exact = closed_form(problem)
  gradient, stats = rj.grad_estimate(f, gaussian, GAUSS, jax.random.key(0), num_samples=N,
                                     estimator=estimator, baseline=baseline, return_stats=True)
  assert set(gradient) == {"mu", "log_sigma"} and stats.per_sample["mu"].shape == (N,)
  assert_within(gradient, stats, exact)


def test_bernoulli_closed_form():
  """b ~ Bernoulli(sigmoid(theta)), f = (b - t)^2: gradient p (1 - p) (1 - 2 t)."""
  theta, t = 0.3, 0.45
  p = 1 / (1 + np.exp(-theta))
  exact = p * (1 - p) * (1 - 2 * t)
  for baseline in (None, "rloo", "optimal"):
    g, stats = rj.grad_estimate(lambda b: (b - t) ** 2,
                                lambda th: distrax.Bernoulli(logits=th),
                                jnp.float32(theta), jax.random.key(1), num_samples=N,
                                baseline=baseline, return_stats=True)
    assert abs(float(g) - exact) < 4 * float(jnp.sqrt(stats.variance)) + 1e-6, baseline
  with pytest.raises(ValueError, match="measure_valued"):
    rj.grad_estimate(lambda b: b, lambda th: distrax.Bernoulli(logits=th), jnp.float32(0.0),
                     jax.random.key(0), num_samples=4, estimator="measure_valued")


def test_softmax_bandit_closed_form_and_rloo_variance():
  """a ~ softmax(theta), f = r[a]: gradient pi * (r - pi . r)."""
  theta = jnp.array([0.5, -0.3, 1.0, 0.0])
  r = jnp.array([6.0, 8.0, 3.0, 5.5])  # an offset of 5 that only a baseline removes
  pi = jax.nn.softmax(theta)
  exact = np.asarray(pi * (r - jnp.dot(pi, r)))
  results = {}
  for baseline in (None, "rloo"):
    g, stats = rj.grad_estimate(lambda a: r[a], lambda th: distrax.Categorical(logits=th), theta,
                                jax.random.key(2), num_samples=N, baseline=baseline,
                                return_stats=True)
    assert np.all(np.abs(np.asarray(g) - exact) < 4 * np.sqrt(np.asarray(stats.variance)))
    results[baseline] = float(jnp.sum(stats.variance))
  assert results["rloo"] < 0.5 * results[None]


def test_rloo_lowers_variance_on_the_gaussian():
  f, _ = closed_form("quadratic")
  variances = {}
  for baseline in (None, "rloo", "optimal"):
    _, stats = rj.grad_estimate(f, gaussian, GAUSS, jax.random.key(3), num_samples=4000,
                                baseline=baseline, return_stats=True)
    variances[baseline] = sum(float(v) for v in jax.tree.leaves(stats.variance))
  assert variances["rloo"] < variances[None] and variances["optimal"] < variances[None]


def test_composes_with_optax():
  import optax
  f, _ = closed_form("quadratic")
  optimizer = optax.adam(0.05)
  params = GAUSS
  state = optimizer.init(params)
  for i in range(200):  # minimise E (x - 0.2)^2: mu -> 0.2, sigma -> 0
    grads = rj.grad_estimate(f, gaussian, params, jax.random.key(i), num_samples=64,
                             baseline="rloo")
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert abs(float(params["mu"]) - 0.2) < 0.1 and float(params["log_sigma"]) < np.log(0.3)


def test_bad_arguments():
  with pytest.raises(ValueError, match="estimator must be one of"):
    rj.grad_estimate(jnp.sin, gaussian, GAUSS, jax.random.key(0), num_samples=4,
                     estimator="magic")
  with pytest.raises(ValueError, match="baselines apply to the score-function"):
    rj.grad_estimate(jnp.sin, gaussian, GAUSS, jax.random.key(0), num_samples=4,
                     estimator="pathwise", baseline="rloo")



# --- Samplers of every convention; arguments that used to give silent wrong answers ---

MEAN3 = jnp.array([0.5, -1.0, 2.0])
LOG_SCALE3 = jnp.log(jnp.array([0.7, 1.2, 0.4]))


class PositionalNormal(rj.monte_carlo.MultiNormalDiag):
  """A sampler that takes `(shape, key)` positionally only."""

  def sample(self, shape, k, /):
    return super().sample(shape, seed=k)


@pytest.mark.parametrize("estimator", ["score_function", "pathwise"])
@pytest.mark.parametrize("builder", ["optax", "ours", "positional"])
def test_grad_estimate_takes_samplers_with_key_seed_or_positional_keys(estimator, builder):
  """optax's own multi_normal (`key=`), ours (`seed=`) and a positional-only sampler draw
  what distrax draws from the same key, so the estimates agree."""
  from optax._src.utils import multi_normal as optax_multi_normal

  make = {"optax": optax_multi_normal, "ours": rj.monte_carlo.multi_normal,
          "positional": PositionalNormal}[builder]
  f = lambda x: jnp.sum((x - 0.2) ** 2)  # noqa: E731
  params = [MEAN3, LOG_SCALE3]
  key = jax.random.key(5)
  want = rj.grad_estimate(f, lambda p: distrax.MultivariateNormalDiag(p[0], jnp.exp(p[1])),
                          params, key, num_samples=32, estimator=estimator)
  got = rj.grad_estimate(f, lambda p: make(*p), params, key, num_samples=32, estimator=estimator)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("builder", [
    lambda th: distrax.Bernoulli(logits=th),
    lambda th: distrax.Bernoulli(logits=th, dtype=jnp.float32),  # float samples, still discrete
    lambda th: distrax.Categorical(logits=jnp.stack([th, -th])),
    lambda th: distrax.Independent(distrax.Bernoulli(logits=th[None]), 1),
], ids=["bernoulli", "float-bernoulli", "categorical", "independent-bernoulli"])
def test_pathwise_refuses_distributions_without_a_reparameterised_sampler(builder):
  """It used to return 0 for the Bernoulli, whose true gradient is 0.25 here."""
  with pytest.raises(ValueError, match="reparameterised sampler"):
    rj.grad_estimate(lambda b: jnp.sum(b).astype(jnp.float32), builder, jnp.float32(0.0),
                     jax.random.key(0), num_samples=8, estimator="pathwise")


@pytest.mark.parametrize("num_samples", [0, -1, 1.5, True, 2.0, jnp.int32(4)])
def test_num_samples_must_be_a_positive_int(num_samples):
  with pytest.raises(ValueError, match="num_samples must be a Python int >= 1"):
    rj.grad_estimate(jnp.sin, gaussian, GAUSS, jax.random.key(0), num_samples=num_samples)


def test_rloo_and_optimal_say_how_many_samples_they_need():
  with pytest.raises(ValueError, match="baseline='rloo' needs num_samples >= 2"):
    rj.grad_estimate(jnp.sin, gaussian, GAUSS, jax.random.key(0), num_samples=1,
                     baseline="rloo")
  for count in (0, 1, 2.5):
    with pytest.raises(ValueError, match="optimal_baseline_samples must be a Python int >= 2"):
      rj.grad_estimate(jnp.sin, gaussian, GAUSS, jax.random.key(0), num_samples=8,
                       baseline="optimal", optimal_baseline_samples=count)


@pytest.mark.parametrize("baseline", [float("nan"), float("inf"), True])
def test_a_constant_baseline_must_be_a_finite_number(baseline):
  with pytest.raises(ValueError, match="baseline must be"):
    rj.grad_estimate(jnp.sin, gaussian, GAUSS, jax.random.key(0), num_samples=8,
                     baseline=baseline)


def test_a_traced_baseline_is_still_accepted():
  f, _ = closed_form("quadratic")
  run = jax.jit(lambda b: rj.grad_estimate(f, gaussian, GAUSS, jax.random.key(0),
                                           num_samples=8, baseline=b))
  eager = rj.grad_estimate(f, gaussian, GAUSS, jax.random.key(0), num_samples=8, baseline=0.5)
  for name in GAUSS:
    np.testing.assert_allclose(run(jnp.float32(0.5))[name], eager[name], rtol=1e-5)

# --- DiCE ---

def test_dice_gets_first_and_second_derivatives_right():
  """x ~ N(mu, 1), f = x^2: d/dmu E f = 2 mu and d2/dmu2 E f = 2; the plain surrogate's
  second derivative estimates -(mu^2 + 1) instead."""
  mu0, n = 0.7, 200_000
  eps = jax.random.normal(jax.random.key(0), (n,))

  def per_sample(mu, objective):
    x = jax.lax.stop_gradient(mu + eps)
    log_p = -0.5 * (x - mu) ** 2
    return objective(log_p, x**2)

  dice = lambda mu: per_sample(mu, lambda lp, c: rj.magic_box(lp) * c)  # noqa: E731
  plain = lambda mu: per_sample(mu, lambda lp, c: lp * c)  # noqa: E731
  first = jax.jacfwd(dice)(mu0)
  second = jax.jacfwd(jax.jacfwd(dice))(mu0)
  se = lambda v: float(jnp.std(v) / np.sqrt(n))  # noqa: E731
  assert abs(float(first.mean()) - 2 * mu0) < 4 * se(first)
  assert abs(float(second.mean()) - 2.0) < 4 * se(second)
  plain_second = jax.jacfwd(jax.jacfwd(plain))(mu0)
  assert abs(float(plain_second.mean()) + (mu0**2 + 1)) < 4 * se(plain_second)
  np.testing.assert_allclose(float(rj.dice_objective(
      -0.5 * (eps[:, None] * 0) , (mu0 + eps[:, None]) ** 2, axis=1)),
      float(jnp.mean((mu0 + eps) ** 2)), rtol=1e-5)
  with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
    rj.dice_objective(jnp.zeros(3), jnp.zeros(4))


# --- VIMCO ---

@pytest.mark.slow
def test_vimco_is_unbiased_for_the_multi_sample_bound():
  """q(z) = Bernoulli(sigmoid(phi)), log p(x, z) = a_z; K = 3 samples: the exact
  E[log mean_k w_k] is a sum over the 8 joint outcomes."""
  a = jnp.array([-1.0, 0.5])
  phi0, k, m = 0.4, 3, 40_000

  def log_q(z, phi):
    return z * jax.nn.log_sigmoid(phi) + (1 - z) * jax.nn.log_sigmoid(-phi)

  def exact_bound(phi):
    total = 0.0
    for zs in itertools.product([0, 1], repeat=k):
      z = jnp.array(zs, jnp.float32)
      prob = jnp.exp(jnp.sum(log_q(z, phi)))
      log_w = a[jnp.array(zs)] - log_q(z, phi)
      total += prob * (jax.nn.logsumexp(log_w) - np.log(k))
    return total

  exact = float(jax.grad(exact_bound)(phi0))
  zs = jax.random.bernoulli(jax.random.key(0), jax.nn.sigmoid(phi0), (k, m)).astype(jnp.float32)

  def surrogate(phi):
    lq = log_q(zs, phi)
    return rj.vimco_objective(a[zs.astype(jnp.int32)] - lq, lq) * m  # sum over the batch

  per_batch = jax.vmap(lambda j: jax.grad(lambda phi: rj.vimco_objective(
      (a[zs[:, j].astype(jnp.int32)] - log_q(zs[:, j], phi))[:, None],
      log_q(zs[:, j], phi)[:, None]))(phi0))(jnp.arange(m))
  np.testing.assert_allclose(float(jax.grad(surrogate)(phi0)) / m, float(per_batch.mean()),
                             rtol=1e-4)
  stderr = float(per_batch.std() / np.sqrt(m))
  assert abs(float(per_batch.mean()) - exact) < 4 * stderr, (per_batch.mean(), exact)
  with pytest.raises(ValueError, match="K >= 2"):
    rj.vimco_objective(jnp.zeros((1, 2)), jnp.zeros((1, 2)))


# --- Relaxations ---

def test_gumbel_softmax_and_straight_through():
  logits = jnp.array([0.2, 1.0, -0.5])
  n = 40_000
  keys = jax.random.split(jax.random.key(0), n)
  soft = jax.vmap(lambda k: rj.gumbel_softmax(k, logits, 0.5))(keys)
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-5)
  hard = jax.vmap(lambda k: rj.gumbel_softmax(k, logits, 0.5, hard=True))(keys)
  assert set(np.unique(np.asarray(hard))) <= {0.0, 1.0}
  probs = np.asarray(jax.nn.softmax(logits))
  freq = np.asarray(hard.mean(0))  # argmax of logits + Gumbel is an exact sample
  assert np.all(np.abs(freq - probs) < 4 * np.sqrt(probs * (1 - probs) / n))
  st = rj.straight_through(jax.random.key(1), logits)
  assert float(st.sum()) == 1.0 and set(np.asarray(st).tolist()) <= {0.0, 1.0}
  weights = jnp.array([1.0, 2.0, 3.0])
  g_st = jax.grad(lambda lg: jnp.dot(rj.straight_through(jax.random.key(1), lg), weights))(
      logits)
  g_probs = jax.grad(lambda lg: jnp.dot(jax.nn.softmax(lg), weights))(logits)
  np.testing.assert_allclose(g_st, g_probs, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_gumbel_softmax_refuses_a_temperature_that_is_not_positive(temperature):
  with pytest.raises(ValueError, match="temperature must be finite and in \\(0, inf\\)"):
    rj.gumbel_softmax(jax.random.key(0), jnp.zeros(3), temperature)


def test_gumbel_softmax_takes_a_traced_temperature():
  logits = jnp.array([0.2, 1.0, -0.5])
  traced = jax.jit(lambda t: rj.gumbel_softmax(jax.random.key(0), logits, t))(0.5)
  np.testing.assert_allclose(traced, rj.gumbel_softmax(jax.random.key(0), logits, 0.5),
                             rtol=1e-6)
  swept = jax.vmap(lambda t: rj.gumbel_softmax(jax.random.key(0), logits, t))(
      jnp.array([0.5, 2.0]))
  assert swept.shape == (2, 3) and bool(jnp.all(jnp.isfinite(swept)))


# --- Discrete estimators: ARM, DisARM, REBAR, RELAX, unordered set ---
# Each is checked against rj.exact_gradient (enumeration) on three problems, fixed keys.

W3 = jnp.array([[0.5, -1.0, 0.3], [0.2, 0.1, -0.7], [1.0, 0.4, 0.2]])


def _float(b):
  return jnp.asarray(b).astype(jnp.float32)  # int samples, or relaxed ones for REBAR


BERNOULLI_PROBLEMS = {
    # b ~ Bernoulli(sigmoid(theta)), f = (b - 0.45)^2: gradient p (1 - p) (1 - 2 t).
    "scalar": (lambda b: (_float(b) - 0.45) ** 2,
               lambda th: distrax.Bernoulli(logits=th), jnp.float32(0.3)),
    # Three Bernoullis whose logits come from a params pytree, f non-linear in b.
    "pytree": (lambda b: jnp.sin(_float(b) @ W3 @ _float(b) + 0.3 * _float(b).sum()),
               lambda p: distrax.Bernoulli(logits=jnp.concatenate([p["a"], p["c"][None]])),
               {"a": jnp.array([0.3, -0.5]), "c": jnp.float32(1.2)}),
    # A [2, 2] batch under Independent, with an interaction term.
    "independent_2x2": (
        lambda b: (jnp.sum(_float(b) * jnp.array([[1.0, -0.5], [2.0, 0.7]])) - 1.5) ** 2
        + 3.0 * _float(b)[0, 0] * _float(b)[1, 1],
        lambda th: distrax.Independent(distrax.Bernoulli(logits=th), 2),
        jnp.array([[0.2, -1.0], [0.8, 0.0]])),
}
CATEGORICAL_PROBLEMS = {
    "bandit": (lambda a: jnp.array([6.0, 8.0, 3.0, 5.5])[a],
               lambda th: distrax.Categorical(logits=th), jnp.array([0.5, -0.3, 1.0, 0.0]), 2),
    "nonlinear": (lambda a: jnp.sin(1.3 * a) * a,
                  lambda th: distrax.Categorical(logits=th),
                  jnp.array([0.1, 0.9, -0.4, 0.3, 1.5, -1.0]), 3),
    "linear_logits": (lambda a: (a - 2.2) ** 2,
                      lambda p: distrax.Categorical(logits=p["w"] @ jnp.array([1.0, -0.5])
                                                    + p["b"]),
                      {"w": jnp.array([[0.3, 0.1], [-0.2, 0.5], [0.7, -0.3], [0.0, 0.2],
                                       [-0.6, 0.4]]), "b": jnp.array([0.1, 0.0, -0.2, 0.3, 0.0])},
                      4),
}


@functools.cache
def _exact(problem):
  """rj.exact_gradient once per problem (the tests reuse it rather than recompile it)."""
  f, build, params = {**BERNOULLI_PROBLEMS, **CATEGORICAL_PROBLEMS}[problem][:3]
  return rj.exact_gradient(f, build, params)


@pytest.mark.parametrize("problem", sorted(BERNOULLI_PROBLEMS))
@pytest.mark.parametrize("estimator", ["arm", "disarm", "rebar", "relax"])
def test_bernoulli_estimators_are_unbiased(problem, estimator):
  f, build, params = BERNOULLI_PROBLEMS[problem]
  extra = {}
  if estimator == "relax":
    shape = jnp.shape(jnp.concatenate([params["a"], params["c"][None]])) if isinstance(
        params, dict) else jnp.shape(params)
    cv = rj.relax_control_variate(f)
    phi = cv.init(jax.random.key(3), shape)
    # A non-zero network, so the learned term is exercised (at init RELAX is REBAR).
    phi["net"]["w2"] = 0.3 * jnp.ones_like(phi["net"]["w2"])
    extra = {"control_variate": cv, "cv_params": phi}
  estimate = functools.partial(rj.grad_estimate, num_samples=4, estimator=estimator, **extra)
  check = rj.check_estimator(estimate, f, build, params, jax.random.key(11), replicates=3000,
                             timing_calls=0, exact=_exact(problem))
  assert check.max_abs_bias_in_stderr < 4.5, (check.bias_in_stderr, check.exact, check.mean)
  assert jax.tree.structure(check.mean) == jax.tree.structure(params)


def test_disarm_has_no_more_variance_than_arm():
  """Dong et al. (2020): DisARM is ARM conditioned on the antithetic pair, so its variance
  is at most ARM's, per coordinate; here on every problem, with 3000 replicates each."""
  for problem, (f, build, params) in BERNOULLI_PROBLEMS.items():
    variances = {}
    for estimator in ("arm", "disarm"):
      estimate = functools.partial(rj.grad_estimate, num_samples=1, estimator=estimator)
      variances[estimator] = rj.check_estimator(
          estimate, f, build, params, jax.random.key(5), replicates=3000, timing_calls=0,
          exact=_exact(problem)).variance
    for arm, disarm in zip(jax.tree.leaves(variances["arm"]),
                           jax.tree.leaves(variances["disarm"]), strict=True):
      assert np.all(np.asarray(disarm) <= 1.05 * np.asarray(arm)), (arm, disarm)
    total = {k: sum(float(jnp.sum(v)) for v in jax.tree.leaves(t)) for k, t in variances.items()}
    assert total["disarm"] < total["arm"]


@pytest.mark.slow
@pytest.mark.parametrize("problem", sorted(CATEGORICAL_PROBLEMS))
def test_unordered_set_is_unbiased(problem):
  f, build, params, k = CATEGORICAL_PROBLEMS[problem]
  estimate = functools.partial(rj.grad_estimate, num_samples=k, estimator="unordered_set")
  check = rj.check_estimator(estimate, f, build, params, jax.random.key(7), replicates=3000,
                             timing_calls=0, exact=_exact(problem))
  assert check.max_abs_bias_in_stderr < 4.5, check
  if problem == "bandit":
    # The same k = 2 evaluations of f as RLOO: distinct samples and the built-in baseline
    # give about half its variance (1.17 against 2.22 summed over the logits).
    rloo = rj.check_estimator(functools.partial(rj.grad_estimate, num_samples=k,
                                                baseline="rloo"),
                              f, build, params, jax.random.key(7), replicates=3000,
                              timing_calls=0, exact=_exact(problem))
    assert float(jnp.sum(check.variance)) < 0.7 * float(jnp.sum(rloo.variance))


def test_unordered_set_with_all_categories_is_exact():
  """k = K: the set is the whole support, so the estimate is the exact gradient."""
  f, build, params, _ = CATEGORICAL_PROBLEMS["bandit"]
  got = jax.jit(lambda key: rj.grad_estimate(f, build, params, key, num_samples=4,
                                             estimator="unordered_set"))(jax.random.key(0))
  np.testing.assert_allclose(got, rj.exact_gradient(f, build, params), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_relax_control_variate_trains_with_optax_and_lowers_variance():
  """phi is a pytree with its own optax optimizer; descending relax_gradients' second output
  lowers the variance of the estimate on the Bernoulli toy, which stays unbiased."""
  f, build, theta = BERNOULLI_PROBLEMS["scalar"]
  cv = rj.relax_control_variate(f, hidden=8)
  phi = cv.init(jax.random.key(0), ())
  cv_opt = optax.adam(2e-2)
  cv_state = cv_opt.init(phi)

  @jax.jit
  def step(phi, cv_state, key):
    _, cv_grads = rj.relax_gradients(f, build, theta, phi, key, num_samples=4,
                                     control_variate=cv)
    updates, cv_state = cv_opt.update(cv_grads, cv_state, phi)
    return optax.apply_updates(phi, updates), cv_state

  def estimate(f, build, theta, key, phi):
    return rj.grad_estimate(f, build, theta, key, num_samples=4, estimator="relax",
                            control_variate=cv, cv_params=phi)

  # phi is an argument, so one compiled program measures it before and after training.
  checks = jax.jit(lambda phi: jax.vmap(lambda k: estimate(f, build, theta, k, phi))(
      jax.random.split(jax.random.key(9), 2000)))
  before = float(jnp.var(checks(phi)))
  for i in range(150):
    phi, cv_state = step(phi, cv_state, jax.random.key(100 + i))
  draws = checks(phi)
  assert float(jnp.var(draws)) < 0.5 * before, (before, float(jnp.var(draws)))
  exact = float(rj.exact_gradient(f, build, theta))
  assert abs(float(jnp.mean(draws)) - exact) < 4.5 * float(jnp.std(draws)) / np.sqrt(2000)
  g, _, stats = jax.jit(lambda phi: rj.relax_gradients(
      f, build, theta, phi, jax.random.key(0), num_samples=4, control_variate=cv,
      return_stats=True))(phi)
  np.testing.assert_allclose(g, stats.per_sample.mean(0), rtol=1e-6)
  values = np.asarray(stats.values)  # f at the Bernoulli samples: 0.45^2 or 0.55^2
  assert values.shape == (4,)
  assert np.all(np.isclose(values, 0.45**2) | np.isclose(values, 0.55**2)), values


def test_discrete_estimators_jit_and_vmap():
  f, build, params = BERNOULLI_PROBLEMS["pytree"]
  keys = jax.random.split(jax.random.key(0), 3)

  def estimate(key):
    return rj.grad_estimate(f, build, params, key, num_samples=2, estimator="rebar")

  out = jax.jit(jax.vmap(estimate))(keys)
  assert out["a"].shape == (3, 2) and out["c"].shape == (3,)
  single = jax.jit(estimate)(keys[1])
  np.testing.assert_allclose(out["a"][1], single["a"], rtol=1e-5, atol=1e-6)
  _, stats = jax.jit(lambda key: rj.grad_estimate(
      f, build, params, key, num_samples=8, estimator="disarm", return_stats=True))(keys[0])
  assert stats.per_sample["a"].shape == (8, 2) and stats.values.shape == (8,)


def test_discrete_estimators_say_what_they_need():
  gaussian_f, _ = closed_form("quadratic")
  for estimator in ("arm", "disarm", "rebar"):
    with pytest.raises(ValueError, match="distrax.Bernoulli"):
      rj.grad_estimate(gaussian_f, gaussian, GAUSS, jax.random.key(0), num_samples=2,
                       estimator=estimator)
  bern_f, bern, theta = BERNOULLI_PROBLEMS["scalar"]
  with pytest.raises(ValueError, match="needs control_variate"):
    rj.grad_estimate(bern_f, bern, theta, jax.random.key(0), num_samples=2, estimator="relax")
  with pytest.raises(ValueError, match="control_variate applies to 'rebar' and 'relax'"):
    rj.grad_estimate(bern_f, bern, theta, jax.random.key(0), num_samples=2, estimator="arm",
                     control_variate=rj.rebar_control_variate(bern_f))
  cat_f, cat, logits, _ = CATEGORICAL_PROBLEMS["bandit"]
  with pytest.raises(ValueError, match="num_samples <= the 4 categories"):
    rj.grad_estimate(cat_f, cat, logits, jax.random.key(0), num_samples=5,
                     estimator="unordered_set")
  with pytest.raises(ValueError, match=r"batch shape \(2,\)"):
    rj.grad_estimate(cat_f, lambda th: distrax.Categorical(logits=jnp.stack([th, th])), logits,
                     jax.random.key(0), num_samples=2, estimator="unordered_set")
  with pytest.raises(ValueError, match="return_stats needs independent samples"):
    rj.grad_estimate(cat_f, cat, logits, jax.random.key(0), num_samples=2,
                     estimator="unordered_set", return_stats=True)
