import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax import discounted_returns


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
