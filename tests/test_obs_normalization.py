"""The shared observation normaliser: its update rule, the rollout, the train state."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reinforce_jax.envs import CartPole
from reinforce_jax.envs.cartpole import CartPoleParams
from reinforce_jax.rl import hparams
from reinforce_jax.rl.config import TrainConfig
from reinforce_jax.rl.normalization import (
    ObsNormalizer,
    ObsStats,
    init_stats,
    normalize,
    update_stats,
)
from reinforce_jax.rl.policies import Categorical, CategoricalPolicy
from reinforce_jax.rl.rollouts import reset_envs, rollout
from reinforce_jax.rl.train import make_train_step

SHORT = CartPoleParams(max_steps_in_episode=6)  # truncations every few steps


def _batches(seed=0, sizes=(3, 5, 1, 8)):
  rng = np.random.default_rng(seed)
  return [rng.normal(2.0, 3.0, size=(n, 2, 3)).astype(np.float32) for n in sizes]


def _prior_adjusted(data, prior):
  """Mean and variance of `data` pooled with `prior` pseudo-observations of mean 0, var 1."""
  data = np.asarray(data, np.float64)
  n = data.shape[0] + prior
  mean = data.sum(0) / n
  m2 = ((data - mean) ** 2).sum(0) + prior * (1.0 + mean ** 2)
  return mean, m2 / n


def _np_update(stats, batch):
  """Chan et al.'s merge in float64 numpy: `stats` is `(count, mean, var)`."""
  count, mean, var = stats
  batch = np.asarray(batch, np.float64)
  n, batch_mean, batch_var = len(batch), batch.mean(0), batch.var(0)
  total = count + n
  delta = batch_mean - mean
  m2 = var * count + batch_var * n + delta ** 2 * count * n / total
  return total, mean + delta * n / total, m2 / total


def _np_normalize(stats, obs):
  return (np.asarray(obs, np.float64) - stats[1]) / np.sqrt(stats[2] + 1e-8)


