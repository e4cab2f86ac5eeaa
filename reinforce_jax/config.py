"""Training configuration.

`TrainConfig` is one frozen, typed dataclass (hashable, so it can be static);
`Hyperparams` holds its loss and return hyperparameters as traced values, for
sweeps and schedules; `sweep_grid` expands a sweep's values into runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
  import jax

ALGOS = ("reinforce", "a2c", "ppo")
BASELINES = ("none", "constant", "ema", "batch_mean", "leave_one_out", "value")

# Float fields and their ranges: (low, high, low_open). Each is also checked in
# float32, the dtype training uses (1e300 is finite in Python, inf in float32).
_FLOAT_RANGES = {
    "gamma": (0.0, 1.0, False),
    "gae_lambda": (0.0, 1.0, False),
    "ema_decay": (0.0, 1.0, False),
    "baseline_constant": (-math.inf, math.inf, False),
    "entropy_coef": (0.0, math.inf, False),
    "value_coef": (0.0, math.inf, False),
    "clip_eps": (0.0, math.inf, False),
    "learning_rate": (0.0, math.inf, True),
    "max_grad_norm": (0.0, math.inf, True),
}
_INT_MINIMA = {"num_envs": 1, "rollout_length": 1, "num_epochs": 1, "num_minibatches": 1,
               "num_steps": 0}


def is_real_dtype(kind) -> bool:
  """Whether `kind` is an integer or floating dtype, bfloat16 and other ml_dtypes included."""
  kind = np.dtype(kind)
  if np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating):
    return True
  try:
    import ml_dtypes  # JAX's own dependency: bfloat16, float8_*

    ml_dtypes.finfo(kind)
  except (ImportError, ValueError, TypeError):
    return False
  return True


def _is_scalar_array(value: Any) -> bool:
  return hasattr(value, "dtype") and hasattr(value, "shape") and np.ndim(value) == 0


def _check_float(name: str, value: Any, *, arrays: bool = False) -> None:
  """Raises `ValueError` naming `name` unless `value` is a real number in its range.

  Ints are fine; bools and strings are not, nor arrays unless `arrays` (then
  every entry is checked). The range is checked on the value and on its float32
  conversion, the dtype training uses (overflow to inf, underflow to 0).
  """
  low, high, low_open = _FLOAT_RANGES[name]
  is_array = hasattr(value, "dtype") and hasattr(value, "shape") and (
      arrays or np.ndim(value) == 0)
  if is_array:
    real = is_real_dtype(value.dtype)
  else:
    real = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
  if not real:
    raise ValueError(f"{name} must be a real number, got {value!r}")
  if is_array:
    as_float = np.asarray(np.asarray(value).astype(np.float64))
  else:
    try:
      as_float = np.float64(float(value))
    except OverflowError:  # an int too large for a float
      as_float = np.float64(math.inf if value > 0 else -math.inf)
  with np.errstate(over="ignore", under="ignore"):
    as_float32 = as_float.astype(np.float32)
  if high < math.inf:
    described = f"lie in [{low:g}, {high:g}]"
  elif low > -math.inf:
    described = "be finite and " + ("positive" if low_open else "non-negative")
  else:
    described = "be finite"
  for v, where in ((as_float, ""), (as_float32, f" ({as_float32} in float32, the dtype used)")):
    above = v > low if low_open else v >= low
    if not np.all(np.isfinite(v) & above & (v <= high)):
      raise ValueError(f"{name} must {described}, got {value!r}{where}")


def _check_int(name: str, value: Any) -> None:
  minimum = _INT_MINIMA[name]
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"
    raise ValueError(f"{name} must be {kind} (an int, not a bool), got {value!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Settings of a policy-gradient run. The defaults train the seed's bandit.

  Attributes:
    num_envs: environments stepped in parallel (`B`).
    rollout_length: environment steps per environment per train step (`T`);
      one train step sees `num_envs * rollout_length` transitions.
    gamma: discount, in [0, 1].
    algo: `"reinforce"` (discounted reward-to-go minus a baseline), `"a2c"`
      (GAE(lambda) advantages from a learned value function, one gradient step
      per rollout) or `"ppo"` (GAE, clipped surrogate, `num_epochs` passes of
      `num_minibatches` minibatches per rollout). All three share the rollout
      and the returns module.
    baseline: REINFORCE's baseline: `"none"` (the seed's `-log_prob * reward`),
      `"constant"` (`baseline_constant`), `"ema"` (exponential moving average of
      earlier steps' returns), `"batch_mean"` (mean return of the batch at each
      time step, the sample included: shrinks the gradient by (B-1)/B),
      `"leave_one_out"` (mean of the *other* environments: unbiased), or
      `"value"` (a learned value function; the policy needs a value head). a2c
      and ppo always use the learned value function.
    baseline_constant: the constant baseline.
    ema_decay: decay of the EMA baseline.
    gae_lambda: GAE's lambda (a2c, ppo).
    normalize_advantages: standardise advantages (over the batch; per minibatch
      for ppo). A shift and a positive scale: it changes the step size, not the
      expected direction, only up to the same-sample caveat of `batch_mean`.
    entropy_coef: weight of the entropy bonus (the loss subtracts
      `entropy_coef * mean entropy`).
    value_coef: weight of the value loss.
    clip_eps: PPO's clipping range (of the probability ratio, and of the value
      when `clip_value`).
    clip_value: PPO clips the value loss as the PPO papers' code, CleanRL,
      PureJaxRL and SB3 do (`losses.clipped_value_loss`, range `clip_eps`):
      the critic moves at most `clip_eps` from its rollout-time estimate per
      update unless that raises the loss. Other algorithms ignore it.
    num_epochs: PPO passes over each rollout.
    num_minibatches: PPO minibatches per pass; must divide `num_envs * rollout_length`.
    num_steps: train steps of a whole run (`make_train`, the CLI).
    learning_rate: Adam step size used by `make_optimizer` (the CLI's optimizer).
    anneal_lr: `make_optimizer` anneals the learning rate linearly to 0 over
      `num_steps` (PureJaxRL's and CleanRL's PPO schedule).
    max_grad_norm: if set, `make_optimizer` clips the global gradient norm.
  """

  num_envs: int = 1024
  rollout_length: int = 1
  gamma: float = 0.99
  algo: str = "reinforce"
  baseline: str = "none"
  baseline_constant: float = 0.0
  ema_decay: float = 0.9
  gae_lambda: float = 0.95
  normalize_advantages: bool = False
  entropy_coef: float = 0.0
  value_coef: float = 0.5
  clip_eps: float = 0.2
  clip_value: bool = True
  num_epochs: int = 4
  num_minibatches: int = 4
  num_steps: int = 100
  learning_rate: float = 0.05
  max_grad_norm: float | None = None
  anneal_lr: bool = False

  def __post_init__(self):
    for name in _INT_MINIMA:
      _check_int(name, getattr(self, name))
    for name in _FLOAT_RANGES:
      if not (name == "max_grad_norm" and self.max_grad_norm is None):
        _check_float(name, getattr(self, name))
        if _is_scalar_array(getattr(self, name)):
          # A NumPy or JAX scalar becomes a Python float: the config stays hashable.
          object.__setattr__(self, name, float(np.asarray(getattr(self, name))))
    for name in ("normalize_advantages", "clip_value", "anneal_lr"):
      if not isinstance(getattr(self, name), bool | np.bool_):
        raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
    if not isinstance(self.algo, str) or self.algo not in ALGOS:
      raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
    if not isinstance(self.baseline, str) or self.baseline not in BASELINES:
      raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
    if self.algo != "reinforce" and self.baseline not in ("none", "value"):
      raise ValueError(
          f"baseline={self.baseline!r} applies to algo='reinforce'; {self.algo} always "
          "uses the learned value function")
    if self.baseline in ("leave_one_out", "batch_mean") and self.num_envs < 2:
      raise ValueError(f"baseline={self.baseline!r} needs num_envs >= 2")
    batch = self.num_envs * self.rollout_length
    if self.algo == "ppo" and batch % self.num_minibatches:
      raise ValueError(
          f"num_minibatches={self.num_minibatches} must divide num_envs * rollout_length "
          f"= {batch}")

  @property
  def uses_value(self) -> bool:
    """Whether the policy needs a value head."""
    return self.algo != "reinforce" or self.baseline == "value"

  def replace(self, **changes) -> TrainConfig:
    return dataclasses.replace(self, **changes)


