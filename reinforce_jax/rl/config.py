"""Training configuration: a run's settings and its algorithm's hyperparameters.

`TrainConfig` is one frozen, hashable dataclass: the run's settings (batch
shape, steps, optimizer) and `algorithm`, the algorithm's hyperparameter value
(`hparams.Reinforce`, `hparams.A2C`, `hparams.PPO`), where every
hyperparameter is declared once. Its keyword shortcuts (`TrainConfig(algo="ppo",
clip_eps=0.1)`), the sweepable names and the command line's flags are derived
from those declarations. `sweep_grid` expands a sweep's values into runs.

This module does not import JAX.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reinforce_jax._src.scalars import is_concrete_number, is_real_dtype
from reinforce_jax.rl import hparams as hp
from reinforce_jax.rl.hparams import (
    ALGORITHMS,
    BASELINES,
    AlgorithmParams,
    Range,
    Reinforce,
    all_hparam_ranges,
    check_value,
    static_fields,
)

__all__ = [
    "sweep_grid",
    "TrainConfig",
]

ALGOS = tuple(ALGORITHMS)
BASELINE_KINDS = tuple(BASELINES)

# The run's own float settings (the optimizer's), declared like the algorithms'.
RUN_RANGES = {
    "learning_rate": Range(0.0, math.inf, True, "Adam learning rate"),
    "max_grad_norm": Range(0.0, math.inf, True, "clip the global gradient norm"),
}
_RUN_INTS = {"num_envs": 1, "rollout_length": 1, "num_steps": 0}
_RUN_BOOLS = ("anneal_lr", "normalize_observations")




def _check_scalar(name: str, value: Any, where: Range) -> None:
  """A config holds Python-number hyperparameters only (it is hashable, it is static)."""
  if not is_concrete_number(value) and not (
      hasattr(value, "dtype") and np.ndim(value) == 0 and is_real_dtype(value.dtype)
      and not np.issubdtype(value.dtype, np.bool_)):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  check_value(name, float(np.asarray(value)) if not is_concrete_number(value) else value, where)


def _baseline_value(kind: Any):
  """A baseline value from its command-line name (or a value already)."""
  if kind is None or isinstance(kind, hp.Baseline):
    return kind
  if not isinstance(kind, str) or kind not in BASELINES:
    raise ValueError(f"baseline must be one of {BASELINE_KINDS}, got {kind!r}")
  cls = BASELINES[kind]
  return None if cls is None else cls()


def _algorithm_names(algorithm: AlgorithmParams) -> set[str]:
  """The keyword names that set something in `algorithm`: floats (flat) and static fields."""
  return set(algorithm.flat()) | set(static_fields(type(algorithm)))


def _build_algorithm(algo: str, baseline: Any, settings: dict) -> AlgorithmParams:
  """The hyperparameter value of `algo` with `baseline` and flat `settings`."""
  if not isinstance(algo, str) or algo not in ALGORITHMS:
    raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
  cls = ALGORITHMS[algo]
  baseline = _baseline_value(baseline)
  if cls is Reinforce:
    algorithm = Reinforce(baseline=baseline)
  else:
    if baseline is not None and not baseline.needs_value:
      raise ValueError(f"baseline={baseline.kind!r} applies to algo='reinforce'; {algo} "
                       "always uses the learned value function")
    algorithm = cls()
  statics = static_fields(cls)
  floats = {k: v for k, v in settings.items() if k not in statics}
  known = algorithm.flat()
  for name, value in floats.items():
    if name in known:
      _check_scalar(name, value, all_hparam_ranges()[name])
      floats[name] = float(np.asarray(value))  # a JAX scalar too: the config stays hashable
  # Names the algorithm lacks are left to the caller, which names its baseline too.
  algorithm = algorithm.replace_flat(**{k: v for k, v in floats.items() if k in known})
  return algorithm.replace(**{k: v for k, v in settings.items() if k in statics})


@dataclasses.dataclass(frozen=True, init=False)
class TrainConfig:
  """Settings of a policy-gradient run. The defaults train the seed's bandit.

  Build it from an algorithm's hyperparameters, or with their names as
  keyword shortcuts (the same value):

      TrainConfig(num_envs=4, algorithm=hparams.PPO(clip_eps=0.1))
      TrainConfig(num_envs=4, algo="ppo", clip_eps=0.1)

  A name the algorithm does not have is an error (`clip_eps` for REINFORCE), so
  a setting is never silently ignored. Hyperparameters read as attributes too
  (`config.clip_eps`).

  Attributes:
    num_envs: environments stepped in parallel (`B`).
    rollout_length: environment steps per environment per train step (`T`);
      one train step sees `num_envs * rollout_length` transitions.
    num_steps: train steps of a whole run (`make_train`, the CLI).
    learning_rate: Adam step size used by `make_optimizer` (the CLI's optimizer).
    max_grad_norm: if set, `make_optimizer` clips the global gradient norm.
    anneal_lr: `make_optimizer` anneals the learning rate linearly to 0 over
      `num_steps` (PureJaxRL's and CleanRL's PPO schedule).
    normalize_observations: the policy sees observations normalised with one
      running mean and variance shared by all environments, kept in
      `TrainState.obs_stats` (`reinforce_jax.rl.normalization`: rejax's rule,
      updated after every environment step).
    algorithm: the algorithm's hyperparameters (`reinforce_jax.rl.hparams`); its
      `build()` is the algorithm (`reinforce_jax.rl.algorithms`).
  """

  num_envs: int = 1024
  rollout_length: int = 1
  num_steps: int = 100
  learning_rate: float = 0.05
  max_grad_norm: float | None = None
  anneal_lr: bool = False
  normalize_observations: bool = False
  algorithm: AlgorithmParams = Reinforce()

  def __init__(self, *, algorithm: AlgorithmParams | None = None, algo: str | None = None,
               baseline: Any = (), **settings):
    run = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name != "algorithm"}
    for name in list(settings):
      if name in run:
        run[name] = settings.pop(name)
    for name, minimum in _RUN_INTS.items():
      hp._check_int(name, run[name], minimum)
    for name in _RUN_BOOLS:
      hp._check_bool(name, run[name])
    _check_scalar("learning_rate", run["learning_rate"], RUN_RANGES["learning_rate"])
    if run["max_grad_norm"] is not None:
      _check_scalar("max_grad_norm", run["max_grad_norm"], RUN_RANGES["max_grad_norm"])
    for name in RUN_RANGES:
      if run[name] is not None:
        run[name] = float(np.asarray(run[name]))
    if algorithm is None:
      algorithm = _build_algorithm(
          "reinforce" if algo is None else algo, None if baseline == () else baseline,
          settings)
    else:
      if not isinstance(algorithm, AlgorithmParams):
        raise ValueError(f"algorithm must be a hyperparameter value of {ALGOS} "
                         f"(reinforce_jax.rl.hparams), got {algorithm!r}")
      if algo is not None and algo != algorithm.algo:
        raise ValueError(f"algo={algo!r} contradicts algorithm={algorithm!r}")
      if baseline != ():
        if not isinstance(algorithm, Reinforce):
          raise ValueError(f"baseline applies to algo='reinforce', got {algorithm.label()}")
        algorithm = algorithm.replace(baseline=_baseline_value(baseline))
      if settings:
        algorithm = _build_algorithm(algorithm.algo, getattr(algorithm, "baseline", None),
                                     {**_settings_of(algorithm), **settings})
    unknown = sorted(set(settings) - _algorithm_names(algorithm))
    if unknown:
      name = unknown[0]
      if name in all_hparam_ranges() or any(name in static_fields(c)
                                            for c in ALGORITHMS.values()):
        raise ValueError(f"{name} is not a setting of {_describe(algorithm)} "
                         f"(its settings: {sorted(_algorithm_names(algorithm))})")
      raise ValueError(f"unknown setting {name!r}; TrainConfig takes {sorted(run)}, "
                       f"'algo', 'baseline', 'algorithm' and the algorithm's settings")
    # Every float of the algorithm, a JAX array's entries too (its class checks the rest).
    for name, _, _, where in hp._hparam_fields(algorithm):
      check_value(name, algorithm.flat()[name], where, device_arrays=True)
    algorithm.check_batch(run["num_envs"], run["rollout_length"])
    for name, value in run.items():
      object.__setattr__(self, name, value)
    object.__setattr__(self, "algorithm", algorithm)

  def __getattr__(self, name: str):
    # Only called for names that are not attributes: the algorithm's settings.
    if name.startswith("__") or name == "algorithm":
      raise AttributeError(name)
    algorithm = self.algorithm
    values = _settings_of(algorithm)
    if name in values:
      return values[name]
    raise AttributeError(f"{name!r} is not a setting of TrainConfig or of "
                         f"{_describe(algorithm)}")

  @property
  def algo(self) -> str:
    return self.algorithm.algo

  @property
  def baseline(self) -> str:
    """REINFORCE's baseline by its command-line name; `"none"` for the others."""
    return self.algorithm.baseline_kind if isinstance(self.algorithm, Reinforce) else "none"

  @property
  def uses_value(self) -> bool:
    """Whether the policy needs a value head."""
    return self.algorithm.needs_value

  def replace(self, **changes) -> TrainConfig:
    """A copy with `changes` (run settings, `algo`, `baseline` or hyperparameters).

    Settings of the old algorithm (or baseline) that the new one lacks are
    dropped; a name given here that the new one lacks is an error.
    """
    if "algorithm" in changes:
      return TrainConfig(**{**self.run_settings(), **changes})
    flat = self.to_dict()
    algo, baseline = changes.pop("algo", flat["algo"]), changes.pop("baseline", ())
    if baseline == () and algo == self.algo:
      baseline = getattr(self.algorithm, "baseline", None)
    keep = {k: v for k, v in flat.items() if k not in ("algo", "baseline")}
    if algo != self.algo or baseline is not getattr(self.algorithm, "baseline", None):
      target = _build_algorithm(algo, None if baseline == () else baseline, {})
      allowed = _algorithm_names(target) | set(self.run_settings())
      keep = {k: v for k, v in keep.items() if k in allowed}
    return TrainConfig(algo=algo, baseline=None if baseline == () else baseline,
                       **{**keep, **changes})

  def run_settings(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name != "algorithm"}

  def to_dict(self) -> dict[str, Any]:
    """Flat and JSON-ready: run settings, `algo`, `baseline` and the algorithm's settings.

    `TrainConfig.from_dict` reads it back (what a run folder's `config.json` holds).
    """
    return {**self.run_settings(), "algo": self.algo, "baseline": self.baseline,
            **_settings_of(self.algorithm)}

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
    """A config from `to_dict`'s form; other keys, and settings the algorithm lacks, are
    ignored (records written before this layout held every algorithm's fields)."""
    algo = values.get("algo", "reinforce")
    baseline = values.get("baseline", "none")
    if algo != "reinforce":
      baseline = None
    target = _build_algorithm(algo, baseline, {})
    names = _algorithm_names(target) | {f.name for f in dataclasses.fields(cls)}
    names.discard("algorithm")
    return cls(algo=algo, baseline=baseline,
               **{k: v for k, v in values.items() if k in names})


def _settings_of(algorithm: AlgorithmParams) -> dict[str, Any]:
  statics = {name: getattr(algorithm, name) for name in static_fields(type(algorithm))}
  return {**algorithm.flat(), **statics}


def _describe(algorithm: AlgorithmParams) -> str:
  if isinstance(algorithm, Reinforce):
    return f"algo='reinforce' with baseline={algorithm.baseline_kind!r}"
  return algorithm.label()


SWEEPABLE = ("learning_rate", *all_hparam_ranges())


def sweep_grid(config: TrainConfig, grid: Mapping[str, Sequence[float]]) -> list[dict]:
  """Every combination of the values in `grid` (the first name varies slowest).

  Raises `ValueError` for a name that cannot be swept, one that `config` does
  not use (sweeping it would train the same run several times), an empty list,
  or a value the hyperparameter's declaration rejects.
  """
  if not grid:
    raise ValueError(f"nothing to sweep: give values for at least one of {list(SWEEPABLE)}")
  used = {"learning_rate", *config.algorithm.flat()}
  for name, values in grid.items():
    if name not in SWEEPABLE:
      raise ValueError(f"cannot sweep {name!r}; sweepable: {list(SWEEPABLE)}")
    if name not in used:
      raise ValueError(f"sweeping {name} would change nothing: it is not a hyperparameter of "
                       f"{_describe(config.algorithm)} (its hyperparameters: {sorted(used)})")
    if not len(values):
      raise ValueError(f"no values to sweep for {name}")
  combos = [dict(zip(grid, values, strict=True))
            for values in itertools.product(*grid.values())]
  for combo in combos:
    config.replace(**combo)  # validates each value, naming the field
  return combos
