"""Policies: flax modules whose output is a distrax distribution.

A policy maps observations `[..., D]` to a distribution with batch shape
`[...]`, or, when it carries a value head, to `(distribution, value)` with
`value` of shape `[...]`. The hot path is a pure `policy.apply(params, obs)`, so
any flax linen module with that contract can replace these.

Value heads (`value=`):
  * `None`: no critic (plain REINFORCE);
  * `"shared"`: a linear value head on the policy's last hidden layer;
  * `"separate"`: its own MLP with the same hidden widths;
  * `"twin"`: the same two networks as `"separate"`, computed as one `TwinMLP`
    whose layers are single batched products over stacked `[2, in, out]`
    weights (one matrix product per layer instead of two).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from reinforce_jax import _sampling

VALUE_HEADS = (None, "shared", "separate", "twin")


class Categorical(distrax.Categorical):
  """A `distrax.Categorical` whose logits are normalised without a reduction.

  `distrax.Categorical(logits=...)` normalises with `jax.nn.log_softmax`, whose
  reductions over a small action axis become separate kernels on XLA:CPU and
  cut the fusions of a cheap train step (see `reinforce_jax/_sampling.py`).
  This subclass normalises with unrolled elementwise operations when there are
  at most 16 categories, and is otherwise the same distribution with the same
  methods. Return it from your own policy module to get the same fast path as
  `CategoricalPolicy`.
  """

  def __init__(self, logits=None, probs=None, dtype=int):
    super().__init__(logits=logits, probs=probs, dtype=dtype)
    if logits is not None:
      # distrax's own normalisation above is left unused, and XLA drops it.
      self._logits = _sampling.log_softmax(jnp.asarray(logits))


class MLP(nn.Module):
  """Dense layers with orthogonal(sqrt(2)) weights and an activation after each."""

  hidden: Sequence[int]
  activation: Callable[[jax.Array], jax.Array] = nn.tanh

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.hidden):
      x = self.activation(nn.Dense(
          width, kernel_init=nn.initializers.orthogonal(jnp.sqrt(2.0)), name=f"hidden_{i}")(x))
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

  Returns:
    `(features_0, features_1)`, each `[..., hidden[-1]]` (the input when
    `hidden` is empty).
  """

  hidden: Sequence[int]
  activation: Callable[[jax.Array], jax.Array] = nn.tanh

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = jnp.broadcast_to(x, (2, *x.shape))
    for i, width in enumerate(self.hidden):
      kernel = self.param(f"hidden_{i}_kernel",
                          _stacked(nn.initializers.orthogonal(jnp.sqrt(2.0))),
                          (2, h.shape[-1], width))
      bias = self.param(f"hidden_{i}_bias", nn.initializers.zeros, (2, width))
      bias = bias.reshape((2,) + (1,) * (h.ndim - 2) + (width,))
      h = self.activation(jnp.einsum("k...i,kio->k...o", h, kernel) + bias)
    return h[0], h[1]


def _value_output(module: nn.Module, obs: jax.Array, features: jax.Array,
                  value_features: jax.Array | None) -> jax.Array:
  if module.value == "shared":
    trunk = features
  elif module.value == "twin":
    trunk = value_features
  else:
    trunk = MLP(module.hidden, module.activation, name="value_trunk")(obs)
  value = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0), name="value")(trunk)
  return value[..., 0]


def _trunk(module: nn.Module, obs: jax.Array):
  """`(obs as float32, the policy's features, the critic's features or None)`."""
  if module.value not in VALUE_HEADS:
    raise ValueError(f"value must be one of {VALUE_HEADS}, got {module.value!r}")
  obs = jnp.asarray(obs, jnp.float32)
  if module.value == "twin":
    return obs, *TwinMLP(module.hidden, module.activation, name="twin_trunk")(obs)
  return obs, MLP(module.hidden, module.activation, name="trunk")(obs), None


class CategoricalPolicy(nn.Module):
  """MLP mapping observations `[..., D]` to a `distrax.Categorical` over actions.

  Attributes:
    num_actions: number of discrete actions `A`.
    hidden: widths of the hidden layers; `()` is a single linear layer, the
      seed's `nn.Linear(D, A)`.
    activation: nonlinearity between hidden layers.
    logits_scale: scale of the orthogonal initialisation of the output layer.
      The default 0.01 starts every policy close to uniform, so early episodes
      explore; hidden layers use orthogonal(sqrt(2)) (Andrychowicz et al., 2021,
      "What matters in on-policy reinforcement learning?").
    value: `None`, `"shared"` or `"separate"` (see the module docstring).
  """

  num_actions: int
  hidden: Sequence[int] = (64, 64)
  activation: Callable[[jax.Array], jax.Array] = nn.tanh
  logits_scale: float = 0.01
  value: str | None = None

  @nn.compact
  def __call__(self, obs: jax.Array):
    obs, features, value_features = _trunk(self, obs)
    logits = nn.Dense(self.num_actions,
                      kernel_init=nn.initializers.orthogonal(self.logits_scale),
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
      network; otherwise one learned vector shared by all states.
    init_log_std: initial log standard deviation.
    squash: if set, `(low, high)`: the sample goes through `tanh` and is scaled
      to the box, a `distrax.Transformed` whose `log_prob` includes the change-of
      -variables correction `-sum log|d action / d u|`. Unsquashed policies emit
      an unbounded Gaussian (clip in the environment).
    value: `None`, `"shared"` or `"separate"`.
  """

  action_dim: int
  hidden: Sequence[int] = (64, 64)
  activation: Callable[[jax.Array], jax.Array] = nn.tanh
  state_dependent_std: bool = False
  init_log_std: float = 0.0
  squash: tuple[float, float] | None = None
  value: str | None = None

  @nn.compact
  def __call__(self, obs: jax.Array):
    obs, features, value_features = _trunk(self, obs)
    loc = nn.Dense(self.action_dim, kernel_init=nn.initializers.orthogonal(0.01),
                   name="loc")(features)
    if self.state_dependent_std:
      log_std = nn.Dense(self.action_dim, kernel_init=nn.initializers.orthogonal(0.01),
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
      dist = distrax.Transformed(dist, distrax.Block(to_box, ndims=1))
    if self.value is None:
      return dist
    return dist, _value_output(self, obs, features, value_features)
