"""Observation normalisation with one running estimate shared by the whole env batch.

`ObsStats` holds the running count, mean and (population) variance of every
observation seen so far, over all environments of the batch, and the pure
functions `init_stats`, `update_stats` and `normalize` read and advance it.
`ObsNormalizer` is the rule a run follows (the prior, when it updates,
`eps`, clipping); `make_train_step` applies it when
`TrainConfig(normalize_observations=True)` (or `obs_normalization=`) is set,
and keeps the statistics in `TrainState.obs_stats`, so checkpoints save them
and a resumed run continues from them.

The default rule is rejax's (`normalize_observations=True`, rejax 0.1.3), so
a run reproduces its numbers:

* the estimate starts as a prior worth `initial_count = 1e-4` observations of
  mean 0 and variance 1;
* after every environment step, the batch of `B` observations it returned
  (the first of a new episode where one ended; never `info["final_observation"]`)
  is merged into the estimate exactly (Chan, Golub and LeVeque's parallel
  update: the batch's mean and variance, weighted by the counts); the
  observations the environments' first reset returned are not counted;
* the policy sees `(obs - mean) / sqrt(var + eps)`, `eps = 1e-8`, with the
  estimate that includes the observation's own batch (the first reset's
  observations, with the prior: unchanged in float32, as rejax passes them);
  no clipping (`clip` clips to `[-clip, clip]`).

SB3's `VecNormalize` differs in two points: it counts the first reset's
observations too, and clips at 10 (`ObsNormalizer(clip=10.0)`).

With `per_step=False` the estimate stays fixed during a rollout (every
observation of the rollout is normalised with the estimate it started with)
and the rollout's `T * B` observations are merged in one batch at its end:
the same observations, so the same estimate up to rounding.

Under data parallelism (`reinforce_jax.experiments.distributed`) the batch is
one global array split over devices: its mean and variance are reductions over
the whole batch, so every device holds the same estimate (XLA inserts the
all-reduce, as it does for the gradients).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "init_stats",
    "merge_stats",
    "normalize",
    "ObsNormalizer",
    "ObsStats",
    "update_stats",
]


class ObsStats(NamedTuple):
  """A running estimate of the observations' mean and variance, one per observation entry."""

  count: jax.Array  # [] float32, observations merged in (the prior's weight included)
  mean: jax.Array   # [*obs_shape] float32
  var: jax.Array    # [*obs_shape] float32, the population variance (M2 / count)


def init_stats(obs_shape: tuple[int, ...], initial_count: float = 1e-4) -> ObsStats:
  """The prior: `initial_count` observations of mean 0 and variance 1.

  Raises:
    ValueError: for a negative or non-finite `initial_count`.
  """
  _check_count(initial_count)
  shape = tuple(int(d) for d in obs_shape)
  return ObsStats(count=jnp.asarray(initial_count, jnp.float32),
                  mean=jnp.zeros(shape, jnp.float32), var=jnp.ones(shape, jnp.float32))


def merge_stats(stats: ObsStats, count, mean, var) -> ObsStats:
  """`stats` merged with a batch of `count` observations of mean `mean` and variance `var`.

  Chan et al.'s parallel update, exact in real arithmetic: with `n = n_a + n_b`
  and `delta = mean_b - mean_a`, the mean is `mean_a + delta n_b / n` and the
  summed squared deviations are `M2_a + M2_b + delta^2 n_a n_b / n`.
  """
  delta = mean - stats.mean
  total = stats.count + count
  new_mean = stats.mean + delta * count / total
  m2 = stats.var * stats.count + var * count + delta ** 2 * stats.count * count / total
  return ObsStats(count=total, mean=new_mean, var=m2 / total)


def update_stats(stats: ObsStats, batch: jax.Array) -> ObsStats:
  """`stats` with the observations `batch` (`[N, *obs_shape]`) merged in.

  Raises:
    ValueError: if `batch` is not `[N, *obs_shape]` for the estimate's shape.
  """
  _check_shape("batch", batch, stats, leading=1)
  batch = jnp.asarray(batch, jnp.float32)
  return merge_stats(stats, batch.shape[0], batch.mean(axis=0), batch.var(axis=0))


def normalize(stats: ObsStats, obs: jax.Array, *, eps: float = 1e-8,
              clip: float | None = None) -> jax.Array:
  """`(obs - mean) / sqrt(var + eps)` as float32, clipped to `[-clip, clip]` if `clip` is set.

  `obs` is one observation or a batch of them (leading axes are kept).

  Raises:
    ValueError: if `obs` does not end in the estimate's observation shape.
  """
  _check_shape("obs", obs, stats)
  out = (jnp.asarray(obs, jnp.float32) - stats.mean) / jnp.sqrt(stats.var + eps)
  return out if clip is None else jnp.clip(out, -clip, clip)


@dataclasses.dataclass(frozen=True)
class ObsNormalizer:
  """How a run normalises observations (see the module docstring for the default rule).

  Attributes:
    initial_count: weight of the prior (mean 0, variance 1), in observations; 0
      gives the plain mean and variance of the observations seen.
    eps: added to the variance under the square root.
    clip: if set, normalised observations are clipped to `[-clip, clip]`.
    per_step: merge each environment step's batch as it arrives (rejax, SB3);
      False merges each rollout's observations at its end.

  Raises:
    ValueError: for a negative or non-finite `initial_count`, a negative `eps`,
      a `clip` that is not positive, or a `per_step` that is not a bool.
  """

  initial_count: float = 1e-4
  eps: float = 1e-8
  clip: float | None = None
  per_step: bool = True

  def __post_init__(self):
    _check_count(self.initial_count)
    if not _is_number(self.eps) or not 0.0 <= self.eps < math.inf:
      raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
    if self.clip is not None and (not _is_number(self.clip) or not self.clip > 0.0):
      raise ValueError(f"clip must be a positive number or None, got {self.clip!r}")
    if not isinstance(self.per_step, bool):
      raise ValueError(f"per_step must be True or False, got {self.per_step!r}")

  def init(self, obs_shape: tuple[int, ...]) -> ObsStats:
    """The estimate before any observation: the prior."""
    return init_stats(obs_shape, self.initial_count)

  def update(self, stats: ObsStats, batch: jax.Array) -> ObsStats:
    """`update_stats(stats, batch)`."""
    return update_stats(stats, batch)

  def normalize(self, stats: ObsStats, obs: jax.Array) -> jax.Array:
    """`normalize(stats, obs)` with this rule's `eps` and `clip`."""
    return normalize(stats, obs, eps=self.eps, clip=self.clip)


def _is_number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def _check_count(initial_count: Any) -> None:
  if not _is_number(initial_count) or not 0.0 <= initial_count < math.inf:
    raise ValueError(f"initial_count must be a finite number >= 0, got {initial_count!r}")


def _check_shape(name: str, x: Any, stats: ObsStats, leading: int = 0) -> None:
  shape, obs_shape = tuple(jnp.shape(x)), tuple(jnp.shape(stats.mean))
  ndim = len(obs_shape)
  fits = shape[len(shape) - ndim:] == obs_shape if ndim else True
  if not fits or len(shape) < ndim + leading or (leading and len(shape) != ndim + leading):
    form = "[N, *obs_shape]" if leading else "[..., *obs_shape]"
    raise ValueError(f"{name} must have shape {form} with obs_shape {list(obs_shape)} (the "
                     f"statistics' observation shape), got {list(shape)}")
