"""Hyperparameters: one frozen dataclass per algorithm (and per baseline), declared once.

Each field is declared with `hparam` (a float: a leaf of the pytree, so it can
be traced: vmapped over, or annealed between steps without recompiling),
`static` (structure: an int, a bool, a choice; part of the compiled program) or
`child` (a nested value with hyperparameters of its own, such as a baseline).
Everything else is derived from these declarations: `TrainConfig`'s keyword
shortcuts, the names a sweep accepts, the command line's flags and their
checks, and which hyperparameters an algorithm does not use.

This module does not import JAX (the command line reads it to check its
arguments first); `reinforce_jax.rl.algorithms` registers the classes as pytrees.

    >>> PPO(clip_eps=0.1).replace(gamma=0.95).flat()["clip_eps"]
    0.1
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from reinforce_jax._src.scalars import is_concrete_number, is_real_dtype

__all__ = [
    "A2C",
    "AlgorithmParams",
    "ALGORITHMS",
    "all_hparam_ranges",
    "Baseline",
    "BASELINES",
    "BatchMean",
    "check_value",
    "child",
    "Constant",
    "EMA",
    "hparam",
    "hparam_ranges",
    "Hyperparameters",
    "LeaveOneOut",
    "PPO",
    "pytree_fields",
    "Range",
    "Reinforce",
    "static",
    "static_fields",
    "static_help",
    "Value",
]

_HPARAM = "reinforce_jax.hparam"    # metadata key: a `Range` (a traced float)
_STATIC = "reinforce_jax.static"    # metadata key: help text (a structural field)
_CHILD = "reinforce_jax.child"      # metadata key: help text (a nested hyperparameter value)


@dataclasses.dataclass(frozen=True)
class Range:
  """Where a float hyperparameter may lie, and how it is named and described."""

  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False
  help: str = ""
  name: str | None = None  # its flat name (sweeps, CLI, TrainConfig), if not the field's

  def describe(self) -> str:
    if self.high < math.inf:
      return f"in [{self.low:g}, {self.high:g}]"
    if self.low > -math.inf:
      return "finite and " + ("positive" if self.low_open else "non-negative")
    return "finite"

  def contains(self, value: float) -> bool:
    above = value > self.low if self.low_open else value >= self.low
    return bool(math.isfinite(value) and above and value <= self.high)


def hparam(default: float, *, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False, help: str = "", name: str | None = None):
  """A float hyperparameter: a pytree leaf, checked against `[low, high]` when concrete."""
  return dataclasses.field(default=default, metadata={
      _HPARAM: Range(low, high, low_open, help, name)})


def static(default: Any, *, help: str = ""):
  """A structural setting (int, bool, choice): fixed when the program compiles."""
  return dataclasses.field(default=default, metadata={_STATIC: help})


def child(default: Any = None, *, help: str = ""):
  """A nested value with hyperparameters of its own (a baseline), or None."""
  return dataclasses.field(default=default, metadata={_CHILD: help})




def check_value(name: str, value: Any, where: Range, *, device_arrays: bool = False) -> None:
  """Raises `ValueError` naming `name` unless a concrete `value` lies in range.

  The value is checked as given and as float32, the dtype training uses (1e300
  is finite in Python, inf in float32). A string or a bool is refused; a NumPy
  array is checked entry by entry. JAX arrays are checked entry by entry only
  with `device_arrays=True` (reading one waits for its computation: a train
  step's output must not wait); tracers and JAX's placeholders always pass
  (they are checked where they are made, or cannot be).
  """
  if isinstance(value, str | bool | np.bool_):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  if not is_concrete_number(value):
    array = _concrete_array(value, device_arrays)
    if array is None:
      return
    if not is_real_dtype(array.dtype):
      raise ValueError(f"{name} must hold real numbers, got {value!r}")
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
      as_float = array.astype(np.float64).ravel()
      as_float32 = as_float.astype(np.float32).astype(np.float64)
    for values, note in ((as_float, ""), (as_float32, " (in float32, the dtype used)")):
      bad = [v for v in values if not where.contains(float(v))]
      if bad:
        got = f"{value!r}{note}" if array.ndim == 0 else f"{bad[0]:g}{note} in {value!r}"
        raise ValueError(f"{name} must be {where.describe()}, got {got}")
    return
  try:
    as_float = float(value)
  except OverflowError:  # an int too large for a float
    as_float = math.inf if value > 0 else -math.inf
  with np.errstate(over="ignore", under="ignore"):
    as_float32 = float(np.float32(as_float))
  for v, note in ((as_float, ""), (as_float32, f" ({as_float32} in float32, the dtype used)")):
    if not where.contains(v):
      raise ValueError(f"{name} must be {where.describe()}, got {value!r}{note}")


def _concrete_array(value: Any, device_arrays: bool) -> np.ndarray | None:
  """`value` as a NumPy array if it is a concrete array to check, else None.

  JAX is not imported here: a JAX array can only exist if JAX is already loaded.
  """
  if isinstance(value, np.ndarray | np.generic):
    return np.asarray(value)
  jax = sys.modules.get("jax")
  if not device_arrays or jax is None or not isinstance(value, jax.Array) or isinstance(
      value, jax.core.Tracer):
    return None
  return np.asarray(value)


class Hyperparameters:
  """Base of the hyperparameter dataclasses: flat names, replacement, checks."""

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if _HPARAM in field.metadata:
        where = field.metadata[_HPARAM]
        check_value(where.name or field.name, value, where)
        if is_concrete_number(value):  # a NumPy scalar becomes a float: stays hashable
          object.__setattr__(self, field.name, float(value))
      elif _CHILD in field.metadata and value is not None and not isinstance(
          value, Hyperparameters) and _is_concrete_tree(self):
        raise ValueError(f"{field.name} must be a hyperparameter value or None, got {value!r}")
    self.check()

  def check(self) -> None:
    """Checks across fields (subclasses); fields are already checked one by one."""

  def replace(self, **changes) -> Hyperparameters:
    return dataclasses.replace(self, **changes)

  def flat(self) -> dict[str, Any]:
    """Every float hyperparameter (this value's and its children's) by its flat name."""
    return {name: getattr(owner, attr) for name, owner, attr, _ in _hparam_fields(self)}

  def replace_flat(self, **values) -> Hyperparameters:
    """A copy with hyperparameters replaced by flat name (children's included).

    Raises:
      ValueError: for a name that is not a hyperparameter of this value.
    """
    known = {name: (owner, attr) for name, owner, attr, _ in _hparam_fields(self)}
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise ValueError(f"{', '.join(unknown)}: not a hyperparameter of {self.label()} "
                       f"(its hyperparameters: {sorted(known)})")
    return _replace_tree(self, values)

  def label(self) -> str:
    return type(self).__name__


def _is_concrete_tree(value) -> bool:
  """False while JAX rebuilds the value from placeholders (its tree utilities)."""
  return all(is_concrete_number(getattr(value, f.name)) for f in dataclasses.fields(value)
             if _HPARAM in f.metadata)


def _hparam_fields(value) -> Iterator[tuple[str, Any, str, Range]]:
  """`(flat name, owner, attribute, range)` of each float hyperparameter, children included."""
  for field in dataclasses.fields(value):
    if _HPARAM in field.metadata:
      where = field.metadata[_HPARAM]
      yield where.name or field.name, value, field.name, where
    elif _CHILD in field.metadata and isinstance(getattr(value, field.name), Hyperparameters):
      yield from _hparam_fields(getattr(value, field.name))


def _replace_tree(value, values: dict[str, Any]):
  changes = {}
  for field in dataclasses.fields(value):
    if _HPARAM in field.metadata:
      name = field.metadata[_HPARAM].name or field.name
      if name in values:
        changes[field.name] = values[name]
    elif _CHILD in field.metadata and isinstance(getattr(value, field.name), Hyperparameters):
      changes[field.name] = _replace_tree(getattr(value, field.name), values)
  return dataclasses.replace(value, **changes)


def hparam_ranges(cls) -> dict[str, Range]:
  """The float hyperparameters a class declares itself, by flat name."""
  return {f.metadata[_HPARAM].name or f.name: f.metadata[_HPARAM]
          for f in dataclasses.fields(cls) if _HPARAM in f.metadata}


def pytree_fields(cls) -> tuple[list[str], list[str]]:
  """`(data fields, meta fields)` of a hyperparameter class, for `jax.tree_util`."""
  data = [f.name for f in dataclasses.fields(cls) if _STATIC not in f.metadata]
  meta = [f.name for f in dataclasses.fields(cls) if _STATIC in f.metadata]
  return data, meta


def _check_int(name: str, value: Any, minimum: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"
    raise ValueError(f"{name} must be {kind} (an int, not a bool), got {value!r}")


def _check_bool(name: str, value: Any) -> None:
  if not isinstance(value, bool | np.bool_):
    raise ValueError(f"{name} must be a bool, got {value!r}")


# --- Baselines ----------------------------------------------------------------
# A baseline may depend on anything but the action it is paired with; then the
# score-function estimator stays unbiased. Their behaviour (`init`, `__call__`,
# `update`) is in `reinforce_jax.rl.baselines`, which imports JAX.


class Baseline(Hyperparameters):
  """Base of REINFORCE's baselines; `kind` is the command line's name for it.

  A baseline is a value with three methods: `init()` (its state, `()` if none),
  `__call__(state, returns, value)` (the `[T, B]` baseline for `[T, B]`
  returns; `value` is the critic's estimate, zeros without one) and
  `update(state, returns)` (its next state, after the step).
  """

  kind = ""
  needs_value = False  # whether it is a learned value function (a critic)
  needs_batch = False  # whether it needs at least two environments

  def init(self):
    return ()

  def update(self, state, returns):
    del returns
    return state


@dataclasses.dataclass(frozen=True)
class Constant(Baseline):
  """A fixed baseline `b`."""

  kind = "constant"
  value: float = hparam(0.0, help="the constant baseline", name="baseline_constant")

  def __call__(self, state, returns, value):
    del state, returns, value
    return self.value


@dataclasses.dataclass(frozen=True)
class EMA(Baseline):
  """An exponential moving average of earlier steps' returns (unbiased: only the past)."""

  kind = "ema"
  decay: float = hparam(0.9, low=0.0, high=1.0, help="decay of the EMA baseline in [0, 1]",
                        name="ema_decay")

  def init(self):
    import jax.numpy as jnp

    return jnp.zeros((), jnp.float32)

  def __call__(self, state, returns, value):
    del returns, value
    return state  # the average before this step's update: earlier episodes only

  def update(self, state, returns):
    from reinforce_jax.core.baselines import ema_update

    return ema_update(state, returns, decay=self.decay)


@dataclasses.dataclass(frozen=True)
class BatchMean(Baseline):
  """The mean return of the batch at each time step, the sample itself included.

  Each entry sees its own return, so the expected gradient shrinks by `(B-1)/B`.
  """

  kind = "batch_mean"
  needs_batch = True

  def __call__(self, state, returns, value):
    from reinforce_jax.core.baselines import batch_mean

    del state, value
    return batch_mean(returns, axis=1)


@dataclasses.dataclass(frozen=True)
class LeaveOneOut(Baseline):
  """The mean return of the *other* environments at each time step: unbiased.

  Reference: Kool, van Hoof and Welling (2019), "Buy 4 REINFORCE samples, get a
  baseline for free!".
  """

  kind = "leave_one_out"
  needs_batch = True

  def __call__(self, state, returns, value):
    from reinforce_jax.core.baselines import leave_one_out

    del state, value
    return leave_one_out(returns, axis=1)


@dataclasses.dataclass(frozen=True)
class Value(Baseline):
  """A learned value function `V(s_t)`, trained by its own squared-error loss."""

  kind = "value"
  needs_value = True
  value_coef: float = hparam(0.5, low=0.0, help="value loss weight")

  def __call__(self, state, returns, value):
    del state, returns
    return value


BASELINES: dict[str, type[Baseline] | None] = {
    "none": None, **{cls.kind: cls for cls in (Constant, EMA, BatchMean, LeaveOneOut, Value)}}


# --- Algorithms -----------------------------------------------------------------


class AlgorithmParams(Hyperparameters):
  """Base of an algorithm's hyperparameters; `algo` is its command-line name."""

  algo = ""

  @property
  def needs_value(self) -> bool:
    """Whether the policy needs a value head."""
    return True

  @property
  def baseline_kind(self) -> str:
    return "value"

  @property
  def updates_per_step(self) -> int:
    """Optimizer updates per train step."""
    return 1

  def check_batch(self, num_envs: int, rollout_length: int) -> None:
    """Raises `ValueError` if the batch shape does not suit these settings."""

  def label(self) -> str:
    return f"algo={self.algo!r}"



_GAMMA = dict(low=0.0, high=1.0, help="discount in [0, 1]")
_ENTROPY = dict(low=0.0, help="entropy bonus weight")
_NORMALIZE = ("standardise advantages over the batch (per minibatch for ppo): a shift and "
              "a positive scale")
_BOOTSTRAP = ("where a time limit cuts an episode, bootstrap its return from the value of the "
              "final observation (default); off treats the cut as a termination, as rejax and "
              "PureJaxRL do")


@dataclasses.dataclass(frozen=True)
class Reinforce(AlgorithmParams):
  """REINFORCE: discounted reward-to-go minus a baseline, one gradient step per rollout.

  Returns are cut at truncation and at the end of the rollout, unless the
  baseline is a learned value function; then they bootstrap from it there
  (at truncation only with `bootstrap_truncation`, the default).
  """

  algo = "reinforce"
  gamma: float = hparam(0.99, **_GAMMA)
  entropy_coef: float = hparam(0.0, **_ENTROPY)
  baseline: Baseline | None = child(None, help="REINFORCE's baseline")
  normalize_advantages: bool = static(False, help=_NORMALIZE)
  bootstrap_truncation: bool = static(True, help=_BOOTSTRAP)

  def check(self):
    for name in ("normalize_advantages", "bootstrap_truncation"):
      _check_bool(name, getattr(self, name))

  @property
  def needs_value(self) -> bool:
    return self.baseline is not None and self.baseline.needs_value

  @property
  def baseline_kind(self) -> str:
    return "none" if self.baseline is None else self.baseline.kind

  def check_batch(self, num_envs, rollout_length):
    del rollout_length
    if self.baseline is not None and self.baseline.needs_batch and num_envs < 2:
      raise ValueError(f"baseline={self.baseline.kind!r} needs num_envs >= 2, got {num_envs}")


@dataclasses.dataclass(frozen=True)
class A2C(AlgorithmParams):
  """Advantage actor-critic: GAE(lambda) advantages, one gradient step per rollout.

  Where a time limit cuts an episode, the advantage bootstraps from the value
  of the final observation; `bootstrap_truncation=False` cuts it there instead,
  as at a termination (what rejax and PureJaxRL do with gymnax's single `done`).
  """

  algo = "a2c"
  gamma: float = hparam(0.99, **_GAMMA)
  gae_lambda: float = hparam(0.95, low=0.0, high=1.0, help="GAE lambda in [0, 1]")
  entropy_coef: float = hparam(0.0, **_ENTROPY)
  value_coef: float = hparam(0.5, low=0.0, help="value loss weight")
  normalize_advantages: bool = static(False, help=_NORMALIZE)
  bootstrap_truncation: bool = static(True, help=_BOOTSTRAP)

  def check(self):
    for name in ("normalize_advantages", "bootstrap_truncation"):
      _check_bool(name, getattr(self, name))


@dataclasses.dataclass(frozen=True)
class PPO(AlgorithmParams):
  """PPO: GAE advantages, the clipped surrogate, epochs of shuffled minibatches.

  `bootstrap_truncation` as in `A2C`: the default bootstraps from the value of
  the final observation where a time limit cuts an episode; False treats the
  cut as a termination (rejax's and PureJaxRL's PPO).

  Reference: Schulman et al. (2017), "Proximal Policy Optimization Algorithms".
  """

  algo = "ppo"
  gamma: float = hparam(0.99, **_GAMMA)
  gae_lambda: float = hparam(0.95, low=0.0, high=1.0, help="GAE lambda in [0, 1]")
  entropy_coef: float = hparam(0.0, **_ENTROPY)
  value_coef: float = hparam(0.5, low=0.0, help="value loss weight")
  clip_eps: float = hparam(0.2, low=0.0, help="PPO clipping range (ratio; value too)")
  clip_value: bool = static(True, help="clip the value loss (PPO's, CleanRL's, PureJaxRL's)")
  num_epochs: int = static(4, help="passes over each rollout")
  num_minibatches: int = static(4, help="minibatches per pass")
  normalize_advantages: bool = static(False, help=_NORMALIZE)
  bootstrap_truncation: bool = static(True, help=_BOOTSTRAP)

  def check(self):
    for name in ("clip_value", "normalize_advantages", "bootstrap_truncation"):
      _check_bool(name, getattr(self, name))
    _check_int("num_epochs", self.num_epochs, 1)
    _check_int("num_minibatches", self.num_minibatches, 1)

  @property
  def updates_per_step(self) -> int:
    return self.num_epochs * self.num_minibatches

  def check_batch(self, num_envs, rollout_length):
    batch = num_envs * rollout_length
    if batch % self.num_minibatches:
      raise ValueError(f"num_minibatches={self.num_minibatches} must divide num_envs * "
                       f"rollout_length = {batch}")


ALGORITHMS: dict[str, type[AlgorithmParams]] = {
    cls.algo: cls for cls in (Reinforce, A2C, PPO)}


def all_hparam_ranges() -> dict[str, Range]:
  """Every float hyperparameter of the built-in algorithms and baselines, by flat name.

  The command line takes a flag for each (`--entropy-coef`); a name declared by
  several classes must mean the same everywhere (checked).
  """
  out: dict[str, Range] = {}
  for cls in (*ALGORITHMS.values(), *(c for c in BASELINES.values() if c is not None)):
    for name, where in hparam_ranges(cls).items():
      if name in out and (out[name].low, out[name].high) != (where.low, where.high):
        raise AssertionError(f"{name} is declared with two ranges")
      out.setdefault(name, where)
  return out


def static_fields(cls) -> dict[str, dataclasses.Field]:
  return {f.name: f for f in dataclasses.fields(cls) if _STATIC in f.metadata}


def static_help(field: dataclasses.Field) -> str:
  """The help text a `static` field was declared with (the command line's)."""
  return field.metadata[_STATIC]
