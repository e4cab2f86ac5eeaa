"""The unrolled threefry keys give exactly JAX's numbers, and train_step uses them."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reinforce_jax as rj
from reinforce_jax import prng
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.envs.base import Environment
from reinforce_jax.rl.policies import CategoricalPolicy

pytestmark = pytest.mark.skipif(not prng.applies(), reason="the unrolled keys are CPU-only")

DRAWS = {
    "split": lambda k: jax.random.key_data(jax.random.split(k, 5)),
    "split_2d": lambda k: jax.random.key_data(jax.random.split(k, (3, 4))),
    "fold_in": lambda k: jax.random.key_data(jax.random.fold_in(k, 7)),
    "fold_in_large": lambda k: jax.random.key_data(jax.random.fold_in(k, 2**31 + 5)),
    "fold_in_traced_int32": lambda k: jax.random.key_data(jax.random.fold_in(k, jnp.int32(-3))),
    "uniform_odd_size": lambda k: jax.random.uniform(k, (1001,)),
    "uniform_scalar": lambda k: jax.random.uniform(k),
    "normal": lambda k: jax.random.normal(k, (3, 7)),
    "categorical": lambda k: jax.random.categorical(k, jnp.log(jnp.array([0.2, 0.3, 0.5])),
                                                    shape=(64,)),
    "bernoulli": lambda k: jax.random.bernoulli(k, 0.3, (50,)),
    "permutation": lambda k: jax.random.permutation(k, 100),
    "randint": lambda k: jax.random.randint(k, (6,), 0, 1000),
    "bits8": lambda k: jax.random.bits(k, (9,), jnp.uint8),
    "bits16": lambda k: jax.random.bits(k, (9,), jnp.uint16),
    "bits32": lambda k: jax.random.bits(k, (2, 3)),
    "gumbel": lambda k: jax.random.gumbel(k, (17,)),
    "vmapped_uniform": lambda k: jax.vmap(jax.random.uniform)(jax.random.split(k, 9)),
    "vmapped_split": lambda k: jax.random.key_data(
        jax.vmap(lambda kk: jax.random.split(kk, 3))(jax.random.split(k, 4))),
}


@pytest.mark.parametrize("name", sorted(DRAWS))
def test_same_numbers_as_jax(name):
  draw = jax.jit(DRAWS[name])
  for seed in (0, 1, 12345):
    key = jax.random.key(seed)
    fast = prng.fast_keys(key)
    assert fast.dtype != key.dtype
    np.testing.assert_array_equal(draw(fast), draw(key))


def test_bits64_same_as_jax():
  with jax.enable_x64(True):
    key = jax.random.key(3)
    draw = jax.jit(lambda k: jax.random.bits(k, (5,), jnp.uint64))
    np.testing.assert_array_equal(draw(prng.fast_keys(key)), draw(key))


def test_the_hash_matches_jax_threefry_2x32():
  key = jax.random.key_data(jax.random.key(42))
  count = jnp.arange(10, dtype=jnp.uint32)
  expected = jax.extend.random.threefry_2x32(key, count)
  high, low = prng.threefry2x32(key[0], key[1], count[:5], count[5:])
  np.testing.assert_array_equal(jnp.concatenate([high, low]), expected)


def test_fast_and_restore_relabel_only_threefry_keys():
  raw = jax.random.PRNGKey(0)
  rbg = jax.random.key(0, impl="rbg")
  tree = {"key": jax.random.key(1), "raw": raw, "rbg": rbg, "x": jnp.ones(3)}
  fast = prng.fast_keys(tree)
  assert fast["key"].dtype == prng.fast_keys(jax.random.key(2)).dtype
  assert fast["raw"] is raw and fast["rbg"] is rbg and fast["x"] is tree["x"]
  back = prng.restore_keys(fast)
  assert back["key"].dtype == tree["key"].dtype
  np.testing.assert_array_equal(jax.random.key_data(back["key"]),
                                jax.random.key_data(tree["key"]))


def test_with_fast_keys_wraps_a_step_of_your_own():
  def step(state, key):
    next_key, draw = jax.random.split(state["key"])
    noise = jax.random.normal(jax.random.fold_in(key, 3), (1000,))
    return {"key": next_key, "x": state["x"] + jax.random.uniform(draw)}, noise

  state = {"key": jax.random.key(5), "x": jnp.zeros(())}
  key = jax.random.key(6)
  wrapped = prng.with_fast_keys(step)
  assert " while(" not in jax.jit(wrapped).lower(state, key).compile().as_text()
  fast_state, fast_noise = jax.jit(wrapped)(state, key)
  jax_state, jax_noise = jax.jit(step)(state, key)
  assert fast_state["key"].dtype == state["key"].dtype
  chex.assert_trees_all_equal((fast_state, fast_noise), (jax_state, jax_noise))


def _bandit_step(num_envs=64):
  env, policy = ContextualBandit(), CategoricalPolicy(2, hidden=())
  config = rj.TrainConfig(num_envs=num_envs, rollout_length=1)
  return rj.make_train_step(env, policy, optax.adam(0.01), config)


def test_train_step_gives_the_numbers_of_jax_keys():
  init_fn, train_step = _bandit_step()
  key = jax.random.key(0)
  state = jax.jit(init_fn)(key)
  fast_out = jax.jit(rj.make_run(train_step, 5))(state, key, 5)
  with prng.disabled():
    assert not prng.applies()
    jax_out = jax.jit(rj.make_run(train_step, 5))(state, key, 5)
  assert prng.applies()
  chex.assert_trees_all_equal(fast_out, jax_out)


def test_plain_jit_train_step_has_no_hash_loop():
  """JAX's rolled threefry is a `while` in the program; the unrolled one is not."""
  init_fn, train_step = _bandit_step(4096)
  key = jax.random.key(0)
  state = jax.jit(init_fn)(key)
  hlo = jax.jit(train_step).lower(state, key).compile().as_text()
  assert " while(" not in hlo
  with prng.disabled():  # a fresh function: jax.jit reuses the trace of one it has seen
    hlo = jax.jit(lambda s, k: train_step(s, k)).lower(state, key).compile().as_text()
    assert " while(" in hlo


