"""Policies: what maps observations to a distrax distribution (and a value).

A policy maps observations `[B, ...]` to a distribution with batch shape
`[B]`, or, when it carries a value head, to `(distribution, value)` with
`value` of shape `[B]`. `as_policy` turns each of these into one `Policy`:

  * a flax linen module (`CategoricalPolicy`, `GaussianPolicy`, your own);
  * a flax NNX module (`from_nnx`): split once into a graph and a state, and
    merged inside the traced step, so nothing walks the object graph per step;
  * a plain function `apply(params, obs)` with its parameters (`from_function`);
  * a recurrent module: `__call__(carry, obs) -> (carry, output)` and
    `initialize_carry(batch_shape)` (`GRUPolicy`). Its carry travels in the
    rollout state and is reset where an episode ends.

The hot path is a pure `apply(params, carry, obs)` under plain `jax.jit`.

Sampling and scoring belong to the distribution: one with methods
`sample_and_score(seed)` and `score(sample)` (`Categorical`,
`SquashedGaussian`) takes its own fast path in the rollout; any other distrax
distribution is sampled, cut from the graph and scored with `log_prob`.

Value heads (`value=`):
  * `None`: no critic (plain REINFORCE);
  * `"shared"`: a linear value head on the policy's last hidden layer;
  * `"separate"`: its own MLP with the same hidden widths;
  * `"twin"`: the same two networks as `"separate"`, computed as one `TwinMLP`
    whose layers are single batched products over stacked `[2, in, out]`
    weights (one matrix product per layer instead of two).

Observations with more than one axis per environment (images `[H, W, C]`):
the built-in policies read one vector per environment, so pass `flatten=True`
(each observation becomes one vector) or `torso="cnn"` (a 3x3 convolution with
16 channels and a ReLU, flattened, before the MLP: the MinAtar network).
`make_train_step` refuses an MLP policy without either on such observations.

Weight initialisation (`initializer=`; biases always start at zero):
  * `"orthogonal"` (the default): orthogonal hidden and convolution kernels
    with scale sqrt(2), output layer 0.01 (near-uniform first actions), value
    head 1: the convention of CleanRL's and PureJaxRL's PPO;
  * `"lecun_normal"`: every kernel, heads included, LeCun normal (variance
    `1 / fan_in`): what a plain `nn.Dense` or `nn.Conv` starts from (rejax);
  * a tuple `(hidden, output, value)` of kernel initialisers `init(key, shape,
    dtype)`. A GRU cell's kernels keep flax's defaults, and a Gaussian
    policy's initial log standard deviation is `init_log_std`, in every case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from reinforce_jax._src import categorical
from reinforce_jax.xla.initializers import orthogonal

__all__ = [
    "as_policy",
    "Categorical",
    "CategoricalPolicy",
    "from_function",
    "from_nnx",
    "GaussianPolicy",
    "GRUPolicy",
    "MLP",
    "Policy",
    "sample_and_score",
    "score",
    "split_output",
    "SquashedGaussian",
    "TwinMLP",
]

VALUE_HEADS = (None, "shared", "separate", "twin")
TORSOS = ("mlp", "cnn")
INITIALIZERS = ("orthogonal", "lecun_normal")


class Categorical(distrax.Categorical):
  """A `distrax.Categorical` whose logits are normalised without a reduction.

  `distrax.Categorical(logits=...)` normalises with `jax.nn.log_softmax`, whose
  reductions over a small action axis become separate kernels on XLA:CPU and
  cut the fusions of a cheap train step (see `reinforce_jax/categorical.py`).
  This subclass normalises with unrolled elementwise operations when there are
  at most 16 categories, and is otherwise the same distribution with the same
  methods. Return it from your own policy module to get the same fast path as
  `CategoricalPolicy`.
  """

  def __init__(self, logits=None, probs=None, dtype=int):
    super().__init__(logits=logits, probs=probs, dtype=dtype)
    if logits is not None:
      # distrax's own normalisation above is left unused, and XLA drops it.
      self._logits = categorical.log_softmax(jnp.asarray(logits))

  def sample_and_score(self, seed: jax.Array):
    """`(env_action, sample, log_prob, entropy)`: one draw per batch entry.

    The draw has no gradient path; `log_prob` and `entropy` are differentiable
    in the logits. Up to 16 categories, by inverse CDF without a reduction.
    """
    if self.num_categories <= categorical.UNROLL_MAX:
      action, log_prob, entropy = categorical.categorical_statistics(self.logits, seed)
      return action, action, log_prob, entropy
    action = jax.lax.stop_gradient(self.sample(seed=seed))
    log_prob, entropy = self.score(action)
    return action, action, log_prob, entropy

  def score(self, sample: jax.Array):
    """`(log_prob, entropy)` of `sample`, differentiable in the logits."""
    if self.num_categories <= categorical.UNROLL_MAX:
      return categorical.categorical_score(self.logits, sample)
    return self.log_prob(sample), self.entropy()


class SquashedGaussian(distrax.Transformed):
  """A diagonal Gaussian squashed by `tanh` into a box: `distrax.Transformed` that keeps
  the pre-`tanh` draw `u` as its sample.

  Inverting `tanh` near the bounds loses precision, so `score(u)` evaluates
  `log_prob = base.log_prob(u) - log|det J(u)|` at the stored `u` (exact change
  of variables, no inverse); the environment receives `bijector.forward(u)`.
  The entropy is the base distribution's (the squashed one has no closed form).
  """

  def sample_and_score(self, seed: jax.Array):
    sample = jax.lax.stop_gradient(self.distribution.sample(seed=seed))
    env_action = jax.lax.stop_gradient(self.bijector.forward(sample))
    log_prob, entropy = self.score(sample)
    return env_action, sample, log_prob, entropy

  def score(self, sample: jax.Array):
    log_prob = self.distribution.log_prob(sample) - self.bijector.forward_log_det_jacobian(
        sample)
    return log_prob, self.distribution.entropy()


def sample_and_score(dist, seed: jax.Array):
  """`(env_action, sample, log_prob, entropy)` of one draw from any distrax distribution.

  `env_action` goes to the environment; `sample` is what `score` evaluates
  again later (PPO's epochs; the same array unless the distribution keeps a
  pre-transform draw); neither has a gradient path.
  """
  if hasattr(dist, "sample_and_score"):
    return dist.sample_and_score(seed)
  sample = jax.lax.stop_gradient(dist.sample(seed=seed))
  log_prob, entropy = score(dist, sample)
  return sample, sample, log_prob, entropy


def score(dist, sample: jax.Array):
  """`(log_prob, entropy)` of a sample from `sample_and_score`, differentiable in `dist`."""
  if hasattr(dist, "score"):
    return dist.score(sample)
  return dist.log_prob(sample), dist.entropy()


def split_output(output) -> tuple[Any, jax.Array | None]:
  """A policy returns a distribution or `(distribution, value)`: `(dist, value or None)`."""
  if isinstance(output, tuple):
    dist, value = output
    return dist, value
  return output, None


class Policy(NamedTuple):
  """A policy as three pure functions; `as_policy` builds one from a module or function.

  `init(key, obs [B, ...]) -> params`; `initial_carry(batch_size) -> carry` (`()`
  for a feedforward policy); `apply(params, carry, obs) -> (carry, output)`,
  where `output` is a distribution or `(distribution, value)`.
  """

  init: Callable[[jax.Array, jax.Array], Any]
  apply: Callable[[Any, Any, jax.Array], tuple[Any, Any]]
  initial_carry: Callable[[int], Any] = lambda batch_size: ()
  recurrent: bool = False


def as_policy(policy) -> Policy:
  """A `Policy` from a linen module (feedforward or recurrent), an NNX module or a `Policy`.

  Raises:
    ValueError: for a plain function (wrap it with `from_function`, which takes
      its parameters) or anything else.
  """
  if isinstance(policy, Policy):
    return policy
  if isinstance(policy, nn.Module):
    if hasattr(policy, "initialize_carry"):
      return Policy(
          init=lambda key, obs: policy.init(key, policy.initialize_carry(obs.shape[:1]), obs),
          apply=policy.apply,
          initial_carry=lambda batch_size: policy.initialize_carry((batch_size,)),
          recurrent=True)
    return Policy(init=policy.init, apply=lambda params, carry, obs: (carry, policy.apply(
        params, obs)))
  try:
    from flax import nnx
  except ImportError:  # pragma: no cover - flax always ships nnx today
    nnx = None
  if nnx is not None and isinstance(policy, nnx.Module):
    return from_nnx(policy)
  if callable(policy):
    raise ValueError(
        f"{policy!r} is a plain function: a policy needs its parameters too; pass them as "
        "make_train_step(..., init_params=params), or the policy as "
        "reinforce_jax.rl.policies.from_function(apply, params)")
  raise ValueError(f"not a policy: {policy!r} (a flax module, an NNX module, a Policy, or "
                   "policies.from_function(apply, params))")


def from_function(apply: Callable[[Any, jax.Array], Any], params) -> Policy:
  """A policy from a plain `apply(params, obs)` and its parameters.

  Args:
    apply: maps `(params, obs [B, ...])` to a distrax distribution with batch
      shape `[B]`, or to `(distribution, value [B])`.
    params: the initial parameters, or a function `init(key, obs) -> params`
      (then each seed draws its own).
  """
  init = params if callable(params) else (lambda key, obs: params)
  return Policy(init=init, apply=lambda p, carry, obs: (carry, apply(p, obs)))


def from_nnx(module) -> Policy:
  """A policy from a flax NNX module `module(obs) -> output`, or a constructor of one.

  The module is split once (`nnx.split`) into a static graph and a state of
  arrays; the state is the policy's parameters, and `apply` merges them inside
  the traced step (`nnx.merge`), so the compiled step is a pure function of
  arrays and no Python walks the module's graph per step (`nnx.jit` would).

  Args:
    module: an `nnx.Module`, or a function `rngs -> nnx.Module`; with a
      constructor, `init(key)` builds the module from `nnx.Rngs(key)`, so each
      seed starts from its own parameters (an instance gives every seed its
      parameters).
  """
  from flax import nnx

  if isinstance(module, nnx.Module):
    graphdef, state = nnx.split(module)

    def init(key, obs):
      del key, obs
      return state
  else:
    graphdef = nnx.split(module(nnx.Rngs(0)))[0]

    def init(key, obs):
      del obs
      return nnx.split(module(nnx.Rngs(key)))[1]

  def apply(params, carry, obs):
    return carry, nnx.merge(graphdef, params)(obs)

  return Policy(init=init, apply=apply)


class _Kernels(NamedTuple):
  """The kernel initialisers of a built-in network's layers (biases start at zero)."""

  hidden: Callable[..., jax.Array]  # hidden and convolution layers
  output: Callable[..., jax.Array]  # the policy's output layer(s)
  value: Callable[..., jax.Array]   # the value head


