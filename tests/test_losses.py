"""reinforce_loss: value, stop_gradient, shape checks, and the estimator's statistics."""

import distrax
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_linear_params

import reinforce_jax as rj
from reinforce_jax import reinforce_loss
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.rl.rollouts import act


def test_value_is_negative_mean_of_logprob_times_advantage():
  log_prob = jnp.array([-0.1, -2.0, -0.5])
  reward = jnp.array([1.0, 0.0, 3.0])
  np.testing.assert_allclose(reinforce_loss(log_prob, reward),
                             -np.mean(log_prob * reward), rtol=1e-6)
  np.testing.assert_allclose(reinforce_loss(log_prob, reward, 0.5),
                             -np.mean(log_prob * (reward - 0.5)), rtol=1e-6)
  baseline = jnp.array([0.2, 0.1, 1.0])
  np.testing.assert_allclose(reinforce_loss(log_prob, reward, baseline),
                             -np.mean(log_prob * (reward - baseline)), rtol=1e-6)


def test_weights_give_a_weighted_mean_and_mask_entries():
  log_prob = jnp.array([-0.1, -2.0, -0.5, -7.0])
  reward = jnp.array([1.0, 2.0, 3.0, 100.0])
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])
  np.testing.assert_allclose(reinforce_loss(log_prob, reward, weights=mask),
                             reinforce_loss(log_prob[:3], reward[:3]), rtol=1e-6)
  assert reinforce_loss(log_prob, reward, weights=jnp.zeros(4)) == 0.0


def test_a_mask_drops_entries_whatever_they_hold():
  """Padding and finished episodes hold nan rewards and -inf log-probs: once a nan loss."""
  log_prob = jnp.array([-0.1, -2.0, -0.5, -jnp.inf, jnp.nan])
  reward = jnp.array([1.0, 2.0, 3.0, jnp.nan, jnp.inf])
  mask = jnp.array([True, True, True, False, False])
  want = reinforce_loss(log_prob[:3], reward[:3], 0.5)
  grad_want = jax.grad(reinforce_loss)(log_prob[:3], reward[:3], 0.5)
  for kwargs in ({"mask": mask}, {"mask": mask.astype(jnp.float32)}, {"weights": mask},
                 {"weights": mask.astype(jnp.float32)},
                 {"mask": mask, "weights": jnp.array([1.0, 1.0, 1.0, jnp.nan, -1.0])}):
    loss, grad = jax.value_and_grad(reinforce_loss)(log_prob, reward, 0.5, **kwargs)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_allclose(grad[:3], grad_want, rtol=1e-6)
    np.testing.assert_array_equal(grad[3:], 0.0)
  assert reinforce_loss(log_prob, reward, mask=jnp.zeros(5, bool)) == 0.0


@pytest.mark.parametrize("mask", [[1.0, 2.0, 0.0], [1.0, -1.0, 1.0], [0.5, 1.0, 1.0],
                                  [1.0, np.nan, 0.0]])
def test_a_concrete_mask_must_hold_zeros_and_ones(mask):
  """`2 * mask` or a -1 entry once rescaled the loss without a word."""
  with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
    reinforce_loss(jnp.full(3, -0.5), jnp.ones(3), mask=jnp.array(mask))


def test_weights_and_mask_combine_into_a_weighted_mean_of_the_kept_entries():
  log_prob, reward = jnp.array([-1.0, -2.0, -3.0]), jnp.array([1.0, 1.0, 1.0])
  loss = reinforce_loss(log_prob, reward, mask=jnp.array([1, 1, 0]),
                        weights=jnp.array([1.0, 3.0, 5.0]))
  np.testing.assert_allclose(loss, (1.0 * 1 + 2.0 * 3) / 4, rtol=1e-6)


