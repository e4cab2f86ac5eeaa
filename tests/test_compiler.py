import os
import subprocess
import sys
import textwrap

import chex
import jax
import optax
import pytest

import reinforce_jax as rj


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
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


def _python(code, **env_changes):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(env_changes, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                        timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  return done.stdout


@pytest.mark.slow  # ~11 s; make test-slow runs it
def test_avoid_cpu_deadlock_sets_the_flag_once_and_only_before_the_backend_starts():
  import jaxlib

  if not jaxlib.__version__.startswith("0.10."):
    pytest.skip("the workaround applies to jaxlib 0.10.x only")
  flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
  # Importing the library leaves XLA_FLAGS alone (the flag costs small steps 15-20%) ...
  out = _python("import os, reinforce_jax, jax; jax.numpy.zeros(1); "
                "print(os.environ.get('XLA_FLAGS', 'unset'))")
  assert out.strip() == "unset"
  # ... and the function applies it, once.
  out = _python(textwrap.dedent("""
      import os, jax, reinforce_jax as rj
      print(rj.avoid_cpu_deadlock(), rj.avoid_cpu_deadlock(), os.environ["XLA_FLAGS"])
      jax.numpy.zeros(1).block_until_ready()
  """))
  assert out.split() == ["True", "False", flag]
  out = _python("import jax; jax.numpy.zeros(1); import os, reinforce_jax as rj; "
                "print(rj.avoid_cpu_deadlock(), 'XLA_FLAGS' in os.environ)")
  assert out.split() == ["False", "False"]  # too late: the backend has read XLA_FLAGS
  out = _python("import reinforce_jax as rj; print(rj.avoid_cpu_deadlock())",
                XLA_FLAGS="--xla_cpu_enable_concurrency_optimized_scheduler=true")
  assert out.strip() == "False"  # the user's own setting stays


@pytest.mark.slow  # ~25 s (test_initializers runs the program that hung); make test-slow
def test_the_sweep_that_used_to_hang_finishes(tmp_path):
  # 24 vmapped a2c runs on CartPole, with no XLA flag: with flax's orthogonal
  # initialiser (LAPACK QR) about 3 launches in 4 never returned on this
  # project's machine (jaxlib 0.10.2); see reinforce_jax/compiler.py.
  done = subprocess.run(
      [sys.executable, "-m", "reinforce_jax", "sweep", "cartpole", "--algo", "a2c",
       "--lr", "7e-4,2e-3", "--entropy-coef", "0,0.01", "--gae-lambda", "0.95,1",
       "--num-seeds", "3", "--steps", "2", "--out", str(tmp_path)],
      capture_output=True, text=True, timeout=240,
      env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr[-2000:]
  assert "24 runs" in done.stdout


def test_use_compilation_cache_respects_jax_settings(tmp_path):
  out = _python(textwrap.dedent(f"""
      import jax
      from reinforce_jax.xla.compiler import use_compilation_cache
      print(use_compilation_cache(None))
      jax.config.update("jax_enable_compilation_cache", False)
      print(use_compilation_cache({str(tmp_path / "a")!r}))
      jax.config.update("jax_enable_compilation_cache", True)
      print(use_compilation_cache({str(tmp_path / "b")!r}), jax.config.jax_compilation_cache_dir)
      print(use_compilation_cache({str(tmp_path / "c")!r}))  # the first setting stays
  """))
  assert out.split() == ["False", "False", "True", str(tmp_path / "b"), "False"]
