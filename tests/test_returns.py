import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.rl.returns import (
    discounted_returns,
    gae_advantages,
    lambda_returns,
    normalize_advantages,
)


def reference_returns(reward, terminated, truncated, gamma, bootstrap, last_value):
  """Plain-Python reward-to-go, one environment column at a time."""
  T, B = reward.shape
  out = np.zeros((T, B))
  for b in range(B):
    following = last_value[b]
    for t in reversed(range(T)):
      if terminated[t, b]:
        continuation = 0.0
      elif truncated[t, b]:
        continuation = bootstrap[t, b]
      else:
        continuation = following
      out[t, b] = reward[t, b] + gamma * continuation
      following = out[t, b]
  return out


@pytest.mark.parametrize("gamma", [0.0, 0.9, 1.0])
def test_matches_reference(gamma):
  rng = np.random.default_rng(0)
  T, B = 13, 5
  reward = rng.normal(size=(T, B)).astype(np.float32)
  terminated = rng.random((T, B)) < 0.15
  truncated = rng.random((T, B)) < 0.15  # some steps are both: terminated wins
  bootstrap = rng.normal(size=(T, B)).astype(np.float32)
  last_value = rng.normal(size=(B,)).astype(np.float32)
  got = jax.jit(discounted_returns, static_argnames=())(
      reward, terminated, truncated, gamma=gamma,
      bootstrap_value_t=bootstrap, last_value=last_value)
  want = reference_returns(reward, terminated, truncated, gamma, bootstrap, last_value)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_defaults_cut_at_truncation_and_rollout_end():
  reward = jnp.ones((4, 1))
  terminated = jnp.zeros((4, 1), bool)
  truncated = jnp.array([[False], [True], [False], [False]])
  got = discounted_returns(reward, terminated, truncated, gamma=0.5)
  np.testing.assert_allclose(got[:, 0], [1.5, 1.0, 1.5, 1.0])


def test_terminated_and_truncated_are_kept_apart():
  reward = jnp.zeros((1, 2))
  ends = jnp.array([[True, False]])
  bootstrap = jnp.full((1, 2), 10.0)
  got = discounted_returns(reward, ends, ~ends, gamma=1.0, bootstrap_value_t=bootstrap)
  np.testing.assert_allclose(got, [[0.0, 10.0]])


def test_shape_mismatch_raises():
  with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
    discounted_returns(jnp.zeros((4, 2)), jnp.zeros((4, 3), bool), jnp.zeros((4, 2), bool),
                       gamma=0.9)
  with pytest.raises(ValueError, match="last_value"):
    discounted_returns(jnp.zeros((4, 2)), jnp.zeros((4, 2), bool), jnp.zeros((4, 2), bool),
                       gamma=0.9, last_value=jnp.zeros(3))


# --- GAE and lambda-returns ---

def reference_gae(reward, value, terminated, truncated, bootstrap, last_value, gamma, lam):
  T, B = reward.shape
  adv = np.zeros((T, B))
  for b in range(B):
    following = 0.0
    for t in reversed(range(T)):
      if terminated[t, b]:
        cont = 0.0
      elif truncated[t, b]:
        cont = bootstrap[t, b]
      else:
        cont = value[t + 1, b] if t + 1 < T else last_value[b]
      delta = reward[t, b] + gamma * cont - value[t, b]
      done = terminated[t, b] or truncated[t, b]
      adv[t, b] = delta + (0.0 if done else gamma * lam * following)
      following = adv[t, b]
  return adv


def reference_lambda_returns(reward, value, terminated, truncated, bootstrap, last_value, gamma,
                             lam):
  """The lambda-return recursion itself (not via GAE)."""
  T, B = reward.shape
  out = np.zeros((T, B))
  for b in range(B):
    following = last_value[b]
    for t in reversed(range(T)):
      next_value = value[t + 1, b] if t + 1 < T else last_value[b]
      if terminated[t, b]:
        mixed = 0.0
      elif truncated[t, b]:
        mixed = bootstrap[t, b]
      else:
        mixed = (1 - lam) * next_value + lam * following
      out[t, b] = reward[t, b] + gamma * mixed
      following = out[t, b]
  return out


def _random_rollout(seed, T=17, B=4, p_end=0.15):
  rng = np.random.default_rng(seed)
  f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
  return (f32(T, B), f32(T, B), rng.random((T, B)) < p_end, rng.random((T, B)) < p_end,
          f32(T, B), f32(B))


@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.5, 0.7)])
def test_gae_matches_reference_and_lambda_returns(gamma, lam):
  reward, value, terminated, truncated, bootstrap, last = _random_rollout(1)
  adv, targets = jax.jit(gae_advantages, static_argnames=())(
      reward, value, terminated, truncated, last, gamma=gamma, lambda_=lam,
      bootstrap_value_t=bootstrap)
  want = reference_gae(reward, value, terminated, truncated, bootstrap, last, gamma, lam)
  np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)
  ret = lambda_returns(reward, value, terminated, truncated, last, gamma=gamma, lambda_=lam,
                       bootstrap_value_t=bootstrap)
  want_ret = reference_lambda_returns(reward, value, terminated, truncated, bootstrap, last,
                                      gamma, lam)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(targets, want_ret, rtol=1e-5, atol=1e-5)