def test_gradient_wrt_reward_and_baseline_is_exactly_zero():
  log_prob = jnp.array([-0.3, -1.2, -0.7])
  reward, baseline = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.1, 0.2, 0.3])
  g_reward, g_baseline = jax.grad(reinforce_loss, argnums=(1, 2))(log_prob, reward, baseline)
  assert np.all(np.asarray(g_reward) == 0.0) and np.all(np.asarray(g_baseline) == 0.0)
  # A copy without stop_gradient leaks gradient into both: the check above can fail.
  leaky = lambda lp, r, b: -jnp.mean(lp * (r - b))  # noqa: E731
  g_reward, g_baseline = jax.grad(leaky, argnums=(1, 2))(log_prob, reward, baseline)
  assert np.all(np.asarray(g_reward) != 0.0) and np.all(np.asarray(g_baseline) != 0.0)


def test_parameters_get_gradient_only_through_log_prob():
  """If the reward also depends on theta, only the score term may be differentiated."""
  def parts(theta):
    log_prob = jnp.log(jax.nn.sigmoid(theta * jnp.array([1.0, -1.0, 2.0])))
    reward = theta**2 * jnp.array([1.0, 2.0, 3.0])  # differentiable on purpose
    return log_prob, reward

  def surrogate(theta):
    return reinforce_loss(*parts(theta))

  def score_only(theta):
    log_prob, reward = parts(theta)
    return -jnp.mean(log_prob * jax.lax.stop_gradient(reward))

  def leaky(theta):
    log_prob, reward = parts(theta)
    return -jnp.mean(log_prob * reward)

  theta = 0.7
  assert jax.grad(surrogate)(theta) == jax.grad(score_only)(theta)
  assert not np.isclose(jax.grad(surrogate)(theta), jax.grad(leaky)(theta))


@pytest.mark.parametrize(
    "log_prob_shape, reward_shape, baseline_shape",
    [((4,), (4, 1), None), ((3, 2), (2, 3), None), ((4,), (4,), (2,)), ((8, 4), (8, 4), (4,))],
)
def test_mismatched_shapes_raise_naming_both(log_prob_shape, reward_shape, baseline_shape):
  baseline = None if baseline_shape is None else jnp.zeros(baseline_shape)
  other = reward_shape if baseline_shape is None else baseline_shape
  with pytest.raises(ValueError) as info:
    reinforce_loss(jnp.zeros(log_prob_shape), jnp.zeros(reward_shape), baseline)
  message = str(info.value)
  assert str(other) in message and (str(log_prob_shape) in message or str(reward_shape) in message)
  # The same check fires while tracing under jit.
  with pytest.raises(ValueError, match="shape"):
    jax.jit(reinforce_loss)(jnp.zeros(log_prob_shape), jnp.zeros(reward_shape), baseline)


def test_mismatched_weights_and_integer_log_prob_raise():
  with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
    reinforce_loss(jnp.zeros(3), jnp.zeros(3), weights=jnp.ones(4))
  with pytest.raises(ValueError, match="floating"):
    reinforce_loss(jnp.zeros(3, jnp.int32), jnp.zeros(3))



@pytest.mark.parametrize("baseline", [float("nan"), float("inf"), jnp.array([0.0, jnp.nan, 1.0])])
def test_a_concrete_baseline_must_be_finite(baseline):
  with pytest.raises(ValueError, match="baseline must be finite"):
    reinforce_loss(jnp.full(3, -0.5), jnp.ones(3), baseline)


@pytest.mark.parametrize("weights", [[1.0, -1.0, 1.0], [1.0, np.nan, 1.0], [np.inf, 1.0, 1.0]])
def test_concrete_weights_must_be_finite_and_non_negative(weights):
  """A negative weight used to flip that entry's gradient without a word."""
  with pytest.raises(ValueError, match=r"weights must be finite and in \[0, inf\)"):
    reinforce_loss(jnp.full(3, -0.5), jnp.ones(3), weights=jnp.array(weights))


