"""Policies: flax modules whose output is a distrax distribution.

The hot path is a pure `policy.apply(params, obs)`, so any flax linen module
that maps a `[..., D]` observation batch to a distrax distribution with a
`[...]` batch shape can replace these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp


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
  """

  num_actions: int
  hidden: Sequence[int] = (64, 64)
  activation: Callable[[jax.Array], jax.Array] = nn.tanh
  logits_scale: float = 0.01

  @nn.compact
  def __call__(self, obs: jax.Array) -> distrax.Categorical:
    x = jnp.asarray(obs, jnp.float32)
    for i, width in enumerate(self.hidden):
      dense = nn.Dense(width, kernel_init=nn.initializers.orthogonal(jnp.sqrt(2.0)),
                       name=f"hidden_{i}")
      x = self.activation(dense(x))
    logits = nn.Dense(self.num_actions,
                      kernel_init=nn.initializers.orthogonal(self.logits_scale),
                      name="logits")(x)
    return distrax.Categorical(logits=logits)
