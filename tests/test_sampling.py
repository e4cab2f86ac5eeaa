"""The reduction-free categorical helpers agree with distrax and sample correctly."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax import _sampling


@pytest.mark.parametrize("num", [2, 5, _sampling.UNROLL_MAX + 4])
def test_log_prob_entropy_and_frequencies_match_distrax(num):
  n = 40_000
  logits = jax.random.normal(jax.random.key(num), (num,)) * 1.5
  dist = distrax.Categorical(logits=jnp.broadcast_to(logits, (n, num)))
  index, log_prob, entropy = jax.jit(_sampling.categorical_statistics)(
      dist.logits, jax.random.key(1))
  assert index.dtype == jnp.int32 and index.shape == (n,)
  np.testing.assert_allclose(log_prob, dist.log_prob(index), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(entropy, dist.entropy(), rtol=1e-5)
  freq = np.bincount(np.asarray(index), minlength=num) / n
  probs = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_array_less(np.abs(freq - probs), 4 * np.sqrt(probs * (1 - probs) / n) + 1e-9)


def test_log_prob_gradient_matches_distrax():
  logits = jnp.array([[0.3, -1.0, 2.0], [1.0, 1.0, -0.5]])
  index = jnp.array([2, 0])

  def ours(z):
    log_probs = distrax.Categorical(logits=z).logits
    return jnp.sum(jnp.where(index == 0, log_probs[:, 0],
                             jnp.where(index == 1, log_probs[:, 1], log_probs[:, 2])))

  def reference(z):
    return jnp.sum(distrax.Categorical(logits=z).log_prob(index))

  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits), rtol=1e-6)


def test_inverse_cdf_edges():
  probs = jnp.array([0.25, 0.0, 0.75])
  u = jnp.array([0.0, 0.2499, 0.25, 0.9999])
  np.testing.assert_array_equal(_sampling.inverse_cdf(u, jnp.broadcast_to(probs, (4, 3))),
                                [0, 0, 2, 2])
