import chex
import jax
import optax

import reinforce_jax as rj


def test_recommended_options_compile_and_give_the_same_training(bandit, linear_policy):
  options = rj.recommended_compiler_options()
  assert isinstance(options, dict)
  if jax.default_backend() == "cpu":
    assert all(key.startswith("xla_cpu_") for key in options)
  config = rj.TrainConfig(num_envs=64, num_steps=5)
  train = rj.make_train(bandit, linear_policy, optax.adam(0.05), config)
  plain = jax.jit(train)(jax.random.key(0))
  tuned = jax.jit(train, compiler_options=options)(jax.random.key(0))
  chex.assert_trees_all_close(plain, tuned, rtol=1e-5, atol=1e-6)