def test_lambda_one_gives_discounted_returns_minus_values():
  reward, value, terminated, truncated, bootstrap, last = _random_rollout(2)
  adv, _ = gae_advantages(reward, value, terminated, truncated, last, gamma=0.97, lambda_=1.0,
                          bootstrap_value_t=bootstrap)
  ret = discounted_returns(reward, terminated, truncated, gamma=0.97,
                           bootstrap_value_t=bootstrap, last_value=last)
  np.testing.assert_allclose(adv, ret - value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_parity_with_rlax_without_truncation(lam):
  rlax = pytest.importorskip("rlax")
  reward, value, terminated, _, _, last = _random_rollout(3)
  truncated = np.zeros_like(terminated)
  gamma = 0.98
  adv, _ = gae_advantages(reward, value, terminated, truncated, last, gamma=gamma, lambda_=lam)
  ret = lambda_returns(reward, value, terminated, truncated, last, gamma=gamma, lambda_=lam)
  disc = discounted_returns(reward, terminated, truncated, gamma=gamma, last_value=last)
  discount = (gamma * (1.0 - terminated)).astype(np.float32)
  values = np.concatenate([value, last[None]], axis=0)
  for b in range(reward.shape[1]):
    want_adv = rlax.truncated_generalized_advantage_estimation(
        reward[:, b], discount[:, b], lam, values[:, b])
    want_ret = rlax.lambda_returns(reward[:, b], discount[:, b], values[1:, b], lam)
    want_disc = rlax.discounted_returns(
        reward[:, b], discount[:, b], np.full(reward.shape[0], last[b], np.float32))
    np.testing.assert_allclose(adv[:, b], want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret[:, b], want_ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(disc[:, b], want_disc, rtol=1e-5, atol=1e-5)


def test_normalize_advantages():
  adv = jnp.array([[1.0, 2.0], [3.0, 6.0]])
  out = normalize_advantages(adv)
  np.testing.assert_allclose(float(out.mean()), 0.0, atol=1e-6)
  np.testing.assert_allclose(float(out.std()), 1.0, rtol=1e-5)


# --- gamma and lambda: checked when concrete, passed through when traced ------------

@pytest.mark.parametrize("gamma", [1.5, -0.1, float("nan"), np.float32(1.01)])
def test_discounted_returns_refuses_gamma_outside_the_unit_interval(gamma):
  reward, _, terminated, truncated, _, _ = _random_rollout(3, T=3, B=2)
  with pytest.raises(ValueError, match=r"gamma must be finite and in \[0, 1\]"):
    discounted_returns(reward, terminated, truncated, gamma=gamma)


@pytest.mark.parametrize("name, gamma, lam", [
    ("gamma", 1.5, 0.9), ("gamma", -1.0, 0.9), ("lambda_", 0.9, 1.5), ("lambda_", 0.9, -0.1),
    ("lambda_", 0.9, float("inf")), ("gamma", "0.9", 0.9)])
def test_gae_and_lambda_returns_refuse_gamma_and_lambda_outside_the_unit_interval(
    name, gamma, lam):
  reward, value, terminated, truncated, _, last = _random_rollout(4, T=3, B=2)
  for fn in (gae_advantages, lambda_returns):
    with pytest.raises(ValueError, match=f"{name} must be"):
      fn(reward, value, terminated, truncated, last, gamma=gamma, lambda_=lam)


def test_traced_gamma_and_lambda_still_work_under_jit_and_vmap():
  """In sweeps `algorithms.traced` carries traced discounts: no check, same numbers."""
  reward, value, terminated, truncated, bootstrap, last = _random_rollout(5)
  gammas, lams = jnp.array([0.9, 0.99]), jnp.array([0.0, 0.95])

  def both(gamma, lam):
    returns = discounted_returns(reward, terminated, truncated, gamma=gamma,
                                 bootstrap_value_t=bootstrap, last_value=last)
    advantages, _ = gae_advantages(reward, value, terminated, truncated, last, gamma=gamma,
                                   lambda_=lam, bootstrap_value_t=bootstrap)
    return returns, advantages

  swept = jax.jit(jax.vmap(both))(gammas, lams)
  for i in range(2):
    want = both(float(gammas[i]), float(lams[i]))
    for got, expected in zip(swept, want, strict=True):
      np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      swept[0][1], reference_returns(reward, terminated, truncated, 0.99, bootstrap, last),
      rtol=1e-5, atol=1e-5)


def test_normalize_advantages_refuses_a_negative_eps():
  with pytest.raises(ValueError, match=r"eps must be finite and in \[0, inf\)"):
    normalize_advantages(jnp.ones(4), eps=-1e-8)
