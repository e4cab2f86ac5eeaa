"""Options for matching other PPO implementations: the policies' weight initialiser and
whether a time-limit cut bootstraps from the value of the final observation."""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.cli import parsing
from reinforce_jax.cli.checks import _ADDED_FIELDS
from reinforce_jax.rl import algorithms, hparams
from reinforce_jax.rl.config import TrainConfig
from reinforce_jax.rl.policies import MLP, CategoricalPolicy, GaussianPolicy, GRUPolicy
from reinforce_jax.rl.returns import discounted_returns, gae_advantages
from reinforce_jax.xla.initializers import orthogonal

# --- bootstrap_truncation ------------------------------------------------------------


class _Traj(NamedTuple):
  """The trajectory fields the advantage functions read."""

  reward: jax.Array
  value: jax.Array
  terminated: jax.Array
  truncated: jax.Array
  bootstrap_value: jax.Array


def _trajectory(T=6, B=3):
  """Random rewards and values; episode ends at chosen steps, every truncation with a
  nonzero value of its final observation."""
  k = jax.random.split(jax.random.key(7), 3)
  terminated = np.zeros((T, B), bool)
  truncated = np.zeros((T, B), bool)
  terminated[1, 0] = True
  truncated[3, 0] = truncated[2, 1] = truncated[T - 1, 2] = True
  bootstrap = jnp.where(truncated, 1.0 + jax.random.uniform(k[0], (T, B)), 0.0)
  return _Traj(reward=jax.random.normal(k[1], (T, B)), value=jax.random.normal(k[2], (T, B)),
               terminated=jnp.asarray(terminated), truncated=jnp.asarray(truncated),
               bootstrap_value=bootstrap)


def _marked_terminated(traj: _Traj) -> _Traj:
  """The same trajectory with every truncated step marked terminated instead."""
  return traj._replace(terminated=traj.terminated | traj.truncated,
                       truncated=jnp.zeros_like(traj.truncated))


_LAST = jnp.array([0.3, -0.7, 1.1])
_ALGOS = [
    (hparams.PPO, {}, algorithms.gae),
    (hparams.A2C, {}, algorithms.gae),
    (hparams.Reinforce, {"baseline": hparams.Value()}, algorithms.reward_to_go),
]


@pytest.mark.parametrize("cls, extra, advantages", _ALGOS)
def test_without_bootstrap_a_truncated_step_is_a_terminated_one(cls, extra, advantages):
  traj = _trajectory()
  cut = advantages(cls(bootstrap_truncation=False, **extra), (), traj, _LAST)
  as_terminated = advantages(cls(**extra), (), _marked_terminated(traj), _LAST)
  bootstrapped = advantages(cls(**extra), (), traj, _LAST)
  for got, want, default in zip(cut, as_terminated, bootstrapped, strict=True):
    np.testing.assert_array_equal(got, want)
    # V(final observation) != 0 at every truncation: the default differs there.
    truncated = np.asarray(traj.truncated)
    assert np.all(np.asarray(got)[truncated] != np.asarray(default)[truncated])
  # Nothing after the last episode end of a column changes.
  np.testing.assert_array_equal(cut[1][4:, 0], bootstrapped[1][4:, 0])


@pytest.mark.parametrize("cls, extra, advantages", _ALGOS)
def test_the_default_bootstraps_at_truncation_as_before(cls, extra, advantages):
  traj = _trajectory()
  hp = cls(**extra)
  assert hp.bootstrap_truncation is True
  got = advantages(hp, (), traj, _LAST)
  if advantages is algorithms.gae:
    want = gae_advantages(traj.reward, traj.value, traj.terminated, traj.truncated, _LAST,
                          gamma=hp.gamma, lambda_=hp.gae_lambda,
                          bootstrap_value_t=traj.bootstrap_value)
  else:
    returns = discounted_returns(traj.reward, traj.terminated, traj.truncated,
                                 gamma=hp.gamma, bootstrap_value_t=traj.bootstrap_value,
                                 last_value=_LAST)
    want = (returns - traj.value, returns)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_array_equal(g, w)


