"""TrainConfig and Hyperparams.from_config: every field checked by type and range."""

import dataclasses
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.config import Hyperparams, TrainConfig

INT_FIELDS = ("num_envs", "rollout_length", "num_epochs", "num_minibatches", "num_steps")
FLOAT_FIELDS = ("gamma", "gae_lambda", "ema_decay", "baseline_constant", "entropy_coef",
                "value_coef", "clip_eps", "learning_rate", "max_grad_norm")


def test_every_field_is_covered_here():
  names = {f.name for f in dataclasses.fields(TrainConfig)}
  assert names == {*INT_FIELDS, *FLOAT_FIELDS, "algo", "baseline", "normalize_advantages",
                   "clip_value", "anneal_lr"}


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("value", [True, False, 2.0, "4", None, np.float64(8)])
def test_int_fields_take_real_ints_only(name, value):
  message = f"{name} must be a .*integer.*got {re.escape(repr(value))}"
  with pytest.raises(ValueError, match=message):
    TrainConfig(**{name: value})


@pytest.mark.parametrize("name, value", [
    ("num_envs", 0), ("rollout_length", -1), ("num_epochs", 0), ("num_minibatches", 0),
    ("num_steps", -1)])
def test_int_fields_are_range_checked(name, value):
  with pytest.raises(ValueError, match=f"{name} must be"):
    TrainConfig(**{name: value})


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [True, "0.5", [0.5], jnp.zeros(2)])
def test_float_fields_take_real_numbers_only(name, value):
  with pytest.raises(ValueError, match=f"{name} must be a real number"):
    TrainConfig(**{name: value})


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [
    float("nan"), float("inf"), -float("inf"), pytest.param(10**400, id="10**400")])
def test_float_fields_must_be_finite(name, value):
  with pytest.raises(ValueError, match=f"{name} must"):
    TrainConfig(**{name: value})


@pytest.mark.parametrize("name, value", [
    ("gamma", 1.5), ("gae_lambda", -0.1), ("ema_decay", 2), ("entropy_coef", -0.01),
    ("value_coef", -1), ("clip_eps", -0.2), ("learning_rate", 0.0), ("learning_rate", -1e-3),
    ("max_grad_norm", 0.0), ("max_grad_norm", -1.0)])
def test_float_fields_are_range_checked(name, value):
  with pytest.raises(ValueError, match=f"{name} must .*got {re.escape(repr(value))}"):
    TrainConfig(**{name: value})


@pytest.mark.parametrize("name, value", [
    ("learning_rate", 1e300), ("learning_rate", 1e-50),
    ("baseline_constant", 1e39), ("entropy_coef", 1e39), ("value_coef", 3.5e38),
    ("clip_eps", 1e300), ("max_grad_norm", 1e300), ("max_grad_norm", 1e-46)])
def test_float_fields_are_checked_in_float32(name, value):
  """Finite in Python, inf (or 0) in float32, the dtype training uses."""
  with pytest.raises(ValueError, match=f"{name} must .*float32"):
    TrainConfig(**{name: value})


def test_ints_and_numpy_floats_are_fine_for_float_fields():
  config = TrainConfig(gamma=1, learning_rate=np.float32(0.01), baseline_constant=-3,
                       max_grad_norm=np.float64(0.5))
  assert config.gamma == 1 and config.max_grad_norm == 0.5
  assert TrainConfig(max_grad_norm=None).max_grad_norm is None


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
@pytest.mark.parametrize("name", ["normalize_advantages", "clip_value", "anneal_lr"])
def test_bool_fields_must_be_bools(name, value):
  message = f"{name} must be a bool, got {re.escape(repr(value))}"
  with pytest.raises(ValueError, match=message):
    TrainConfig(**{name: value})
  assert getattr(TrainConfig(**{name: True}), name) is True


@pytest.mark.parametrize("name, value", [
    ("algo", "sac"), ("algo", 1), ("algo", None), ("baseline", "mean"), ("baseline", None),
    ("baseline", 0.0)])
def test_algo_and_baseline_come_from_their_lists(name, value):
  with pytest.raises(ValueError, match=f"{name} must be one of"):
    TrainConfig(**{name: value})


# --- Hyperparams.from_config ---------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("gamma", 1.5), ("gamma", True), ("gamma", "0.5"), ("gae_lambda", float("nan")),
    ("ema_decay", -0.5), ("entropy_coef", -1.0), ("clip_eps", 1e300),
    ("baseline_constant", float("inf")), ("value_coef", jnp.array([0.5, -1.0])),
    ("entropy_coef", np.array([0.0, np.nan]))])
def test_from_config_validates_concrete_overrides(name, value):
  with pytest.raises(ValueError, match=f"{name} must"):
    Hyperparams.from_config(TrainConfig(), **{name: value})


def test_from_config_takes_good_and_traced_overrides():
  config = TrainConfig()
  hp = Hyperparams.from_config(config, gamma=1, entropy_coef=jnp.array([0.0, 0.01]))
  assert float(hp.gamma) == 1.0 and hp.entropy_coef.shape == (2,)
  under_jit = jax.jit(lambda g: Hyperparams.from_config(config, gamma=g).gamma)(0.5)
  under_vmap = jax.vmap(lambda e: Hyperparams.from_config(config, entropy_coef=e).entropy_coef)(
      jnp.array([0.0, 0.25]))
  assert float(under_jit) == 0.5
  np.testing.assert_array_equal(under_vmap, [0.0, 0.25])


def test_config_module_imports_without_jax():
  """The CLI parses arguments into a TrainConfig before it pays for importing JAX."""
  code = (
      "import importlib.util, sys\n"
      "spec = importlib.util.spec_from_file_location('cfg', sys.argv[1])\n"
      "module = importlib.util.module_from_spec(spec)\n"
      "sys.modules['cfg'] = module\n"
      "spec.loader.exec_module(module)\n"
      "module.TrainConfig(gamma=0.5, learning_rate=1e-3)\n"
      "assert 'jax' not in sys.modules, 'config.py imported jax'\n")
  import reinforce_jax.config

  subprocess.run([sys.executable, "-c", code, reinforce_jax.config.__file__], check=True)


def test_numpy_and_jax_scalars_are_accepted_as_floats():
  import jax.numpy as jnp

  for value in (jnp.float32(3e-4), np.float32(3e-4), jnp.asarray(3e-4, jnp.bfloat16)):
    config = TrainConfig(learning_rate=value)
    assert type(config.learning_rate) is float and abs(config.learning_rate - 3e-4) < 1e-5
    assert hash(config) == hash(TrainConfig(learning_rate=config.learning_rate))
