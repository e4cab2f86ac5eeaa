"""TrainConfig, the hyperparameter declarations it is derived from, and `algorithms.traced`.

Every declared field is checked by type and range. The cases are derived from
the declarations (`hparams`) and also spelled out here, so a declaration that
changes (or a field that appears) fails a test until this file agrees.
"""

import dataclasses
import json
import math
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax import hparams
from reinforce_jax.rl.algorithms import traced
from reinforce_jax.rl.config import RUN_RANGES, SWEEPABLE, TrainConfig, sweep_grid

INF = math.inf
# Every float setting: (low, high, low excluded).
FLOAT_RANGES = {
    "learning_rate": (0.0, INF, True), "max_grad_norm": (0.0, INF, True),
    "gamma": (0.0, 1.0, False), "gae_lambda": (0.0, 1.0, False),
    "entropy_coef": (0.0, INF, False), "value_coef": (0.0, INF, False),
    "clip_eps": (0.0, INF, False), "baseline_constant": (-INF, INF, False),
    "ema_decay": (0.0, 1.0, False),
}
RUN_INTS = {"num_envs": 1, "rollout_length": 1, "num_steps": 0}  # name: minimum
RUN_SETTINGS = {"num_envs", "rollout_length", "num_steps", "learning_rate", "max_grad_norm",
                "anneal_lr", "normalize_observations"}
# The settings each (algo, baseline) has beyond the run's.
SETTINGS = {
    ("reinforce", "none"): {"gamma", "entropy_coef", "normalize_advantages",
                            "bootstrap_truncation"},
    ("reinforce", "constant"): {"gamma", "entropy_coef", "normalize_advantages",
                                "bootstrap_truncation", "baseline_constant"},
    ("reinforce", "ema"): {"gamma", "entropy_coef", "normalize_advantages",
                           "bootstrap_truncation", "ema_decay"},
    ("reinforce", "batch_mean"): {"gamma", "entropy_coef", "normalize_advantages",
                                  "bootstrap_truncation"},
    ("reinforce", "leave_one_out"): {"gamma", "entropy_coef", "normalize_advantages",
                                     "bootstrap_truncation"},
    ("reinforce", "value"): {"gamma", "entropy_coef", "normalize_advantages",
                             "bootstrap_truncation", "value_coef"},
    ("a2c", "none"): {"gamma", "gae_lambda", "entropy_coef", "value_coef",
                      "normalize_advantages", "bootstrap_truncation"},
    ("ppo", "none"): {"gamma", "gae_lambda", "entropy_coef", "value_coef", "clip_eps",
                      "clip_value", "num_epochs", "num_minibatches", "normalize_advantages",
                      "bootstrap_truncation"},
}
ALGO_SETTINGS = set().union(*SETTINGS.values())
PPO_INTS = {"num_epochs": 1, "num_minibatches": 1}
BOOLS = {"anneal_lr", "normalize_advantages", "clip_value", "bootstrap_truncation"}


def _config(**settings):
  """A TrainConfig with `settings`, for the first algorithm and baseline that has them all."""
  for (algo, baseline), names in SETTINGS.items():
    if set(settings) <= names | RUN_SETTINGS:
      return TrainConfig(algo=algo, baseline=baseline if algo == "reinforce" else None,
                         **settings)
  raise AssertionError(f"no algorithm has {sorted(settings)}")


# --- The declarations -----------------------------------------------------------------


def test_declared_floats_and_their_ranges_are_these():
  declared = {**RUN_RANGES, **hparams.all_hparam_ranges()}
  assert {name: (r.low, r.high, r.low_open) for name, r in declared.items()} == FLOAT_RANGES
  assert all(r.help for r in declared.values())
  assert set(SWEEPABLE) == set(FLOAT_RANGES) - {"max_grad_norm"}


@pytest.mark.parametrize("algo, baseline", list(SETTINGS))
def test_each_algorithm_has_exactly_these_settings(algo, baseline):
  config = TrainConfig(algo=algo, baseline=baseline if algo == "reinforce" else None)
  assert set(config.to_dict()) == RUN_SETTINGS | {"algo", "baseline"} | SETTINGS[algo, baseline]
  statics = set(hparams.static_fields(type(config.algorithm)))
  assert set(config.algorithm.flat()) | statics == SETTINGS[algo, baseline]