def _kernels(initializer: Any, output_scale: float = 0.01) -> _Kernels:
  """The kernel initialisers that `initializer` names (see the module docstring).

  Raises:
    ValueError: for anything but a name in `INITIALIZERS` or a tuple of three
      initialisers.
  """
  if isinstance(initializer, str):
    if initializer == "orthogonal":
      return _Kernels(orthogonal(jnp.sqrt(2.0)), orthogonal(output_scale), orthogonal(1.0))
    if initializer == "lecun_normal":
      lecun = nn.initializers.lecun_normal()
      return _Kernels(lecun, lecun, lecun)
  elif (isinstance(initializer, tuple) and len(initializer) == 3
        and all(callable(init) for init in initializer)):
    return _Kernels(*initializer)
  raise ValueError(
      f"initializer must be one of {INITIALIZERS} or a tuple (hidden, output, value) of "
      f"kernel initialisers init(key, shape, dtype), got {initializer!r}")


class MLP(nn.Module):
  """Dense layers with an activation after each.

  `initializer`: `"orthogonal"` (the default: orthogonal(sqrt(2)) kernels,
  the CleanRL and PureJaxRL convention), `"lecun_normal"` (flax's `nn.Dense`
  default) or a tuple `(hidden, output, value)` of kernel initialisers, of
  which the first is used; biases start at zero.
  """

  hidden: Sequence[int]
  activation: Callable[[jax.Array], jax.Array] = nn.tanh
  initializer: Any = "orthogonal"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_init = _kernels(self.initializer).hidden
    for i, width in enumerate(self.hidden):
      x = self.activation(nn.Dense(width, kernel_init=kernel_init, name=f"hidden_{i}")(x))
    return x


