"""Named tasks for the command line: an environment, a policy and a good config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from reinforce_jax.config import TrainConfig
from reinforce_jax.envs import CartPole, ContextualBandit, Environment


@dataclasses.dataclass(frozen=True)
class Preset:
  make_env: Callable[[], Environment]
  hidden: tuple[int, ...]
  config: TrainConfig
  description: str


PRESETS: dict[str, Preset] = {
    "bandit": Preset(
        make_env=ContextualBandit,
        hidden=(),  # the seed's nn.Linear(1, 2)
        config=TrainConfig(num_steps=200),
        description="the seed's two-action contextual bandit (one-step episodes)",
    ),
    "cartpole": Preset(
        make_env=CartPole,
        hidden=(64, 64),
        config=TrainConfig(
            num_envs=64, rollout_length=200, gamma=0.99, baseline="leave_one_out",
            num_steps=150, learning_rate=3e-3, max_grad_norm=1.0),
        description="CartPole-v1 (gymnasium's dynamics, 500-step limit)",
    ),
}