def test_value_target_at_a_truncated_last_step_by_hand():
  # One step, truncated, reward 1, V(s) = 0.5, V(final observation) = 2, gamma 0.5.
  traj = _Traj(reward=jnp.ones((1, 1)), value=jnp.full((1, 1), 0.5),
               terminated=jnp.zeros((1, 1), bool), truncated=jnp.ones((1, 1), bool),
               bootstrap_value=jnp.full((1, 1), 2.0))
  last = jnp.full((1,), 8.0)  # after the rollout's end: not read at an episode end
  for flag, target in ((True, 1.0 + 0.5 * 2.0), (False, 1.0)):
    hp = hparams.PPO(gamma=0.5, bootstrap_truncation=flag)
    advantage, value_target = algorithms.gae(hp, (), traj, last)
    assert float(value_target[0, 0]) == target and float(advantage[0, 0]) == target - 0.5


def test_traced_hyperparameters_keep_the_setting_inside_jit():
  traj = _trajectory()
  hp = algorithms.traced(hparams.PPO(bootstrap_truncation=False))
  assert hp.bootstrap_truncation is False and isinstance(hp.gamma, jax.Array)
  got = jax.jit(algorithms.gae)(hp, (), traj, _LAST)
  want = algorithms.gae(hparams.PPO(), (), _marked_terminated(traj), _LAST)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)


def test_train_config_shortcut_cli_flag_and_old_records():
  config = TrainConfig(algo="ppo", bootstrap_truncation=False)
  assert config.algorithm == hparams.PPO(bootstrap_truncation=False)
  assert config.bootstrap_truncation is False
  assert TrainConfig.from_dict(config.to_dict()) == config
  assert algorithms.build(config.algorithm).hparams.bootstrap_truncation is False
  for algo in ("reinforce", "a2c"):
    assert TrainConfig(algo=algo).bootstrap_truncation is True
  with pytest.raises(ValueError, match="bootstrap_truncation must be a bool, got 0"):
    TrainConfig(algo="a2c", bootstrap_truncation=0)
  parser = parsing.build_parser()
  for argv, value in ((["--no-bootstrap-truncation"], False), (["--bootstrap-truncation"], True),
                      ([], None)):
    assert parser.parse_args(["train", "bandit", *argv]).bootstrap_truncation is value
  assert ("--bootstrap-truncation", "bootstrap_truncation") in parsing.RUN_OPTIONS
  # A run recorded before the setting existed bootstrapped at truncation.
  assert _ADDED_FIELDS["bootstrap_truncation"] is True


# --- The policies' weight initialiser ----------------------------------------------------


def _stacked(init):
  def stacked(key, shape, dtype=jnp.float32):
    return jnp.stack([init(k, shape[1:], dtype) for k in jax.random.split(key, shape[0])])
  return stacked


_ORTHOGONAL = (orthogonal(np.sqrt(2.0)), orthogonal(0.01), orthogonal(1.0))


class _RefMLP(nn.Module):
  hidden: tuple
  kernels: Any  # (hidden, output, value) kernel initialisers; None: flax's Dense default

  @nn.compact
  def __call__(self, x):
    kw = {} if self.kernels is None else {"kernel_init": self.kernels[0]}
    for i, width in enumerate(self.hidden):
      x = nn.tanh(nn.Dense(width, name=f"hidden_{i}", **kw)(x))
    return x


class _RefTwin(nn.Module):
  hidden: tuple
  kernels: Any

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.lecun_normal() if self.kernels is None else self.kernels[0]
    h = jnp.broadcast_to(x, (2, *x.shape))
    for i, width in enumerate(self.hidden):
      kernel = self.param(f"hidden_{i}_kernel", _stacked(init), (2, h.shape[-1], width))
      bias = self.param(f"hidden_{i}_bias", nn.initializers.zeros, (2, width))
      h = nn.tanh(jnp.einsum("kbi,kio->kbo", h, kernel) + bias[:, None])
    return h[0], h[1]


class _RefConv(nn.Module):
  kernels: Any

  @nn.compact
  def __call__(self, x):
    kw = {} if self.kernels is None else {"kernel_init": self.kernels[0]}
    x = nn.relu(nn.Conv(16, (3, 3), strides=1, padding="VALID", name="conv", **kw)(x))
    return x.reshape(x.shape[:-3] + (-1,))


