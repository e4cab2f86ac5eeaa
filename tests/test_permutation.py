"""`prng.permutation`: a bijection, uniform over orders, sorted as one array, and PPO's shuffle."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import reinforce_jax as rj
from reinforce_jax import algorithms, prng
from reinforce_jax.envs import CartPole
from reinforce_jax.rl.policies import CategoricalPolicy

ON_CPU = jax.default_backend() == "cpu"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 100, 513, 4096, 2**18 + 1])
def test_it_is_a_permutation(n):
  order = np.asarray(jax.jit(lambda k: prng.permutation(k, n))(jax.random.key(n)))
  assert order.dtype == np.int32 and order.shape == (n,)
  np.testing.assert_array_equal(np.sort(order), np.arange(n))


def _orders(draw, n, num):
  keys = jax.random.split(jax.random.key(2024), num)
  return np.asarray(jax.jit(jax.vmap(lambda k: draw(k, n)))(keys))


def _chi_square_of_orders(orders, n):
  """p-value of the counts of each of the n! orders against equal frequencies."""
  index = {order: i for i, order in enumerate(__import__("itertools").permutations(range(n)))}
  counts = np.bincount([index[tuple(o)] for o in orders], minlength=math.factorial(n))
  return stats.chisquare(counts).pvalue


@pytest.mark.parametrize("n", [3, 4, 5])
def test_every_order_is_equally_likely(n):
  orders = _orders(prng.permutation, n, 400 * math.factorial(n))
  assert _chi_square_of_orders(orders, n) > 1e-4


def test_each_element_is_equally_likely_at_each_position():
  n, num = 50, 4000
  orders = _orders(prng.permutation, n, num)
  counts = np.zeros((n, n))
  np.add.at(counts, (orders, np.arange(n)[None, :]), 1)  # [element, position]
  chi2 = np.sum((counts - num / n) ** 2 / (num / n))
  assert stats.chi2.sf(chi2, (n - 1) ** 2) > 1e-4


def test_the_order_tests_reject_a_shuffle_whose_digits_tie():
  """Two random bits a round leave ties, kept in position order: the tests see the bias."""
  def tied(key, n):
    return prng._packed_permutation(key, n, random_bits=2, position_bits=30)
  assert _chi_square_of_orders(_orders(tied, 4, 400 * 24), 4) < 1e-6


@pytest.mark.skipif(not ON_CPU, reason="the packed sorts are the CPU path")
@pytest.mark.parametrize("n, rounds", [(1000, 2), (2**18, 5)])
def test_only_single_array_sorts_are_compiled(n, rounds):
  def sorts(draw):
    text = jax.jit(lambda k: draw(k, n)).lower(jax.random.key(0)).compile().as_text()
    return [line for line in text.splitlines() if " sort(" in line]

  ours = sorts(prng.permutation)
  assert len(ours) == rounds
  assert all("= u32[" in line and "(u32" not in line.split("=")[1].split("sort")[0]
             for line in ours), ours
  # jax.random.permutation sorts (key, position) pairs: tuples, which the check tells apart.
  assert all("= (u32[" in line for line in sorts(jax.random.permutation))


def test_at_least_as_many_random_bits_as_jax_draws():
  for n in (2, 1000, 2**16, 2**18, 2**20, prng.PACKED_MAX):
    position_bits = (n - 1).bit_length()
    jax_bits = 32 * math.ceil(3 * math.log(n) / math.log(2**32 - 1))
    text = jax.jit(lambda k, n=n: prng.permutation(k, n)).lower(jax.random.key(0)).as_text()
    if ON_CPU:
      assert text.count("stablehlo.sort") * (32 - position_bits) >= max(32, jax_bits), n


def test_beyond_the_packed_range_it_is_jax_permutation(monkeypatch):
  monkeypatch.setattr(prng, "PACKED_MAX", 8)
  key = jax.random.key(5)
  np.testing.assert_array_equal(prng.permutation(key, 9), jax.random.permutation(key, 9))
  np.testing.assert_array_equal(prng.permutation(key, 1), [0])


@pytest.mark.parametrize("n", [-1, 2.5, True, "4", np.ones(3)])
def test_a_bad_length_is_named(n):
  with pytest.raises(ValueError, match="n must be a non-negative integer"):
    prng.permutation(jax.random.key(0), n)


# --- PPO's schedule shuffles with it -------------------------------------------------------


def _ppo_step(permutation, num_minibatches, num_epochs=2):
  algorithm = algorithms.ppo(num_epochs=num_epochs, num_minibatches=num_minibatches)
  algorithm = algorithm._replace(schedule=algorithm.schedule._replace(permutation=permutation))
  policy = CategoricalPolicy(2, hidden=(8,), value="separate")
  init_fn, train_step = rj.make_train_step(CartPole(), policy, optax.sgd(0.1), algorithm,
                                           num_envs=4, rollout_length=8)
  state = init_fn(jax.random.key(0))
  return jax.jit(train_step)(state, jax.random.key(1))


@pytest.mark.slow
def test_a_whole_batch_epoch_does_not_depend_on_the_order():
  """With one minibatch an epoch's loss is a mean over all transitions: any shuffle that keeps
  each transition's fields together gives the same update (up to summation order)."""
  identity = lambda key, n: jnp.arange(n)  # noqa: E731
  shuffled, _ = _ppo_step(None, num_minibatches=1)
  ordered, _ = _ppo_step(identity, num_minibatches=1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
               shuffled.params, ordered.params)
  # With two minibatches the order matters, so the shuffle is really applied.
  split_shuffled, _ = _ppo_step(None, num_minibatches=2)
  split_ordered, _ = _ppo_step(identity, num_minibatches=2)
  differences = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                             split_shuffled.params, split_ordered.params)
  assert max(jax.tree.leaves(differences)) > 1e-4


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_the_schedule_draws_one_order_per_epoch_of_every_transition():
  calls = []

  def recorded(key, n):
    calls.append(n)
    return jax.random.permutation(key, n)

  _ppo_step(recorded, num_minibatches=2, num_epochs=3)
  # One call, vmapped over the epochs' keys: an order of all 32 transitions per epoch.
  assert calls == [4 * 8]


def test_a_permutation_of_the_wrong_shape_is_named():
  with pytest.raises(ValueError, match=r"permutation\(key, 32\) must return integers of "
                                       r"shape \(32,\); got float32\[16\]"):
    _ppo_step(lambda key, n: jnp.zeros(n // 2), num_minibatches=2)
  with pytest.raises(ValueError, match="permutation must be a function"):
    algorithms.minibatches(2, 2, permutation=3)
