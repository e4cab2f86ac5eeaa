import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_linear_params

import reinforce_jax as rj
from reinforce_jax import baselines
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.rl.policies import CategoricalPolicy


def test_leave_one_out_is_the_mean_of_the_others():
  values = jnp.array([[1.0, 2.0, 6.0], [0.0, 3.0, 3.0]])
  got = baselines.leave_one_out(values, axis=1)
  np.testing.assert_allclose(got, [[4.0, 3.5, 1.5], [3.0, 1.5, 1.5]])
  np.testing.assert_allclose(baselines.leave_one_out(values, axis=0), values[::-1])


def test_leave_one_out_and_batch_mean_need_two_samples():
  for baseline in (baselines.leave_one_out, baselines.batch_mean):
    with pytest.raises(ValueError, match=r"at least 2 samples along axis 1.*\(3, 1\)"):
      baseline(jnp.zeros((3, 1)), axis=1)


def test_batch_mean_is_the_mean_of_all():
  values = jnp.array([[1.0, 2.0, 6.0], [0.0, 3.0, 3.0]])
  np.testing.assert_allclose(baselines.batch_mean(values, axis=1), [[3.0] * 3, [2.0] * 3])
  np.testing.assert_allclose(baselines.batch_mean(values, axis=0), [[0.5, 2.5, 4.5]] * 2)


def test_equal_values_give_exactly_themselves():
  """Summing first once left a float32 residue: 123.456 minus its own mean was -7.6e-6."""
  values = jnp.full((2, 3), 123.456)
  for baseline in (baselines.leave_one_out, baselines.batch_mean):
    assert np.all(np.asarray(values - baseline(values, axis=1)) == 0.0)


# --- Every baseline keeps train_step's gradient unbiased; how much variance each removes ---

BASELINE_CASES = ["none", "constant", "ema", "batch_mean", "leave_one_out", "value"]
BASELINE_VALUES = {"none": None, "constant": baselines.Constant(0.5), "ema": baselines.EMA(),
                   "batch_mean": baselines.BatchMean(), "leave_one_out": baselines.LeaveOneOut(),
                   "value": baselines.Value()}


def _gradient_replicates(baseline, num_envs=16, replicates=3000):
  """`replicates` independent gradient estimates from train_step (read through sgd(1))."""
  env = ContextualBandit()
  value = "separate" if baseline == "value" else None
  policy = CategoricalPolicy(2, hidden=(), value=value)
  algorithm = rj.algorithms.reinforce(baseline=BASELINE_VALUES[baseline])
  init_fn, train_step = rj.make_train_step(env, policy, optax.sgd(1.0), algorithm,
                                           num_envs=num_envs, rollout_length=1)
  state = init_fn(jax.random.key(0))
  params = state.params
  params["params"]["logits"] = random_linear_params(jax.random.key(21))["params"]["logits"]
  state = state._replace(params=params)
  if baseline == "ema":  # an average of earlier returns: any value fixed before the step
    state = state._replace(algo_state=jnp.float32(0.5))
  # Each replicate starts from its own freshly reset environments (contexts).
  env_keys, keys = jax.random.split(jax.random.key(1), (2, replicates))
  carries = jax.vmap(lambda k: init_fn(k).env)(env_keys)
  step = jax.vmap(lambda carry, key: train_step(state._replace(env=carry), key)[0])
  new = jax.jit(step)(carries, keys)
  def logits(p, lead=()):
    layer = p["params"]["logits"]
    return jnp.concatenate([layer["bias"].reshape(lead + (-1,)),
                            layer["kernel"].reshape(lead + (-1,))], -1)

  estimates = logits(new.params, (replicates,)) - logits(state.params)[None]
  env_params = env.default_params

  def expected(p):
    dist = policy.apply(p, env_params.contexts)
    dist = dist[0] if isinstance(dist, tuple) else dist
    return ContextualBandit.expected_reward(dist.probs, env_params)

  exact = logits(jax.grad(expected)(state.params))
  return np.asarray(estimates), np.asarray(exact)


@pytest.mark.slow
@pytest.mark.parametrize("baseline", BASELINE_CASES)
def test_baselines_keep_the_gradient_unbiased(baseline):
  estimates, exact = _gradient_replicates(baseline)
  if baseline == "batch_mean":  # the sample sees its own return: shrinks by (B - 1) / B
    exact = exact * 15 / 16
  stderr = estimates.std(0) / np.sqrt(len(estimates))
  assert np.all(np.abs(estimates.mean(0) - exact) < 4 * stderr), (estimates.mean(0), exact)


@pytest.mark.slow
def test_baselines_reduce_variance():
  """Total variance of the gradient estimate, relative to no baseline (16 envs)."""
  variance = {b: _gradient_replicates(b)[0].var(0).sum() for b in BASELINE_CASES if b != "value"}
  ratio = {b: v / variance["none"] for b, v in variance.items()}
  # Rewards are 0/1 with mean about 0.5: centring them removes most of the variance.
  for b in ("constant", "ema", "batch_mean", "leave_one_out"):
    assert ratio[b] < 0.7, ratio