def test_every_int_and_bool_is_covered_here():
  statics = {}
  for cls in hparams.ALGORITHMS.values():
    statics.update(hparams.static_fields(cls))
  ints = {n for n, f in statics.items() if type(f.default) is int}
  bools = {n for n, f in statics.items() if type(f.default) is bool}
  assert ints == set(PPO_INTS) and bools | {"anneal_lr"} == BOOLS
  assert set(statics) == ints | bools  # no other kind of structural field (yet)


# --- Types and ranges -----------------------------------------------------------------


@pytest.mark.parametrize("name", [*RUN_INTS, *PPO_INTS])
@pytest.mark.parametrize("value", [True, False, 2.0, "4", None, np.float64(8)])
def test_int_fields_take_real_ints_only(name, value):
  message = f"{name} must be a .*integer.*got {re.escape(repr(value))}"
  with pytest.raises(ValueError, match=message):
    _config(**{name: value})


@pytest.mark.parametrize("name, minimum", [*RUN_INTS.items(), *PPO_INTS.items()])
def test_int_fields_are_range_checked(name, minimum):
  with pytest.raises(ValueError, match=f"{name} must be"):
    _config(**{name: minimum - 1})
  assert getattr(_config(**{name: minimum}), name) == minimum


@pytest.mark.parametrize("name", list(FLOAT_RANGES))
@pytest.mark.parametrize("value", [True, "0.5", [0.5], jnp.zeros(2), None])
def test_float_fields_take_real_numbers_only(name, value):
  if name == "max_grad_norm" and value is None:
    assert TrainConfig(max_grad_norm=None).max_grad_norm is None  # None: no clipping
    return
  with pytest.raises(ValueError, match=f"{name} must be a real number"):
    _config(**{name: value})


@pytest.mark.parametrize("name", list(FLOAT_RANGES))
@pytest.mark.parametrize("value", [
    float("nan"), float("inf"), -float("inf"), pytest.param(10**400, id="10**400")])
def test_float_fields_must_be_finite(name, value):
  with pytest.raises(ValueError, match=f"{name} must"):
    _config(**{name: value})


def _edges(name):
  """(accepted, rejected) values at the ends of `name`'s declared range."""
  low, high, low_open = FLOAT_RANGES[name]
  accepted, rejected = [], []
  for end, outside in ((low, -1), (high, 1)):
    if math.isfinite(end):
      rejected.append(end + outside * 1e-3)
      (rejected if end == low and low_open else accepted).append(end)
      accepted.append(end - outside * 1e-3)
  return accepted, rejected or [-1e39]  # unbounded: only what float32 cannot hold


@pytest.mark.parametrize("name", list(FLOAT_RANGES))
def test_float_fields_are_range_checked_at_their_declared_ends(name):
  accepted, rejected = _edges(name)
  for value in accepted:
    assert getattr(_config(**{name: value}), name) == value
  for value in rejected:
    with pytest.raises(ValueError, match=f"{name} must .*got {re.escape(repr(value))}"):
      _config(**{name: value})


@pytest.mark.parametrize("name, value", [
    ("gamma", 1.5), ("gamma", -0.01), ("gae_lambda", -0.1), ("ema_decay", 2),
    ("ema_decay", -0.5), ("entropy_coef", -0.01), ("value_coef", -1), ("clip_eps", -0.2),
    ("learning_rate", 0.0), ("learning_rate", -1e-3), ("max_grad_norm", 0.0),
    ("max_grad_norm", -1.0)])
def test_float_fields_are_range_checked(name, value):
  with pytest.raises(ValueError, match=f"{name} must .*got {re.escape(repr(value))}"):
    _config(**{name: value})


@pytest.mark.parametrize("name, value", [
    ("learning_rate", 1e300), ("learning_rate", 1e-50), ("gamma", 1.0 + 1e-12),
    ("baseline_constant", 1e39), ("entropy_coef", 1e39), ("value_coef", 3.5e38),
    ("clip_eps", 1e300), ("ema_decay", -1e-50), ("max_grad_norm", 1e300),
    ("max_grad_norm", 1e-46)])