def test_bool_masks_and_traced_weights_and_baselines_are_still_accepted():
  log_prob, reward = jnp.array([-0.1, -2.0, -0.5]), jnp.array([1.0, 2.0, 3.0])
  mask = jnp.array([True, False, True])
  want = reinforce_loss(log_prob, reward, 0.5, weights=mask.astype(jnp.float32))
  np.testing.assert_allclose(reinforce_loss(log_prob, reward, 0.5, weights=mask), want)
  traced = jax.jit(lambda b, w: reinforce_loss(log_prob, reward, b, weights=w))
  np.testing.assert_allclose(traced(0.5, mask.astype(jnp.float32)), want, rtol=1e-6)
  np.testing.assert_allclose(want, -np.mean(np.array([-0.1, -0.5]) * np.array([0.5, 2.5])),
                             rtol=1e-6)


@pytest.mark.parametrize("clip_eps", [-0.1, float("nan")])
def test_ppo_refuses_a_concrete_clip_eps_that_is_negative_or_not_finite(clip_eps):
  """A negative range inverts the clip interval and silently changes the loss."""
  from reinforce_jax.core.losses import ppo_clip_loss

  with pytest.raises(ValueError, match="clip_eps must be finite"):
    ppo_clip_loss(jnp.zeros(3), jnp.zeros(3), jnp.ones(3), clip_eps=clip_eps)
  loss, _ = jax.jit(lambda e: ppo_clip_loss(jnp.zeros(3), jnp.zeros(3), jnp.ones(3),
                                            clip_eps=e))(0.2)  # a traced one is accepted
  assert float(loss) == -1.0


# `baselines.ema_update` feeds this loss; its test sits here because tests/test_baselines.py
# belongs to another change.
@pytest.mark.parametrize("decay", [-0.1, 1.5, float("nan"), True])
def test_ema_update_refuses_a_concrete_decay_outside_the_unit_interval(decay):
  from reinforce_jax import baselines

  with pytest.raises(ValueError, match="decay must be"):
    baselines.ema_update(jnp.float32(0.0), jnp.ones(4), decay=decay)
  traced = jax.jit(lambda d: baselines.ema_update(jnp.float32(0.0), jnp.ones(4), decay=d))
  np.testing.assert_allclose(traced(jnp.float32(0.75)), 0.25, rtol=1e-6)

# --- The estimator's statistics on the seed's bandit, against closed forms. ---

def _exact_moments(policy, params, env_params, baseline):
  """Mean and per-coordinate variance of the per-episode score-function estimate
  g(c, a) = grad log pi(a | x_c) * (R[c, a] - b), by enumerating every (c, a)."""
  contexts, rewards, probs_c = env_params.contexts, env_params.rewards, env_params.context_probs

  def log_pi(p, c, a):
    return policy.apply(p, contexts[c]).log_prob(a)

  flat = lambda tree: jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])  # noqa: E731
  outcomes = [(c, a) for c in range(rewards.shape[0]) for a in range(rewards.shape[1])]
  weights = jnp.array([probs_c[c] * jnp.exp(log_pi(params, c, a)) for c, a in outcomes])
  grads = jnp.stack([flat(jax.grad(log_pi)(params, c, a)) * (rewards[c, a] - baseline)
                     for c, a in outcomes])
  mean = weights @ grads
  variance = weights @ grads**2 - mean**2
  return mean, variance


def _sampled_gradients(policy, params, env, key, n, baseline):
  """Per-episode gradients of the surrogate (negated: ascent direction)."""
  key_reset, key_action = jax.random.split(key)
  obs, state = jax.vmap(env.reset)(jax.random.split(key_reset, n))
  actions = policy.apply(params, obs).sample(seed=key_action)
  _, _, reward, *_ = jax.vmap(env.step)(jax.random.split(key, n), state, actions)

  def surrogate_grad(p, o, a, r):
    return jax.grad(lambda q: reinforce_loss(policy.apply(q, o).log_prob(a), r, baseline))(p)

  grads = jax.vmap(lambda o, a, r: surrogate_grad(params, o[None], a[None], r[None]))(
      obs, actions, reward)
  flat = jnp.concatenate([x.reshape(n, -1) for x in jax.tree.leaves(grads)], axis=1)
  batch = surrogate_grad(params, obs, actions, reward)
  return -flat, -jnp.concatenate([x.ravel() for x in jax.tree.leaves(batch)])


