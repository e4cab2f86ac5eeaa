"""reinforce_jax: score-function (log-derivative trick) gradients in JAX."""

import os as _os

from reinforce_jax import baselines, envs, monte_carlo, policies
from reinforce_jax.compiler import avoid_cpu_deadlock, recommended_compiler_options
from reinforce_jax.config import Hyperparams, TrainConfig
from reinforce_jax.estimators import (
    GradStats,
    dice_objective,
    grad_estimate,
    gumbel_softmax,
    magic_box,
    straight_through,
    vimco_objective,
)
from reinforce_jax.losses import entropy_bonus, ppo_clip_loss, reinforce_loss, value_loss
from reinforce_jax.returns import (
    discounted_returns,
    gae_advantages,
    lambda_returns,
    normalize_advantages,
)
from reinforce_jax.rollout import EnvCarry, Trajectory, reset_envs, rollout
from reinforce_jax.train import (
    RunOutput,
    TrainState,
    make_optimizer,
    make_run,
    make_train,
    make_train_step,
)

__version__ = "0.1.0"

if not _os.environ.get("REINFORCE_JAX_KEEP_XLA_FLAGS"):
  # XLA:CPU in jaxlib 0.10 hangs on some vmapped training programs (24 a2c seeds
  # in one jit, for one); see reinforce_jax/compiler.py. A no-op elsewhere.
  avoid_cpu_deadlock()

__all__ = [
    "EnvCarry",
    "GradStats",
    "Hyperparams",
    "RunOutput",
    "TrainConfig",
    "TrainState",
    "Trajectory",
    "avoid_cpu_deadlock",
    "baselines",
    "dice_objective",
    "discounted_returns",
    "entropy_bonus",
    "envs",
    "gae_advantages",
    "grad_estimate",
    "gumbel_softmax",
    "magic_box",
    "monte_carlo",
    "lambda_returns",
    "make_optimizer",
    "make_run",
    "make_train",
    "make_train_step",
    "normalize_advantages",
    "policies",
    "ppo_clip_loss",
    "recommended_compiler_options",
    "reinforce_loss",
    "reset_envs",
    "rollout",
    "straight_through",
    "value_loss",
    "vimco_objective",
]