def _stacked(init):
  """`init` applied to each `[in, out]` slice of a `[k, in, out]` parameter."""
  def stacked(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, shape[0])
    return jnp.stack([init(k, shape[1:], dtype) for k in keys])
  return stacked


class TwinMLP(nn.Module):
  """Two MLPs of the same widths on the same input, each layer one batched product.

  Equal, as functions, to two `MLP`s (each slice of a stacked parameter is one
  network's layer, initialised the same way); on a CPU the `[2, B, 64] x
  [2, 64, 64]` product of a layer replaces two `[B, 64] x [64, 64]` ones.

  The input is one array both networks read, or a pair `(x_0, x_1)` of arrays
  of the same shape, one per network (each with its own convolutional torso).

  Attributes:
    hidden, activation, initializer: as in `MLP`; each network's slice of a
      kernel is initialised as its own `[in, out]` matrix.

  Returns:
    `(features_0, features_1)`, each `[..., hidden[-1]]` (the input when
    `hidden` is empty).
  """

  hidden: Sequence[int]
  activation: Callable[[jax.Array], jax.Array] = nn.tanh
  initializer: Any = "orthogonal"

  @nn.compact
  def __call__(self, x) -> tuple[jax.Array, jax.Array]:
    kernel_init = _stacked(_kernels(self.initializer).hidden)
    h = jnp.stack(x) if isinstance(x, tuple) else jnp.broadcast_to(x, (2, *x.shape))
    for i, width in enumerate(self.hidden):
      kernel = self.param(f"hidden_{i}_kernel", kernel_init, (2, h.shape[-1], width))
      bias = self.param(f"hidden_{i}_bias", nn.initializers.zeros, (2, width))
      bias = bias.reshape((2,) + (1,) * (h.ndim - 2) + (width,))
      h = self.activation(jnp.einsum("k...i,kio->k...o", h, kernel) + bias)
    return h[0], h[1]