def test_float_fields_are_checked_as_given_and_in_float32(name, value):
  """1e300 is finite in Python and inf in float32, the dtype training uses."""
  with pytest.raises(ValueError, match=f"{name} must .*got"):
    _config(**{name: value})


def test_ints_and_numpy_floats_are_fine_for_float_fields():
  config = TrainConfig(gamma=1, learning_rate=np.float32(0.01), max_grad_norm=np.float64(0.5))
  assert config.gamma == 1 and config.max_grad_norm == 0.5
  assert type(config.gamma) is float and type(config.learning_rate) is float
  assert TrainConfig(baseline="constant", baseline_constant=-3).baseline_constant == -3.0
  assert TrainConfig(max_grad_norm=None).max_grad_norm is None


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
@pytest.mark.parametrize("name", sorted(BOOLS))
def test_bool_fields_must_be_bools(name, value):
  message = f"{name} must be a bool, got {re.escape(repr(value))}"
  with pytest.raises(ValueError, match=message):
    _config(**{name: value})
  assert getattr(_config(**{name: True}), name) is True


@pytest.mark.parametrize("name, value", [
    ("algo", "sac"), ("algo", 1), ("baseline", "mean"), ("baseline", 0.0),
    ("baseline", "None")])
def test_algo_and_baseline_come_from_their_lists(name, value):
  with pytest.raises(ValueError, match=f"{name} must be one of"):
    TrainConfig(**{name: value})


def test_none_means_the_default_algorithm_and_no_baseline():
  assert TrainConfig(algo=None) == TrainConfig() == TrainConfig(baseline="none")
  assert TrainConfig(baseline=None).algorithm.baseline is None


def test_the_batch_shape_is_checked_against_the_algorithm():
  with pytest.raises(ValueError, match="num_minibatches=3 must divide"):
    TrainConfig(algo="ppo", num_envs=8, num_minibatches=3)
  with pytest.raises(ValueError, match="baseline='leave_one_out' needs num_envs >= 2"):
    TrainConfig(num_envs=1, baseline="leave_one_out")


# --- A name the algorithm does not have is an error -------------------------------------


@pytest.mark.parametrize("algo, baseline", list(SETTINGS))
def test_a_setting_the_algorithm_lacks_is_an_error(algo, baseline):
  kind = baseline if algo == "reinforce" else None
  for name in sorted(ALGO_SETTINGS - SETTINGS[algo, baseline]):
    value = 2 if name in PPO_INTS else True if name in BOOLS else 0.5
    with pytest.raises(ValueError, match=f"{name} is not a setting of algo='{algo}'"):
      TrainConfig(algo=algo, baseline=kind, **{name: value})
    with pytest.raises(AttributeError, match=name):
      getattr(TrainConfig(algo=algo, baseline=kind), name)


@pytest.mark.parametrize("settings, message", [
    (dict(clip_eps=0.1), "clip_eps is not a setting of algo='reinforce' with baseline='none'"),
    (dict(ema_decay=0.5), "ema_decay is not a setting of algo='reinforce'"),
    (dict(baseline="constant", ema_decay=0.5), "baseline='constant'"),
    (dict(algo="a2c", num_epochs=2), "num_epochs is not a setting of algo='a2c'"),
    (dict(algo="a2c", baseline="ema"), "baseline='ema' applies to algo='reinforce'"),
    (dict(seed=1), "unknown setting 'seed'"),
    (dict(algorithm=hparams.A2C(), algo="ppo"), "contradicts"),
    (dict(algorithm=hparams.PPO(), baseline="ema"), "baseline applies to algo='reinforce'"),
    (dict(algorithm="ppo"), "algorithm must be a hyperparameter value")])