class Hyperparams(NamedTuple):
  """The loss and return hyperparameters of `TrainConfig`, as traced values.

  By default a train step reads these from its `TrainConfig`, where they are
  compile-time constants. Put a `Hyperparams` in `TrainState.hyperparams` to
  make them values of the state instead: `jax.vmap` over states then trains
  several entropy coefficients (discounts, ...) in one program, and a loop can
  change them between steps (annealing) without recompiling.

      state = init_fn(key)
      hp = Hyperparams.from_config(config)._replace(entropy_coef=jnp.float32(0.01))
      state = state._replace(hyperparams=hp)

  Fields mean what the `TrainConfig` fields of the same names mean.
  """

  gamma: jax.Array
  gae_lambda: jax.Array
  entropy_coef: jax.Array
  value_coef: jax.Array
  clip_eps: jax.Array
  baseline_constant: jax.Array
  ema_decay: jax.Array

  @classmethod
  def from_config(cls, config: TrainConfig, **overrides) -> Hyperparams:
    """The config's values (with `overrides`), as float32 scalars.

    Raises:
      ValueError: for an unknown name, or a concrete override that the
        `TrainConfig` field of the same name would reject (traced overrides,
        inside `jit` or `vmap`, cannot be checked).
    """
    import jax  # here, so that importing the config stays free of JAX
    import jax.numpy as jnp

    unknown = set(overrides) - set(cls._fields)
    if unknown:
      raise ValueError(f"unknown hyperparameters {sorted(unknown)}; "
                       f"the fields are {list(cls._fields)}")
    for name, value in overrides.items():
      if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value)):
        _check_float(name, value, arrays=True)  # traced values cannot be checked
    values = {name: overrides.get(name, getattr(config, name)) for name in cls._fields}
    return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in values.items()})