class _ConvTorso(nn.Module):
  """One 3x3 convolution (stride 1, no padding), a ReLU, flattened: `[..., H, W, C]` to
  `[..., (H - 2) * (W - 2) * channels]` (the torso of the MinAtar network)."""

  channels: int = 16
  initializer: Any = "orthogonal"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Conv(self.channels, (3, 3), strides=1, padding="VALID",
                        kernel_init=_kernels(self.initializer).hidden, name="conv")(x))
    return x.reshape(x.shape[:-3] + (-1,))


def _encode(module: nn.Module, obs: jax.Array, name: str) -> jax.Array:
  """What the MLP reads: `obs` itself, flattened after the batch axis, or the conv torso's."""
  if module.torso == "cnn":
    if obs.ndim < 3:
      raise ValueError(f"{type(module).__name__}(torso='cnn') needs image observations "
                       f"[B, H, W, C], got shape {obs.shape}")
    return _ConvTorso(initializer=module.initializer, name=name)(obs)
  if module.flatten:
    return obs.reshape(obs.shape[:1] + (-1,))
  return obs


def _value_output(module: nn.Module, obs: jax.Array, features: jax.Array,
                  value_features: jax.Array | None) -> jax.Array:
  if module.value == "shared":
    trunk = features
  elif module.value == "twin":
    trunk = value_features
  else:
    trunk = MLP(module.hidden, module.activation, module.initializer, name="value_trunk")(
        _encode(module, obs, "value_torso"))
  value = nn.Dense(1, kernel_init=_kernels(module.initializer).value, name="value")(trunk)
  return value[..., 0]


def _trunk(module: nn.Module, obs: jax.Array):
  """`(obs as float32, the policy's features, the critic's features or None)`."""
  if module.value not in VALUE_HEADS:
    raise ValueError(f"value must be one of {VALUE_HEADS}, got {module.value!r}")
  if module.torso not in TORSOS:
    raise ValueError(f"torso must be one of {TORSOS}, got {module.torso!r}")
  _kernels(module.initializer)  # a bad initializer is named before any layer is built
  obs = jnp.asarray(obs, jnp.float32)
  x = _encode(module, obs, "torso")
  if module.value == "twin":
    if module.torso == "cnn":  # each network with its own convolution, as with "separate"
      x = (x, _encode(module, obs, "value_torso"))
    return obs, *TwinMLP(module.hidden, module.activation, module.initializer,
                         name="twin_trunk")(x)
  return obs, MLP(module.hidden, module.activation, module.initializer, name="trunk")(x), None


