"""Training configuration: one frozen, typed dataclass (hashable, so it can be static)."""

from __future__ import annotations

import dataclasses
import math

BASELINES = ("none", "leave_one_out")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Settings of a REINFORCE run. The defaults train the seed's bandit.

  Attributes:
    num_envs: environments stepped in parallel (`B`).
    rollout_length: environment steps per environment per train step (`T`);
      one train step sees `num_envs * rollout_length` transitions.
    gamma: discount of the reward-to-go, in [0, 1].
    baseline: `"none"` (the seed's plain `-log_prob * reward`) or
      `"leave_one_out"` (per time step, the mean return of the other
      environments; unbiased because environments are independent).
    num_steps: train steps of a whole run (`make_train`, the CLI).
    learning_rate: Adam step size used by `make_optimizer` (the CLI's optimizer).
    max_grad_norm: if set, `make_optimizer` clips the global gradient norm.
  """

  num_envs: int = 1024
  rollout_length: int = 1
  gamma: float = 0.99
  baseline: str = "none"
  num_steps: int = 100
  learning_rate: float = 0.05
  max_grad_norm: float | None = None

  def __post_init__(self):
    for name in ("num_envs", "rollout_length"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(self.num_steps, int) or self.num_steps < 0:
      raise ValueError(f"num_steps must be a non-negative integer, got {self.num_steps!r}")
    if not 0.0 <= self.gamma <= 1.0:
      raise ValueError(f"gamma must lie in [0, 1], got {self.gamma!r}")
    if self.baseline not in BASELINES:
      raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
    if self.baseline == "leave_one_out" and self.num_envs < 2:
      raise ValueError("baseline='leave_one_out' needs num_envs >= 2")
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"learning_rate must be finite and positive, got {self.learning_rate!r}")
    if self.max_grad_norm is not None and not (
        math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
      raise ValueError(f"max_grad_norm must be finite and positive, got {self.max_grad_norm!r}")

  def replace(self, **changes) -> TrainConfig:
    return dataclasses.replace(self, **changes)