SWEEPABLE = ("learning_rate", *Hyperparams._fields)


def _inert_axes(config: TrainConfig) -> dict[str, str]:
  """Hyperparameters that `config` does not use, with the reason."""
  inert = {}
  if config.algo == "reinforce":
    inert["gae_lambda"] = "GAE's lambda applies to algo a2c and ppo"
  if config.algo != "ppo":
    inert["clip_eps"] = "clip_eps applies to algo='ppo'"
  if not config.uses_value:
    inert["value_coef"] = "value_coef needs a learned value function (a2c, ppo, baseline='value')"
  if config.baseline != "constant":
    inert["baseline_constant"] = "baseline_constant applies to baseline='constant'"
  if config.baseline != "ema":
    inert["ema_decay"] = "ema_decay applies to baseline='ema'"
  return inert


def sweep_grid(config: TrainConfig, grid: Mapping[str, Sequence[float]]) -> list[dict]:
  """Every combination of the values in `grid` (the first name varies slowest).

  Raises `ValueError` for a name that cannot be swept, one that `config` does
  not use (sweeping it would train the same run several times), an empty list,
  or a value `TrainConfig` rejects.
  """
  if not grid:
    raise ValueError(f"nothing to sweep: give values for at least one of {list(SWEEPABLE)}")
  inert = _inert_axes(config)
  for name, values in grid.items():
    if name not in SWEEPABLE:
      raise ValueError(f"cannot sweep {name!r}; sweepable: {list(SWEEPABLE)}")
    if name in inert:
      raise ValueError(f"sweeping {name} would change nothing: {inert[name]} "
                       f"(this config: algo={config.algo!r}, baseline={config.baseline!r})")
    if not len(values):
      raise ValueError(f"no values to sweep for {name}")
  combos = [dict(zip(grid, values, strict=True))
            for values in itertools.product(*grid.values())]
  for combo in combos:
    config.replace(**combo)  # validates each value, naming the field
  return combos