def _expected_reward_grad(policy, params, env_params):
  def expected(p):
    probs = policy.apply(p, env_params.contexts).probs
    return ContextualBandit.expected_reward(probs, env_params)
  grad = jax.grad(expected)(params)
  return jnp.concatenate([x.ravel() for x in jax.tree.leaves(grad)])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_score_function_gradient_is_unbiased(bandit, linear_policy, seed, baseline):
  """Mean of sampled gradients == grad of the exact expected reward (4 standard errors)."""
  n = 20_000
  params = random_linear_params(jax.random.key(100 + seed))
  exact = _expected_reward_grad(linear_policy, params, bandit.default_params)
  per_episode, batch = _sampled_gradients(
      linear_policy, params, bandit, jax.random.key(seed), n, baseline)
  mean = per_episode.mean(axis=0)
  stderr = per_episode.std(axis=0) / np.sqrt(n)
  assert np.all(np.abs(mean - exact) < 4 * stderr + 1e-6), (mean, exact, stderr)
  # Right normalisation: the batch loss's gradient is the mean, not the sum.
  np.testing.assert_allclose(batch, mean, rtol=2e-3, atol=1e-6)
  # And the enumerated mean of the estimator is the exact gradient (the identity itself).
  enumerated, _ = _exact_moments(linear_policy, params, bandit.default_params, baseline)
  np.testing.assert_allclose(enumerated, exact, rtol=1e-5, atol=1e-7)


def test_constant_baseline_lowers_variance(bandit, linear_policy):
  """Exact variance by enumeration, and the sampled variance agrees with it."""
  n = 20_000
  params = random_linear_params(jax.random.key(7))
  probs = linear_policy.apply(params, bandit.default_params.contexts).probs
  mean_reward = float(ContextualBandit.expected_reward(probs, bandit.default_params))
  _, var_plain = _exact_moments(linear_policy, params, bandit.default_params, 0.0)
  _, var_base = _exact_moments(linear_policy, params, bandit.default_params, mean_reward)
  assert float(var_base.sum()) < 0.8 * float(var_plain.sum())
  for baseline, exact_var in [(0.0, var_plain), (mean_reward, var_base)]:
    sampled, _ = _sampled_gradients(linear_policy, params, bandit, jax.random.key(3), n, baseline)
    np.testing.assert_allclose(sampled.var(axis=0), exact_var, rtol=0.05, atol=1e-6)


@pytest.mark.slow  # a learning run, ~9 s; make test-slow runs it
def test_gradient_step_increases_expected_reward(bandit, linear_policy):
  """Right sign: descending the surrogate ascends the expected reward."""
  params = random_linear_params(jax.random.key(11))
  env_params = bandit.default_params

  def expected(p):
    return ContextualBandit.expected_reward(
        linear_policy.apply(p, env_params.contexts).probs, env_params)

  _, batch = _sampled_gradients(linear_policy, params, bandit, jax.random.key(5), 4096, 0.0)
  flat_params = jnp.concatenate([x.ravel() for x in jax.tree.leaves(params)])
  unravel = jax.flatten_util.ravel_pytree(params)[1]
  before = expected(params)
  after = expected(unravel(flat_params + 0.5 * batch))
  assert after > before


# --- Gaussian score function vs the closed form, and the sample_and_log_prob trap ---

