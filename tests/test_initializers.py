import os
import re
import subprocess
import sys
import textwrap
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reinforce_jax as rj
from reinforce_jax.experiments.presets import PRESETS
from reinforce_jax.rl.policies import CategoricalPolicy, GRUPolicy
from reinforce_jax.xla.compiler import CpuDeadlockWarning, lapack_primitives
from reinforce_jax.xla.initializers import orthogonal


@pytest.mark.parametrize("shape,column_axis", [
    ((64, 64), -1), ((4, 64), -1), ((64, 2), -1), ((3, 5, 7), -1), ((6, 4), 0), ((2, 1), -1)])
def test_orthogonal_gives_flax_s_matrices(shape, column_axis):
  for seed in range(3):
    key = jax.random.key(seed)
    ours = orthogonal(1.7, column_axis=column_axis)(key, shape)
    theirs = nn.initializers.orthogonal(1.7, column_axis=column_axis)(key, shape)
    assert ours.shape == shape and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_orthogonal_has_orthonormal_columns_or_rows_and_refuses_a_vector():
  tall = orthogonal()(jax.random.key(0), (256, 32))
  np.testing.assert_allclose(tall.T @ tall, np.eye(32), atol=2e-6)
  wide = orthogonal(2.0)(jax.random.key(1), (8, 96))
  np.testing.assert_allclose(wide @ wide.T, 4.0 * np.eye(8), atol=1e-5)
  assert orthogonal()(jax.random.key(0), (0, 3)).shape == (0, 3)
  with pytest.raises(ValueError, match="at least 2 axes"):
    orthogonal()(jax.random.key(0), (5,))


@pytest.mark.slow
def test_the_presets_training_programs_have_no_lapack_call():
  names = []
  for preset, algo in [("cartpole", "a2c"), ("cartpole", "ppo"), ("pendulum", "ppo")]:
    p = PRESETS[preset]
    config = p.configs[algo].replace(num_steps=1)
    env = p.make_env()
    train = rj.make_train(env, p.policy(env, config), optax.adam(1e-3), config)
    hlo = jax.jit(jax.vmap(train)).lower(jax.random.split(jax.random.key(0), 2)).as_text()
    names += re.findall(r'custom_call_target\s*=\s*"([^"]+)"', hlo)
  assert names == []
  gru = GRUPolicy(2, hidden=8)
  assert lapack_primitives(gru.init, jax.random.key(0), jnp.zeros((1, 8)),
                           jnp.zeros((1, 4))) == frozenset()


class _FlaxOrthogonal(nn.Module):
  @nn.compact
  def __call__(self, obs):
    hidden = nn.tanh(nn.Dense(16, kernel_init=nn.initializers.orthogonal())(obs))
    return rj.policies.Categorical(logits=nn.Dense(2)(hidden))


def test_a_policy_with_lapack_in_its_init_is_warned_about(bandit, monkeypatch):
  # The warning is for XLA:CPU of jaxlib 0.10 without the workaround flag.
  monkeypatch.setattr(rj.xla.compiler, "deadlock_workaround_missing", lambda: True)
  assert "qr" in lapack_primitives(lambda k: nn.initializers.orthogonal()(k, (4, 4)),
                                   jax.random.key(0))
  init_fn, _ = rj.make_train_step(bandit, _FlaxOrthogonal(), optax.adam(0.1),
                                  rj.TrainConfig(num_envs=4))
  with pytest.warns(CpuDeadlockWarning, match="initializers.orthogonal"):
    jax.eval_shape(init_fn, jax.random.key(0))
  init_fn, _ = rj.make_train_step(bandit, CategoricalPolicy(2, hidden=(16,)), optax.adam(0.1),
                                  rj.TrainConfig(num_envs=4))
  with warnings.catch_warnings():
    warnings.simplefilter("error", CpuDeadlockWarning)
    jax.eval_shape(init_fn, jax.random.key(0))
  monkeypatch.setattr(rj.xla.compiler, "deadlock_workaround_missing", lambda: False)
  init_fn, _ = rj.make_train_step(bandit, _FlaxOrthogonal(), optax.adam(0.1),
                                  rj.TrainConfig(num_envs=4))
  with warnings.catch_warnings():
    warnings.simplefilter("error", CpuDeadlockWarning)
    jax.eval_shape(init_fn, jax.random.key(0))


@pytest.mark.slow
def test_many_vmapped_a2c_seeds_finish_without_any_xla_flag():
  # The program that hung in 4 launches of 4 (jaxlib 0.10.2, 2 cores) while the
  # policies used flax's LAPACK-backed orthogonal initialiser.
  code = textwrap.dedent("""
      import jax, optax, reinforce_jax as rj
      from reinforce_jax.experiments.presets import PRESETS
      p = PRESETS["cartpole"]
      config = p.configs["a2c"].replace(num_steps=2)
      env = p.make_env()
      train = rj.make_train(env, p.policy(env, config), optax.adam(1e-3), config)
      out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 24))
      print(int(out.steps_done.sum()))
  """)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=240, env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split()[-1] == "48"