def test_inert_and_unknown_names_are_errors(settings, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    TrainConfig(**settings)


def test_shortcuts_and_algorithm_values_are_the_same_config():
  assert TrainConfig(algo="ppo", clip_eps=0.1, num_epochs=2) == TrainConfig(
      algorithm=hparams.PPO(clip_eps=0.1, num_epochs=2))
  assert TrainConfig(baseline="ema", ema_decay=0.5) == TrainConfig(
      algorithm=hparams.Reinforce(baseline=hparams.EMA(decay=0.5)))
  config = TrainConfig(algorithm=hparams.PPO(), clip_eps=0.3)  # a value, then shortcuts
  assert config.algorithm == hparams.PPO(clip_eps=0.3) and config.clip_eps == 0.3
  assert TrainConfig(baseline="value", value_coef=2.0).algorithm.baseline == hparams.Value(2.0)


def test_replace_keeps_shared_settings_and_drops_the_old_algorithms():
  ppo = TrainConfig(algo="ppo", num_envs=8, gamma=0.9, clip_eps=0.1, num_minibatches=2)
  a2c = ppo.replace(algo="a2c")
  assert a2c.algorithm == hparams.A2C(gamma=0.9) and a2c.num_envs == 8
  reinforce = ppo.replace(algo="reinforce", baseline="ema", ema_decay=0.5)
  assert reinforce.algorithm == hparams.Reinforce(gamma=0.9, baseline=hparams.EMA(0.5))
  assert reinforce.replace(baseline="constant").algorithm == hparams.Reinforce(
      gamma=0.9, baseline=hparams.Constant())
  assert reinforce.replace(ema_decay=0.7).ema_decay == 0.7
  assert reinforce.replace(num_envs=4).algorithm == reinforce.algorithm
  with pytest.raises(ValueError, match="clip_eps is not a setting"):
    ppo.replace(algo="reinforce", clip_eps=0.1)
  with pytest.raises(ValueError, match="ema_decay is not a setting"):
    reinforce.replace(baseline="none", ema_decay=0.5)


# --- Records: to_dict / from_dict --------------------------------------------------------


@pytest.mark.parametrize("algo, baseline", list(SETTINGS))
def test_to_dict_and_from_dict_round_trip_through_json(algo, baseline):
  kind = baseline if algo == "reinforce" else None
  default = TrainConfig(algo=algo, baseline=kind)
  settings = {}
  for name in sorted(SETTINGS[algo, baseline]):  # values other than the defaults
    if name in BOOLS:
      settings[name] = not getattr(default, name)
    else:
      settings[name] = 2 if name in PPO_INTS else 0.25
  assert all(getattr(default, k) != v for k, v in settings.items())
  config = TrainConfig(algo=algo, baseline=kind,
                       num_envs=8, rollout_length=4, num_steps=9, learning_rate=1e-3,
                       max_grad_norm=0.5, anneal_lr=True, **settings)
  record = json.loads(json.dumps(config.to_dict()))
  assert TrainConfig.from_dict(record) == config
  assert record["algo"] == algo and record["baseline"] == baseline
  assert {k: record[k] for k in settings} == settings


# What `reinforce-jax train` wrote before hyperparameters were declared per
# algorithm: every field of every algorithm, whatever the run used.
LEGACY = {
    "env": "cartpole", "seed": 0, "num_seeds": 1, "hidden": [64, 64], "stop_at_return": None,
    "checkpoint_every": None, "num_envs": 8, "rollout_length": 4, "num_epochs": 2,
    "num_minibatches": 2, "num_steps": 10, "gamma": 0.9, "gae_lambda": 0.8, "ema_decay": 0.7,
    "baseline_constant": 0.5, "entropy_coef": 0.01, "value_coef": 0.25, "clip_eps": 0.1,
    "learning_rate": 0.001, "max_grad_norm": None, "algo": "reinforce", "baseline": "ema",
    "normalize_advantages": True, "clip_value": False, "anneal_lr": False,
}


@pytest.mark.parametrize("changes, algorithm", [
    ({}, hparams.Reinforce(gamma=0.9, entropy_coef=0.01, normalize_advantages=True,
                           baseline=hparams.EMA(0.7))),
    ({"baseline": "constant"}, hparams.Reinforce(
        gamma=0.9, entropy_coef=0.01, normalize_advantages=True,
        baseline=hparams.Constant(0.5))),
    ({"baseline": "value"}, hparams.Reinforce(
        gamma=0.9, entropy_coef=0.01, normalize_advantages=True, baseline=hparams.Value(0.25))),
    ({"baseline": "none"}, hparams.Reinforce(gamma=0.9, entropy_coef=0.01,
                                             normalize_advantages=True)),
    ({"algo": "a2c", "baseline": "none"}, hparams.A2C(
        gamma=0.9, gae_lambda=0.8, entropy_coef=0.01, value_coef=0.25,
        normalize_advantages=True)),
    ({"algo": "ppo", "baseline": "none"}, hparams.PPO(
        gamma=0.9, gae_lambda=0.8, entropy_coef=0.01, value_coef=0.25, clip_eps=0.1,
        clip_value=False, num_epochs=2, num_minibatches=2, normalize_advantages=True)),
    # Old records of ppo and a2c runs may name a baseline the run did not use.
    ({"algo": "ppo", "baseline": "ema"}, hparams.PPO(
        gamma=0.9, gae_lambda=0.8, entropy_coef=0.01, value_coef=0.25, clip_eps=0.1,
        clip_value=False, num_epochs=2, num_minibatches=2, normalize_advantages=True)),
])
def test_from_dict_reads_records_that_hold_every_legacy_field(changes, algorithm):
  config = TrainConfig.from_dict({**LEGACY, **changes})
  assert config.algorithm == algorithm
  assert config.run_settings() == dict(num_envs=8, rollout_length=4, num_steps=10,
                                       learning_rate=0.001, max_grad_norm=None, anneal_lr=False,
                                       normalize_observations=False)
  again = TrainConfig.from_dict(config.to_dict())
  assert again == config


def test_from_dict_still_checks_the_values_it_uses():
  with pytest.raises(ValueError, match="ema_decay must be in"):
    TrainConfig.from_dict({**LEGACY, "ema_decay": 1.5})
  with pytest.raises(ValueError, match="algo must be one of"):
    TrainConfig.from_dict({**LEGACY, "algo": "sac"})
  # ...and not those it ignores: a ppo field of a reinforce record.
  assert TrainConfig.from_dict({**LEGACY, "clip_eps": -1.0}).algo == "reinforce"


# --- Hashable and static --------------------------------------------------------------


def test_configs_are_hashable_and_equal_by_value():
  a = TrainConfig(baseline="ema", ema_decay=0.5, gamma=np.float32(0.5))
  b = TrainConfig(algorithm=hparams.Reinforce(gamma=0.5, baseline=hparams.EMA(0.5)))
  assert a == b and hash(a) == hash(b) and len({a, b}) == 1
  assert a != a.replace(ema_decay=0.6) and a != a.replace(baseline="constant")
  assert len({TrainConfig(algo=algo) for algo in ("reinforce", "a2c", "ppo")}) == 3
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.num_envs = 2  # type: ignore[misc]
  # A config is a static argument of jit: equal configs share one trace.
  traces = []

  def scale(x, config):
    traces.append(config)
    return x * config.gamma
  scale = jax.jit(scale, static_argnums=1)
  assert float(scale(2.0, a)) == 1.0 and float(scale(2.0, b)) == 1.0
  assert len(traces) == 1


def test_numpy_and_jax_scalars_are_accepted_as_floats():
  for value in (jnp.float32(3e-4), np.float32(3e-4), jnp.asarray(3e-4, jnp.bfloat16)):
    config = TrainConfig(learning_rate=value, baseline="ema", ema_decay=value * 1000)
    assert type(config.learning_rate) is float and abs(config.learning_rate - 3e-4) < 1e-5
    assert type(config.ema_decay) is float
    assert hash(config) == hash(config.replace(learning_rate=config.learning_rate))


@pytest.mark.parametrize("module", ["config", "hparams"])
def test_config_and_hparams_import_without_jax(module):
  """The CLI parses arguments into a TrainConfig before it pays for importing JAX."""
  code = (
      f"import sys, reinforce_jax.rl.{module}\n"
      "from reinforce_jax.rl.config import TrainConfig\n"
      "TrainConfig(algo='ppo', gamma=0.5, clip_eps=0.1, learning_rate=1e-3).to_dict()\n"
      "TrainConfig(baseline='ema', ema_decay=0.5).replace(algo='a2c')\n"
      "heavy = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')]\n"
      "assert not heavy, heavy\n")
  subprocess.run([sys.executable, "-c", code], check=True)


# --- traced: the hyperparameters a train step reads from its state ---------------------


@pytest.mark.parametrize("name, value", [
    ("gamma", 1.5), ("gamma", True), ("gamma", "0.5"), ("gae_lambda", float("nan")),
    ("ema_decay", -0.5), ("ema_decay", 1.5), ("entropy_coef", -1.0), ("clip_eps", 1e300),
    ("baseline_constant", float("inf")), ("value_coef", jnp.array([0.5, -1.0])),
    ("entropy_coef", np.array([0.0, np.nan])), ("gamma", jnp.array([True, False]))])
def test_traced_validates_concrete_overrides(name, value):
  with pytest.raises(ValueError, match=f"{name} must"):
    traced(_config(**{name: 0.5}).algorithm, **{name: value})


def test_traced_refuses_a_name_the_value_lacks():
  with pytest.raises(ValueError, match="clip_eps: not a hyperparameter of algo='reinforce'"):
    traced(hparams.Reinforce(), clip_eps=0.1)
  with pytest.raises(ValueError, match="ema_decay: not a hyperparameter"):
    traced(hparams.Reinforce(baseline=hparams.Constant()), ema_decay=0.5)


def test_traced_takes_good_and_traced_overrides():
  algorithm = TrainConfig().algorithm
  hp = traced(algorithm, gamma=1, entropy_coef=jnp.array([0.0, 0.01]))
  assert float(hp.gamma) == 1.0 and hp.entropy_coef.shape == (2,)
  assert hp.gamma.dtype == jnp.float32 and type(hp) is hparams.Reinforce
  under_jit = jax.jit(lambda g: traced(algorithm, gamma=g).gamma)(0.5)
  under_vmap = jax.vmap(lambda e: traced(algorithm, entropy_coef=e).entropy_coef)(
      jnp.array([0.0, 0.25]))
  assert float(under_jit) == 0.5
  np.testing.assert_array_equal(under_vmap, [0.0, 0.25])


@pytest.mark.parametrize("name", [n for n in SWEEPABLE if n != "learning_rate"])
def test_traced_sets_every_sweepable_hyperparameter(name):
  """Each sweepable name reaches its leaf (a baseline's too); structure stays static."""
  config = _config(**{name: 0.5})
  batch = jax.vmap(lambda v: traced(config.algorithm, **{name: v}))(jnp.array([0.25, 0.75]))
  np.testing.assert_array_equal(batch.flat()[name], [0.25, 0.75])
  for other, value in config.algorithm.flat().items():
    if other != name:
      np.testing.assert_array_equal(batch.flat()[other], np.float32([value, value]))
  assert jax.tree.structure(batch) == jax.tree.structure(traced(config.algorithm))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(batch))
  assert len(sweep_grid(config, {name: [0.25, 0.75]})) == 2