class _KeyedBandit(Environment):
  """The seed's bandit with a key in its state, as some gymnax environments keep."""

  default_params = None
  num_actions = 2
  observation_shape = (1,)

  def reset_env(self, key, params):
    key, draw = jax.random.split(key)
    x = jnp.where(jax.random.bernoulli(draw), 1.0, -1.0)
    return x[None], {"key": key, "x": x}

  def step_env(self, key, state, action, params):
    del key
    next_key, draw = jax.random.split(state["key"])
    reward = (action == (state["x"] > 0)).astype(jnp.float32)
    x = jnp.where(jax.random.bernoulli(draw), 1.0, -1.0)
    return (x[None], {"key": next_key, "x": x}, reward, jnp.bool_(False), jnp.bool_(False), {})


@pytest.mark.slow
def test_keys_in_the_environment_state_keep_their_type():
  env, policy = _KeyedBandit(), CategoricalPolicy(2, hidden=())
  init_fn, train_step = rj.make_train_step(
      env, policy, optax.adam(0.01), rj.TrainConfig(num_envs=8, rollout_length=2))
  key = jax.random.key(0)
  state = jax.jit(init_fn)(key)
  new_state, _ = jax.jit(train_step)(state, key)
  assert new_state.env.env_state["key"].dtype == state.env.env_state["key"].dtype
  run = jax.jit(rj.make_run(train_step, 3))(state, key, 3)  # a scan carry: types must match
  assert run.state.env.env_state["key"].dtype == state.env.env_state["key"].dtype


def test_the_hash_is_computed_once_not_copied_into_each_reader(monkeypatch):
  """Without `_once`, XLA copies the hash into every fusion that reads the bits."""
  init_fn, train_step = _bandit_step(4096)
  key = jax.random.key(0)
  state = jax.jit(init_fn)(key)

  def xors():  # threefry has 23 xors per hash; a fresh function, so it is traced again
    return jax.jit(lambda s, k: train_step(s, k)).lower(state, key).compile().as_text().count(
        " xor(")

  shared = xors()
  monkeypatch.setattr(prng, "_once", lambda key_word, x: x)
  copied = xors()
  assert shared < copied - 2 * 23, (shared, copied)


def test_one_environment_takes_the_unrolled_keys_too():
  """Every batch draws with the unrolled hash (it also compiles faster): no rolled loop,
  in the step or in the state's init."""
  init_fn, train_step = _bandit_step(1)
  key = jax.random.key(0)
  state = init_fn(key)
  assert " while(" not in jax.jit(train_step).lower(state, key).compile().as_text()
  assert " while(" not in init_fn.lower(key).compile().as_text()
