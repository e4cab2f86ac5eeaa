"""reinforce_jax: score-function (log-derivative trick) gradients in JAX."""

from reinforce_jax import baselines, envs, policies
from reinforce_jax.compiler import recommended_compiler_options
from reinforce_jax.config import TrainConfig
from reinforce_jax.losses import reinforce_loss
from reinforce_jax.returns import discounted_returns
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

__all__ = [
    "EnvCarry",
    "RunOutput",
    "TrainConfig",
    "TrainState",
    "Trajectory",
    "baselines",
    "discounted_returns",
    "envs",
    "make_optimizer",
    "make_run",
    "make_train",
    "make_train_step",
    "policies",
    "recommended_compiler_options",
    "reinforce_loss",
    "reset_envs",
    "rollout",
]