def test_merged_batches_give_the_mean_and_variance_of_everything_seen():
  batches = _batches()
  exact, prior = init_stats((2, 3), initial_count=0.0), init_stats((2, 3))
  for batch in batches:
    exact, prior = update_stats(exact, batch), update_stats(prior, batch)
  data = np.concatenate(batches)
  assert float(exact.count) == len(data)
  np.testing.assert_allclose(exact.mean, data.astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(exact.var, data.astype(np.float64).var(0), rtol=1e-5)
  # The default rule starts from a prior worth 1e-4 observations of mean 0, variance 1.
  mean, var = _prior_adjusted(data, 1e-4)
  np.testing.assert_allclose(prior.mean, mean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(prior.var, var, rtol=1e-5)
  np.testing.assert_allclose(float(prior.count), len(data) + 1e-4, rtol=1e-7)


def test_normalize_is_the_standard_score_with_eps_and_optional_clip():
  stats = ObsStats(jnp.float32(4.0), jnp.array([1.0, -2.0]), jnp.array([4.0, 0.0]))
  obs = jnp.array([[3.0, -2.0], [1.0, -2.0 + 1e-3]])
  np.testing.assert_allclose(normalize(stats, obs, eps=1e-8),
                             [[1.0, 0.0], [0.0, 1e-3 / np.sqrt(1e-8)]], rtol=1e-3)
  clipped = ObsNormalizer(clip=5.0).normalize(stats, obs)
  np.testing.assert_allclose(clipped, [[1.0, 0.0], [0.0, 5.0]], rtol=1e-6)
  with pytest.raises(ValueError, match=r"obs must have shape \[\.\.\., \*obs_shape\] with "
                                       r"obs_shape \[2\].*got \[2, 3\]"):
    normalize(stats, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"batch must have shape \[N, \*obs_shape\]"):
    update_stats(stats, jnp.zeros((2,)))


@pytest.mark.parametrize("kwargs, message", [
    ({"initial_count": -1.0}, "initial_count must be a finite number >= 0, got -1.0"),
    ({"eps": float("nan")}, "eps must be a finite number >= 0"),
    ({"clip": 0.0}, "clip must be a positive number or None, got 0.0"),
    ({"per_step": 1}, "per_step must be True or False, got 1"),
])
def test_a_bad_rule_is_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ObsNormalizer(**kwargs)


@pytest.mark.slow  # imports rejax (and gymnax with it)
def test_the_update_is_rejax_update_rms_bit_for_bit():
  mixins = pytest.importorskip("rejax.algos.mixins")
  ours, theirs = init_stats((2, 3)), mixins.RMSState.create((2, 3))
  for batch in _batches(seed=3):
    ours, theirs = update_stats(ours, batch), mixins.update_rms(theirs, jnp.asarray(batch))
    np.testing.assert_array_equal(ours.mean, theirs.mean)
    np.testing.assert_array_equal(ours.var, theirs.var)
  obs = jnp.asarray(_batches(seed=4, sizes=(2,))[0])
  expected = (obs - theirs.mean) / jnp.sqrt(theirs.var + 1e-8)  # rejax's normalize_obs
  np.testing.assert_array_equal(ObsNormalizer().normalize(ours, obs), expected)


# --- In the rollout --------------------------------------------------------------------


def _push_right_with_value(params, obs):
  """Always pushes right (whatever it sees); its value is the first observed entry."""
  logits = jnp.broadcast_to(jnp.array([-30.0, 30.0]), obs.shape[:1] + (2,))
  return Categorical(logits=logits), obs[:, 0] * params


@pytest.mark.parametrize("per_step", [True, False])
def test_the_rollout_normalises_with_the_shared_statistics_and_advances_them(per_step):
  env, num_envs, length = CartPole(), 3, 12
  carry = reset_envs(jax.random.key(0), env, SHORT, num_envs)
  normalizer = ObsNormalizer(per_step=per_step)
  start = normalizer.init((4,))
  run = jax.jit(rollout, static_argnames=("apply_fn", "env", "num_steps", "normalizer"))
  # The actions do not depend on the observations: the raw run steps the same states.
  raw_end, raw = run(jax.random.key(1), jnp.float32(1.0), _push_right_with_value, env, SHORT,
                     carry, num_steps=length)
  end, traj = run(jax.random.key(1), jnp.float32(1.0), _push_right_with_value, env, SHORT,
                  carry._replace(obs_stats=start), num_steps=length, normalizer=normalizer)
  assert np.asarray(raw.truncated).any()
  np.testing.assert_array_equal(end.obs, raw_end.obs)  # the carry keeps the raw observations
  # Each step's batch of new observations (the reset's are never counted) ...
  raw_obs = np.asarray(raw.obs)
  new = [*raw_obs[1:], np.asarray(raw_end.obs)]
  # ... merged as it arrives (per step), or all at the rollout's end (per rollout).
  prior = (1e-4, np.zeros(4), np.ones(4))
  if per_step:
    seen = [prior]
    for batch in new:
      seen.append(_np_update(seen[-1], batch))
    stats, after, seen = seen[-1], seen[1:], seen[:-1]
  else:
    stats = _np_update(prior, np.concatenate(new))
    seen = after = [prior] * length
  for t in range(length):
    np.testing.assert_allclose(traj.obs[t], _np_normalize(seen[t], raw_obs[t]), rtol=1e-4,
                               atol=1e-4)
  np.testing.assert_allclose(end.obs_stats.mean, stats[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(end.obs_stats.var, stats[2], rtol=1e-4)
  assert float(end.obs_stats.count) == pytest.approx(length * num_envs + 1e-4)
  # The truncation bootstrap sees the final observation normalised like the step's next one.
  for t in range(length):
    final_first = np.asarray(raw.bootstrap_value[t])  # raw value = final_obs[:, 0]
    truncated = np.asarray(raw.truncated[t])
    mean0, var0 = after[t][1][0], after[t][2][0]
    expected = np.where(truncated, (final_first - mean0) / np.sqrt(var0 + 1e-8), 0.0)
    np.testing.assert_allclose(traj.bootstrap_value[t], expected, rtol=1e-4, atol=1e-4)


def test_a_rollout_with_a_normalizer_needs_statistics_of_the_observations_shape():
  env = CartPole()
  carry = reset_envs(jax.random.key(0), env, env.default_params, 2)
  with pytest.raises(ValueError, match=r"needs the statistics in carry\.obs_stats"):
    rollout(jax.random.key(1), 1.0, _push_right_with_value, env, env.default_params, carry, 2,
            normalizer=ObsNormalizer())
  with pytest.raises(ValueError, match=r"observations of shape \[3\], but the environments' "
                                       r"observations have shape \[4\]"):
    rollout(jax.random.key(1), 1.0, _push_right_with_value, env, env.default_params,
            carry._replace(obs_stats=init_stats((3,))), 2, normalizer=ObsNormalizer())


# --- In training -----------------------------------------------------------------------


class _Recorder:
  """CartPole that hands every batch of observations its steps return to `seen`."""

  def __init__(self, seen):
    self.env, self.seen = CartPole(), seen

  def __getattr__(self, name):
    return getattr(self.env, name)

  def reset_batch(self, key, params, num_envs):
    return self.env.reset_batch(key, params, num_envs)

  def step_batch(self, key, state, action, params):
    out = self.env.step_batch(key, state, action, params)
    jax.debug.callback(lambda obs: self.seen.append(np.asarray(obs)), out[0])
    return out


def _linear_policy(value=None):
  return CategoricalPolicy(2, hidden=(), value=value)


def _step(env, config, **kwargs):
  policy = _linear_policy("shared" if config.uses_value else None)
  init_fn, step = make_train_step(env, policy, optax.adam(0.05), config, env_params=SHORT,
                                  **kwargs)
  return init_fn, jax.jit(step)


def test_train_state_statistics_are_those_of_every_observation_seen():
  seen = []
  config = TrainConfig(num_envs=4, rollout_length=8, normalize_observations=True)
  init_fn, step = _step(_Recorder(seen), config)
  state = init_fn(jax.random.key(0))
  assert isinstance(state.obs_stats, ObsStats) and state.obs_stats.count == np.float32(1e-4)
  for _ in range(3):
    state, _ = step(state, jax.random.key(1))
  data = np.concatenate(seen)
  assert data.shape == (3 * 8 * 4, 4)  # every step's batch; not the first reset's
  mean, var = _prior_adjusted(data, 1e-4)
  np.testing.assert_allclose(state.obs_stats.mean, mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.obs_stats.var, var, rtol=1e-4)
  np.testing.assert_allclose(float(state.obs_stats.count), len(data) + 1e-4, rtol=1e-7)
  assert state.env.obs_stats == ()  # between steps they live in the state only


def test_normalisation_off_builds_the_program_of_a_run_without_the_setting():
  env = CartPole()
  config = TrainConfig(algo="reinforce", num_envs=4, rollout_length=8)
  algorithm = hparams.Reinforce()
  policy = _linear_policy()
  init_a, step_a = make_train_step(env, policy, optax.adam(0.05), config, env_params=SHORT)
  init_b, step_b = make_train_step(env, policy, optax.adam(0.05), algorithm, num_envs=4,
                                   rollout_length=8, env_params=SHORT)
  state_a, state_b = init_a(jax.random.key(0)), init_b(jax.random.key(0))
  assert state_a.obs_stats == () and state_a.env.obs_stats == ()
  key = jax.random.key(1)
  assert str(jax.make_jaxpr(step_a)(state_a, key)) == str(jax.make_jaxpr(step_b)(state_b, key))
  step_a, step_b = jax.jit(step_a), jax.jit(step_b)
  for _ in range(3):
    state_a, _ = step_a(state_a, key)
    state_b, _ = step_b(state_b, key)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_contradicting_setting_or_a_state_without_statistics_is_refused():
  env = CartPole()
  config = TrainConfig(num_envs=2, rollout_length=2)
  with pytest.raises(ValueError, match="obs_normalization=True contradicts the config's "
                                       "normalize_observations=False"):
    make_train_step(env, _linear_policy(), optax.adam(0.1), config, obs_normalization=True)
  with pytest.raises(ValueError, match="obs_normalization must be True, False, None or"):
    make_train_step(env, _linear_policy(), optax.adam(0.1), config, obs_normalization="yes")
  init_off, _ = make_train_step(env, _linear_policy(), optax.adam(0.1), config)
  _, step_on = make_train_step(env, _linear_policy(), optax.adam(0.1),
                               config.replace(normalize_observations=True))
  with pytest.raises(ValueError, match="state.obs_stats holds no statistics"):
    step_on(init_off(jax.random.key(0)), jax.random.key(1))


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_checkpoints_save_and_restore_the_statistics(tmp_path):
  from reinforce_jax.experiments import checkpoints

  config = TrainConfig(num_envs=4, rollout_length=4, normalize_observations=True)
  init_fn, step = _step(CartPole(), config, obs_normalization=ObsNormalizer(per_step=False))
  state = init_fn(jax.random.key(0))
  for _ in range(2):
    state, _ = step(state, jax.random.key(1))
  checkpoints.save(tmp_path, 2, state)
  fresh = init_fn(jax.random.key(5))
  assert not np.array_equal(fresh.obs_stats.mean, state.obs_stats.mean)
  restored_step, restored = checkpoints.restore(tmp_path, fresh)
  assert restored_step == 2
  for name in ObsStats._fields:
    np.testing.assert_array_equal(getattr(restored.obs_stats, name),
                                  getattr(state.obs_stats, name))
  # And the run continues from them exactly.
  after, _ = step(state, jax.random.key(1))
  again, _ = step(restored, jax.random.key(1))
  np.testing.assert_array_equal(after.obs_stats.mean, again.obs_stats.mean)
  np.testing.assert_array_equal(jax.tree.leaves(after.params)[0],
                                jax.tree.leaves(again.params)[0])


SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np, optax
    from reinforce_jax.envs import CartPole
    from reinforce_jax.experiments.distributed import make_mesh, shard_state
    from reinforce_jax.rl.config import TrainConfig
    from reinforce_jax.rl.policies import CategoricalPolicy
    from reinforce_jax.rl.train import make_train_step
    config = TrainConfig(algo="a2c", num_envs=8, rollout_length=4, normalize_observations=True)
    init_fn, step = make_train_step(CartPole(), CategoricalPolicy(2, hidden=(), value="shared"),
                                    optax.adam(0.05), config)
    out = {}
    for n in (1, 2):
      state = shard_state(init_fn(jax.random.key(0)), make_mesh(n))
      jitted = jax.jit(step)
      for _ in range(2):
        state, _ = jitted(state, jax.random.key(1))
      out[n] = [np.asarray(x).tolist() for x in state.obs_stats]
    print(json.dumps(out))
""")


@pytest.mark.slow  # a subprocess with 2 virtual devices
def test_data_parallel_statistics_are_global():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  import os

  result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600, check=True)
  out = json.loads(result.stdout.strip().splitlines()[-1])
  for one, two in zip(out["1"], out["2"], strict=True):
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)
  assert out["1"][0] == pytest.approx(2 * 4 * 8 + 1e-4)