def _check_observations(policy: Any, obs_shape: tuple[int, ...]) -> None:
  """Raises `ValueError` if a built-in policy would misread observations of `obs_shape`.

  `obs_shape` is one environment's observation shape. The MLP policies read
  one vector per environment: a scalar or an image needs `flatten=True` (or
  `torso="cnn"` for an image); the convolutional torso needs `[H, W, C]`.
  Other policies pass unchecked.
  """
  if not isinstance(policy, CategoricalPolicy | GaussianPolicy | GRUPolicy):
    return
  name = type(policy).__name__
  obs_shape = tuple(obs_shape)
  if policy.torso == "cnn":
    if len(obs_shape) != 3:
      raise ValueError(f"{name}(torso='cnn') needs image observations [H, W, C] per "
                       f"environment, got observations of shape {obs_shape}")
    return
  if len(obs_shape) != 1 and not policy.flatten:
    raise ValueError(
        f"{name} is an MLP that reads one vector per environment, but each observation has "
        f"shape {obs_shape}: pass flatten=True to flatten each observation"
        + (", or torso='cnn' for image observations [H, W, C]" if len(obs_shape) == 3 else ""))


class CategoricalPolicy(nn.Module):
  """MLP mapping observations `[..., D]` to a `distrax.Categorical` over actions.

  Attributes:
    num_actions: number of discrete actions `A`.
    hidden: widths of the hidden layers; `()` is a single linear layer, the
      seed's `nn.Linear(D, A)`.
    activation: nonlinearity between hidden layers.
    logits_scale: scale of the orthogonal initialisation of the output layer
      (with `initializer="orthogonal"` only). The default 0.01 starts every
      policy close to uniform, so early episodes explore.
    initializer: how the weights start: `"orthogonal"` (the default, the
      CleanRL and PureJaxRL convention: orthogonal(sqrt(2)) hidden layers,
      orthogonal(`logits_scale`) logits, orthogonal(1) value head; Andrychowicz
      et al., 2021, "What matters in on-policy reinforcement learning?"),
      `"lecun_normal"` (flax's `nn.Dense` default for every layer, heads
      included: what rejax's networks use) or a tuple `(hidden, output, value)`
      of kernel initialisers. Biases start at zero.
    value: `None`, `"shared"`, `"separate"` or `"twin"` (see the module
      docstring).
    flatten: flatten each observation into one vector (`[B, ...]` to `[B, -1]`;
      the first axis is the batch): for observations with more than one axis
      per environment.
    torso: `"mlp"` (the observations go straight into the MLP) or `"cnn"`:
      image observations `[B, H, W, C]` first pass a 3x3 convolution with 16
      channels (stride 1, no padding) and a ReLU, flattened (the MinAtar
      network). A `"separate"` or `"twin"` critic has a convolution of its own.
  """

  num_actions: int
  hidden: Sequence[int] = (64, 64)
  activation: Callable[[jax.Array], jax.Array] = nn.tanh
  logits_scale: float = 0.01
  value: str | None = None
  flatten: bool = False
  torso: str = "mlp"
  initializer: Any = "orthogonal"

  @nn.compact
  def __call__(self, obs: jax.Array):
    if self.logits_scale != 0.01 and self.initializer != "orthogonal":
      raise ValueError(f"logits_scale={self.logits_scale!r} scales the orthogonal "
                       f"initialisation; with initializer={self.initializer!r} leave it "
                       "at its default 0.01")
    obs, features, value_features = _trunk(self, obs)
    logits = nn.Dense(self.num_actions,
                      kernel_init=_kernels(self.initializer, self.logits_scale).output,
                      name="logits")(features)
    dist = Categorical(logits=logits)
    if self.value is None:
      return dist
    return dist, _value_output(self, obs, features, value_features)