@pytest.mark.parametrize("value", [np.array([0.1, np.inf]), np.array([0.1, 1e300]),
                                   np.array(np.nan), np.float32(np.inf)])
def test_numpy_arrays_in_hyperparameters_are_checked_entry_by_entry(value):
  with pytest.raises(ValueError, match="clip_eps must be finite and non-negative"):
    hparams.PPO(clip_eps=value)
  with pytest.raises(ValueError, match="clip_eps must hold real numbers"):
    hparams.PPO(clip_eps=np.array([True, False]))


@pytest.mark.parametrize("algorithm", [
    lambda: hparams.PPO(clip_eps=jnp.asarray(jnp.inf)),
    lambda: hparams.A2C(gamma=jnp.asarray(jnp.nan, jnp.bfloat16)),
    lambda: hparams.Reinforce(baseline=hparams.Constant(jnp.asarray([0.0, -jnp.inf])))])
def test_train_config_checks_jax_arrays_in_its_algorithm(algorithm):
  """A JAX array in a hyperparameter value is read by TrainConfig (the class itself does not
  read device arrays: a train step's output would wait for its computation)."""
  with pytest.raises(ValueError, match=r"^(clip_eps|gamma|baseline_constant) must be "
                                       r"(finite|in \[0, 1\]).*got"):
    TrainConfig(algorithm=algorithm())
  good = TrainConfig(algorithm=hparams.PPO(clip_eps=jnp.asarray(0.1)))
  assert float(good.clip_eps) == pytest.approx(0.1)
