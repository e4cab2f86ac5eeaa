"""The reduction-free categorical helpers agree with distrax and sample correctly."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax._src import categorical


@pytest.mark.parametrize("num", [2, 5, categorical.UNROLL_MAX + 4])
def test_log_prob_entropy_and_frequencies_match_distrax(num):
  n = 40_000
  logits = jax.random.normal(jax.random.key(num), (num,)) * 1.5
  dist = distrax.Categorical(logits=jnp.broadcast_to(logits, (n, num)))
  index, log_prob, entropy = jax.jit(categorical.categorical_statistics)(
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
  np.testing.assert_array_equal(categorical.inverse_cdf(u, jnp.broadcast_to(probs, (4, 3))),
                                [0, 0, 2, 2])


_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
               "cumsum", "cumlogsumexp", "cummax"}


def _primitives(jaxpr) -> set[str]:
  """Every primitive in `jaxpr`, nested jaxprs (jit, custom_jvp, ...) included."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)  # a ClosedJaxpr holds a Jaxpr
      if hasattr(inner, "eqns"):
        names |= _primitives(inner)
  return names


@pytest.mark.parametrize("num", [2, 3, categorical.UNROLL_MAX])
def test_log_softmax_matches_jax_and_has_no_reduction_forward_or_backward(num):
  logits = jax.random.normal(jax.random.key(num), (7, num)) * 3.0
  logits = logits.at[0].add(80.0)  # large logits: the shift must keep it stable
  np.testing.assert_allclose(categorical.log_softmax(logits), jax.nn.log_softmax(logits),
                             rtol=1e-6, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(1), logits.shape)

  def vjp(fn):
    return lambda z: jax.vjp(fn, z)[1](cotangent)[0]

  np.testing.assert_allclose(vjp(categorical.log_softmax)(logits),
                             vjp(jax.nn.log_softmax)(logits), rtol=1e-5, atol=1e-5)
  used = _primitives(jax.make_jaxpr(vjp(categorical.log_softmax))(logits).jaxpr)
  assert not used & _REDUCTIONS, used & _REDUCTIONS
  # The check itself can fail: jax.nn.log_softmax reduces.
  assert _primitives(jax.make_jaxpr(jax.nn.log_softmax)(logits).jaxpr) & _REDUCTIONS


def test_log_softmax_falls_back_to_jax_for_many_categories():
  logits = jax.random.normal(jax.random.key(0), (3, categorical.UNROLL_MAX + 1))
  np.testing.assert_allclose(categorical.log_softmax(logits), jax.nn.log_softmax(logits),
                             rtol=1e-6, atol=1e-6)


def test_column_sums_equal_separate_sums_and_carry_gradients():
  a = jax.random.normal(jax.random.key(0), (5, 4))
  flags = jnp.arange(20).reshape(5, 4) % 3 == 0
  counts = jnp.arange(20, dtype=jnp.int32).reshape(5, 4)
  sums = categorical.column_sums({"a": a, "flags": flags, "counts": counts})
  np.testing.assert_allclose(sums["a"], jnp.sum(a), rtol=1e-6)
  assert float(sums["flags"]) == 7.0 and float(sums["counts"]) == 190.0
  grad = jax.grad(lambda x: categorical.column_sums({"x": x, "x2": x * x})["x2"])(a)
  np.testing.assert_allclose(grad, 2 * a, rtol=1e-6)


@pytest.mark.parametrize("num", [3, categorical.UNROLL_MAX + 2])
def test_impossible_categories_give_finite_entropy_and_gradients(num):
  logits = jnp.zeros((num,)).at[0].set(-jnp.inf)  # a masked action
  log_probs = categorical.log_softmax(logits[None])
  log_prob, entropy = categorical.categorical_score(log_probs, jnp.array([1]))
  np.testing.assert_allclose(entropy, np.log(num - 1), rtol=1e-6)
  np.testing.assert_allclose(log_prob, -np.log(num - 1), rtol=1e-6)
  grad = jax.grad(lambda z: categorical.categorical_score(
      categorical.log_softmax(z[None]), jnp.array([1]))[1].sum())(logits.at[0].set(-1e30))
  assert np.all(np.isfinite(grad))
  from reinforce_jax.rl.policies import Categorical
  from reinforce_jax.rl.rollouts import score

  _, ent = score(Categorical(probs=jnp.array([0.0, 0.3, 0.7])), jnp.array(1))
  np.testing.assert_allclose(ent, distrax.Categorical(probs=jnp.array([0.0, 0.3, 0.7])).entropy(),
                             rtol=1e-5)


def test_column_sums_keep_float64_under_x64():
  with jax.enable_x64(True):
    x = jnp.arange(4, dtype=jnp.float64) / 3
    sums = categorical.column_sums({"x": x, "count": jnp.ones(4, jnp.int32)})
    assert sums["x"].dtype == jnp.float64 and sums["count"].dtype == jnp.float64
    np.testing.assert_allclose(float(sums["x"]), 2.0, rtol=1e-15)
  assert categorical.column_sums({}) == {}
  assert categorical.column_sums({"a": jnp.ones(3, jnp.bfloat16)})["a"].dtype == jnp.float32