class GaussianPolicy(nn.Module):
  """MLP mapping observations to a diagonal Gaussian over `action_dim` actions.

  Attributes:
    action_dim: size of the action vector.
    hidden: widths of the hidden layers.
    activation: nonlinearity between hidden layers.
    state_dependent_std: if True, the log standard deviation is a head of the
      network (its kernel initialised like the mean's, its bias at
      `init_log_std`); otherwise one learned vector shared by all states.
    init_log_std: initial log standard deviation, whatever the `initializer`.
    squash: if set, `(low, high)`: the sample goes through `tanh` and is scaled
      to the box, a `distrax.Transformed` whose `log_prob` includes the change-of
      -variables correction `-sum log|d action / d u|`. Unsquashed policies emit
      an unbounded Gaussian (clip in the environment).
    value: `None`, `"shared"`, `"separate"` or `"twin"`.
    flatten: flatten each observation into one vector, as in `CategoricalPolicy`.
    torso: `"mlp"` or `"cnn"`, as in `CategoricalPolicy`.
    initializer: `"orthogonal"` (the default, the CleanRL and PureJaxRL
      convention: orthogonal(sqrt(2)) hidden layers, orthogonal(0.01) mean
      and log-std heads, orthogonal(1) value head), `"lecun_normal"` (flax's
      `nn.Dense` default for every layer, heads included, as in rejax) or a
      tuple `(hidden, output, value)` of kernel initialisers. Biases start at
      zero (the log-std head's at `init_log_std`).
  """

  action_dim: int
  hidden: Sequence[int] = (64, 64)
  activation: Callable[[jax.Array], jax.Array] = nn.tanh
  state_dependent_std: bool = False
  init_log_std: float = 0.0
  squash: tuple[float, float] | None = None
  value: str | None = None
  flatten: bool = False
  torso: str = "mlp"
  initializer: Any = "orthogonal"

  @nn.compact
  def __call__(self, obs: jax.Array):
    obs, features, value_features = _trunk(self, obs)
    output_init = _kernels(self.initializer).output
    loc = nn.Dense(self.action_dim, kernel_init=output_init, name="loc")(features)
    if self.state_dependent_std:
      log_std = nn.Dense(self.action_dim, kernel_init=output_init,
                         bias_init=nn.initializers.constant(self.init_log_std),
                         name="log_std")(features)
    else:
      log_std = self.param("log_std", nn.initializers.constant(self.init_log_std),
                           (self.action_dim,))
      log_std = jnp.broadcast_to(log_std, loc.shape)
    dist = distrax.MultivariateNormalDiag(loc, jnp.exp(log_std))
    if self.squash is not None:
      low, high = self.squash
      to_box = distrax.Chain([distrax.ScalarAffine(shift=(high + low) / 2,
                                                   scale=(high - low) / 2),
                              distrax.Tanh()])
      dist = SquashedGaussian(dist, distrax.Block(to_box, ndims=1))
    if self.value is None:
      return dist
    return dist, _value_output(self, obs, features, value_features)


class GRUPolicy(nn.Module):
  """A recurrent categorical policy with a value head: Dense, GRU cell, two linear heads.

  `__call__(carry, obs)` returns `(carry, (distribution, value))`; the rollout
  passes the carry from step to step and resets it (`initialize_carry`) where an
  episode ended, so a new episode never sees the last one's memory.

  Attributes:
    num_actions: number of discrete actions.
    hidden: width of the embedding and of the GRU's state.
    flatten: flatten each observation into one vector, as in `CategoricalPolicy`.
    torso: `"mlp"` or `"cnn"` (a convolution before the embedding), as in
      `CategoricalPolicy`.
    initializer: `"orthogonal"` (the default, the CleanRL and PureJaxRL
      convention: orthogonal(sqrt(2)) embedding and critic layer, orthogonal(0.01)
      logits, orthogonal(1) value), `"lecun_normal"` (flax's `nn.Dense` default
      for those layers) or a tuple `(hidden, output, value)` of kernel
      initialisers. The GRU cell keeps flax's defaults in every case.
  """

  num_actions: int
  hidden: int = 128
  flatten: bool = False
  torso: str = "mlp"
  initializer: Any = "orthogonal"

  def initialize_carry(self, batch_shape: tuple[int, ...]) -> jax.Array:
    return jnp.zeros((*batch_shape, self.hidden), jnp.float32)

  @nn.compact
  def __call__(self, carry: jax.Array, obs: jax.Array):
    if self.torso not in TORSOS:
      raise ValueError(f"torso must be one of {TORSOS}, got {self.torso!r}")
    kernels = _kernels(self.initializer)
    x = _encode(self, jnp.asarray(obs, jnp.float32), "torso")
    x = nn.relu(nn.Dense(self.hidden, kernel_init=kernels.hidden, name="embed")(x))
    # flax's GRUCell default, without the LAPACK call of flax's orthogonal initialiser.
    carry, features = nn.GRUCell(self.hidden, recurrent_kernel_init=orthogonal(),
                                 name="gru")(carry, x)
    logits = nn.Dense(self.num_actions, kernel_init=kernels.output, name="logits")(features)
    critic = nn.tanh(nn.Dense(self.hidden, kernel_init=kernels.hidden,
                              name="value_hidden")(features))
    value = nn.Dense(1, kernel_init=kernels.value, name="value")(critic)
    return carry, (Categorical(logits=logits), value[..., 0])