class _Reference(nn.Module):
  """The built-in feedforward policies' layers, written out with plain flax layers."""

  out: int
  hidden: tuple
  kernels: Any
  value: str | None = None
  torso: str = "mlp"
  gaussian: bool = False
  state_dependent_std: bool = False
  init_log_std: float = 0.0

  def dense(self, width, which, name, **kw):
    init = {} if self.kernels is None else {"kernel_init": self.kernels[which]}
    return nn.Dense(width, name=name, **init, **kw)

  def encode(self, obs, name):
    return _RefConv(self.kernels, name=name)(obs) if self.torso == "cnn" else obs

  @nn.compact
  def __call__(self, obs):
    x = self.encode(obs, "torso")
    if self.value == "twin":
      features, value_features = _RefTwin(self.hidden, self.kernels, name="twin_trunk")(x)
    else:
      features = _RefMLP(self.hidden, self.kernels, name="trunk")(x)
    head = self.dense(self.out, 1, "loc" if self.gaussian else "logits")(features)
    if self.gaussian:
      if self.state_dependent_std:
        head = self.dense(self.out, 1, "log_std",
                          bias_init=nn.initializers.constant(self.init_log_std))(features)
      else:
        head = head + self.param("log_std", nn.initializers.constant(self.init_log_std),
                                 (self.out,))
    if self.value is None:
      return head
    if self.value == "separate":
      value_features = _RefMLP(self.hidden, self.kernels, name="value_trunk")(
          self.encode(obs, "value_torso"))
    elif self.value == "shared":
      value_features = features
    return head, self.dense(1, 2, "value")(value_features)


class _RefGRU(nn.Module):
  kernels: Any
  out: int = 3
  hidden: int = 8

  def dense(self, width, which, name):
    init = {} if self.kernels is None else {"kernel_init": self.kernels[which]}
    return nn.Dense(width, name=name, **init)

  @nn.compact
  def __call__(self, carry, obs):
    x = nn.relu(self.dense(self.hidden, 0, "embed")(obs))
    carry, features = nn.GRUCell(self.hidden, recurrent_kernel_init=orthogonal(),
                                 name="gru")(carry, x)
    critic = nn.tanh(self.dense(self.hidden, 0, "value_hidden")(features))
    return self.dense(self.out, 1, "logits")(features), self.dense(1, 2, "value")(critic)


def _case(name: str, initializer: str):
  """`(policy, the same network written out, init arguments)` of a network by name."""
  kernels = {"orthogonal": _ORTHOGONAL, "lecun_normal": None}[initializer]
  obs, image = jnp.zeros((2, 4)), jnp.zeros((2, 5, 5, 2))
  if name == "gru":
    policy = GRUPolicy(3, hidden=8, initializer=initializer)
    return policy, _RefGRU(kernels), (policy.initialize_carry((2,)), obs)
  if name == "logits_scale":
    return (CategoricalPolicy(3, hidden=(8,), logits_scale=0.5),
            _Reference(3, (8,), (_ORTHOGONAL[0], orthogonal(0.5), _ORTHOGONAL[2])), (obs,))
  if name.startswith("gaussian"):
    args = dict(value="separate", state_dependent_std=name.endswith("state_dependent"),
                init_log_std=-0.5)
    return (GaussianPolicy(2, hidden=(8,), initializer=initializer, **args),
            _Reference(2, (8,), kernels, gaussian=True, **args), (obs,))
  value, _, torso = name.partition("+")
  args = dict(value=None if value == "none" else value, torso=torso or "mlp")
  return (CategoricalPolicy(3, hidden=(8,), initializer=initializer, **args),
          _Reference(3, (8,), kernels, **args), (image if torso else obs,))


_NETWORKS = ["none", "shared", "separate", "twin", "separate+cnn", "gaussian",
             "gaussian_state_dependent", "gru"]