def test_gaussian_score_function_gradient_matches_closed_form():
  """x ~ N(mu, sigma^2), f = (x - k)^2: d/dmu E f = 2 (mu - k), d/dsigma E f = 2 sigma."""
  mu, sigma, k, n = 0.7, 1.3, 0.2, 200_000

  theta = jnp.array([mu, sigma])
  # The library's path: act() samples n draws, cuts them, scores them.
  def surrogate(th):
    dist = distrax.Normal(jnp.full((n,), th[0]), jnp.full((n,), th[1]))
    _, x, log_prob, _ = act(dist, jax.random.key(1))
    return -reinforce_loss(log_prob, (x - k) ** 2), x

  batch_grad, x = jax.grad(surrogate, has_aux=True)(theta)
  per_sample = jnp.stack([(x - mu) / sigma**2 * (x - k) ** 2,
                          ((x - mu) ** 2 - sigma**2) / sigma**3 * (x - k) ** 2], axis=1)
  np.testing.assert_allclose(batch_grad, per_sample.mean(0), rtol=1e-3)
  exact = np.array([2 * (mu - k), 2 * sigma])
  stderr = per_sample.std(0) / np.sqrt(n)
  assert np.all(np.abs(np.asarray(batch_grad) - exact) < 4 * stderr), (batch_grad, exact)


def test_sample_and_log_prob_trap():
  """distrax computes log_prob from the standard-normal noise: zero gradient in loc."""
  def trap(loc):
    x, log_prob = distrax.Normal(loc, 1.0).sample_and_log_prob(
        seed=jax.random.key(0), sample_shape=(1000,))
    return -reinforce_loss(log_prob, (x - 0.2) ** 2)

  def right(loc):
    dist = distrax.Normal(loc, 1.0)
    _, x, log_prob, _ = act(dist, jax.random.key(0))
    return -reinforce_loss(log_prob, (x - 0.2) ** 2)

  assert float(jax.grad(trap)(0.7)) == 0.0
  assert float(jax.grad(lambda loc: right(jnp.full((1000,), loc)))(0.7)) != 0.0


def test_clipped_value_loss_closed_forms_and_gradients():
  target, old = jnp.array([1.0]), jnp.array([0.0])

  def loss(v):
    return rj.clipped_value_loss(v, old, target, clip_eps=0.2)

  # Towards the target beyond the range: the clipped error (0.2 - 1)^2 is the
  # larger one, and it does not depend on v: loss 0.32, gradient 0.
  v = jnp.array([0.5])
  np.testing.assert_allclose(loss(v), 0.5 * 0.64, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(v), [0.0], atol=1e-7)
  # Away from the target: the unclipped error is the larger; its gradient v - R.
  v = jnp.array([-0.5])
  np.testing.assert_allclose(loss(v), 0.5 * 2.25, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(v), [-1.5], rtol=1e-6)
  # Inside the range it is value_loss exactly, gradient included.
  v = jnp.array([0.1])
  np.testing.assert_allclose(loss(v), rj.value_loss(v, target), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(v), jax.grad(lambda x: rj.value_loss(x, target))(v),
                             rtol=1e-6)
  # The old value and the target are constants.
  grads = jax.grad(lambda o, t: rj.clipped_value_loss(jnp.array([0.5]), o, t, clip_eps=0.2),
                   argnums=(0, 1))(old, target)
  np.testing.assert_allclose(grads, [[0.0], [0.0]], atol=1e-7)


def test_clipped_value_loss_checks_shapes_and_range():
  with pytest.raises(ValueError, match="shapes must match"):
    rj.clipped_value_loss(jnp.zeros(3), jnp.zeros(2), jnp.zeros(3), clip_eps=0.2)
  with pytest.raises(ValueError, match="clip_eps"):
    rj.clipped_value_loss(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), clip_eps=-0.1)


def test_bfloat16_values_pass_the_number_checks():
  lp = jnp.ones(3, jnp.bfloat16)
  loss = reinforce_loss(lp, lp, baseline=jnp.full(3, 0.5, jnp.bfloat16),
                        weights=jnp.ones(3, jnp.bfloat16))
  assert loss.dtype == jnp.bfloat16 and np.isfinite(float(loss))
  with pytest.raises(ValueError, match="baseline"):
    reinforce_loss(lp, lp, baseline=jnp.full(3, jnp.inf, jnp.bfloat16))
