"""Training configuration: one frozen, typed dataclass (hashable, so it can be static)."""

from __future__ import annotations

import dataclasses
import math

ALGOS = ("reinforce", "a2c", "ppo")
BASELINES = ("none", "constant", "ema", "batch_mean", "leave_one_out", "value")


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
    clip_eps: PPO's clipping range.
    num_epochs: PPO passes over each rollout.
    num_minibatches: PPO minibatches per pass; must divide `num_envs * rollout_length`.
    num_steps: train steps of a whole run (`make_train`, the CLI).
    learning_rate: Adam step size used by `make_optimizer` (the CLI's optimizer).
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
  num_epochs: int = 4
  num_minibatches: int = 4
  num_steps: int = 100
  learning_rate: float = 0.05
  max_grad_norm: float | None = None

  def __post_init__(self):
    for name in ("num_envs", "rollout_length", "num_epochs", "num_minibatches"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(self.num_steps, int) or self.num_steps < 0:
      raise ValueError(f"num_steps must be a non-negative integer, got {self.num_steps!r}")
    for name in ("gamma", "gae_lambda", "ema_decay"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
    if self.algo not in ALGOS:
      raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
    if self.baseline not in BASELINES:
      raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
    if self.algo != "reinforce" and self.baseline not in ("none", "value"):
      raise ValueError(
          f"baseline={self.baseline!r} applies to algo='reinforce'; {self.algo} always "
          "uses the learned value function")
    if self.baseline in ("leave_one_out", "batch_mean") and self.num_envs < 2:
      raise ValueError(f"baseline={self.baseline!r} needs num_envs >= 2")
    for name in ("entropy_coef", "value_coef", "clip_eps"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and non-negative, got {value!r}")
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"learning_rate must be finite and positive, got {self.learning_rate!r}")
    if self.max_grad_norm is not None and not (
        math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
      raise ValueError(f"max_grad_norm must be finite and positive, got {self.max_grad_norm!r}")
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