def _assert_same_params(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def _check_case(name: str, initializer: str):
  """The policy's parameters equal, bit for bit, those of the network written out."""
  policy, reference, args = _case(name, initializer)
  params, expected = jax.jit(lambda key: (policy.init(key, *args), reference.init(key, *args)))(
      jax.random.key(3))
  _assert_same_params(params, expected)
  return params


def test_orthogonal_default_is_unchanged_bit_for_bit():
  assert CategoricalPolicy(2).initializer == GaussianPolicy(2).initializer == "orthogonal"
  assert GRUPolicy(2).initializer == MLP((2,)).initializer == "orthogonal"
  _check_case("separate", "orthogonal")


def test_lecun_normal_is_flax_s_default_dense():
  _check_case("separate", "lecun_normal")


def test_the_gaussian_log_std_starts_at_init_log_std_whatever_the_initializer():
  params = _check_case("gaussian_state_dependent", "lecun_normal")["params"]
  np.testing.assert_array_equal(params["log_std"]["bias"], np.full(2, -0.5, np.float32))


@pytest.mark.slow  # about a second per network, most of it compiling the initialisers
@pytest.mark.parametrize("name, initializer", [
    *((name, init) for name in _NETWORKS for init in ("orthogonal", "lecun_normal")),
    ("logits_scale", "orthogonal")])
def test_every_network_starts_as_written_out(name, initializer):
  params = _check_case(name, initializer)["params"]
  if name.startswith("gaussian"):
    log_std = params["log_std"]
    np.testing.assert_array_equal(log_std["bias"] if name.endswith("dependent") else log_std,
                                  np.full(2, -0.5, np.float32))


def test_lecun_normal_kernels_have_variance_one_over_fan_in_and_zero_biases():
  # A convolution starts as flax's nn.Conv does: test_every_network_starts_as_written_out.
  policy = CategoricalPolicy(64, hidden=(128,), value="shared", initializer="lecun_normal")
  params = jax.jit(policy.init)(jax.random.key(8), jnp.zeros((1, 256)))
  kernels = biases = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    leaf = np.asarray(leaf, np.float64)
    if name.endswith("['bias']"):
      np.testing.assert_array_equal(leaf, 0.0)
      biases += 1
    else:
      fan_in = leaf.shape[0]  # [in, out]
      # Within 4 standard errors of the sample variance and mean of `leaf.size` draws.
      assert abs(leaf.var() * fan_in - 1) < 4 * np.sqrt(2 / leaf.size), (name, leaf.shape)
      assert abs(leaf.mean()) * np.sqrt(fan_in) < 4 / np.sqrt(leaf.size), name
      kernels += 1
  assert kernels == biases == 3  # the hidden layer, logits, value


def test_initializer_as_three_kernel_initializers():
  initializers = (nn.initializers.zeros, nn.initializers.constant(0.5),
                  nn.initializers.constant(2.0))
  policy = CategoricalPolicy(3, hidden=(4,), value="twin", initializer=initializers)
  params = jax.jit(policy.init)(jax.random.key(0), jnp.zeros((2, 5)))["params"]
  np.testing.assert_array_equal(params["twin_trunk"]["hidden_0_kernel"], 0.0)
  np.testing.assert_array_equal(params["logits"]["kernel"], 0.5)
  np.testing.assert_array_equal(params["value"]["kernel"], 2.0)


@pytest.mark.parametrize("make", [
    lambda init: CategoricalPolicy(2, initializer=init),
    lambda init: GaussianPolicy(2, initializer=init, value="twin"),
    lambda init: GRUPolicy(2, hidden=4, initializer=init),
    lambda init: MLP((4,), initializer=init),
])
@pytest.mark.parametrize("bad", ["xavier", "Orthogonal", None, (orthogonal(),) * 2,
                                 ("orthogonal", "orthogonal", "orthogonal")])
def test_a_bad_initializer_is_named(make: Callable, bad):
  module = make(bad)
  obs = jnp.zeros((2, 3))
  args = (module.initialize_carry((2,)), obs) if isinstance(module, GRUPolicy) else (obs,)
  with pytest.raises(ValueError, match=r"initializer must be one of \('orthogonal', "
                                       r"'lecun_normal'\) or a tuple \(hidden, output, value\)"):
    module.init(jax.random.key(0), *args)


def test_logits_scale_needs_the_orthogonal_initializer():
  with pytest.raises(ValueError, match="logits_scale=0.5 scales the orthogonal initialisation"):
    CategoricalPolicy(2, logits_scale=0.5, initializer="lecun_normal").init(
        jax.random.key(0), jnp.zeros((1, 3)))
