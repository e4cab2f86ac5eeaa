"""Named tasks for the command line: an environment, a policy and a good config per algorithm."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn

from reinforce_jax.config import TrainConfig
from reinforce_jax.envs import CartPole, ContextualBandit, Environment, Pendulum
from reinforce_jax.policies import CategoricalPolicy, GaussianPolicy


@dataclasses.dataclass(frozen=True)
class Preset:
  make_env: Callable[[], Environment]
  hidden: tuple[int, ...]
  configs: dict[str, TrainConfig]  # a tuned config per algorithm
  default_algo: str
  description: str

  def policy(self, env, config: TrainConfig) -> nn.Module:
    """The preset's policy for `env`, with a separate value network when `config` needs one."""
    value = "separate" if config.uses_value else None
    return make_policy(env, self.hidden, value=value)


def make_policy(env, hidden: tuple[int, ...], *, value: str | None = None) -> nn.Module:
  """A categorical policy for discrete actions; a tanh-squashed Gaussian for a box."""
  bounds = getattr(env, "action_bounds", None)
  if bounds is not None:
    return GaussianPolicy(env.action_shape[0], hidden=hidden, squash=bounds, value=value)
  return CategoricalPolicy(env.num_actions, hidden=hidden, value=value)


_CARTPOLE_REINFORCE = TrainConfig(
    num_envs=64, rollout_length=200, gamma=0.99, baseline="leave_one_out",
    num_steps=150, learning_rate=3e-3, max_grad_norm=1.0)

PRESETS: dict[str, Preset] = {
    "bandit": Preset(
        make_env=ContextualBandit,
        hidden=(),  # the seed's nn.Linear(1, 2)
        configs={
            "reinforce": TrainConfig(num_steps=200),
            "a2c": TrainConfig(algo="a2c", num_steps=200, gae_lambda=1.0),
            "ppo": TrainConfig(algo="ppo", num_steps=100, learning_rate=0.02),
        },
        default_algo="reinforce",
        description="the seed's two-action contextual bandit (one-step episodes)",
    ),
    "cartpole": Preset(
        make_env=CartPole,
        hidden=(64, 64),
        configs={
            "reinforce": _CARTPOLE_REINFORCE,
            # From `reinforce-jax sweep cartpole --algo a2c --lr 2e-3,4e-3 --gae-lambda
            # 0.99,1 --value-coef 0.5,1 --num-seeds 3`: 499 +- 1 (the old 2e-3, 0.95,
            # 0.5: 231 +- 32).
            "a2c": TrainConfig(
                algo="a2c", num_envs=128, rollout_length=64, learning_rate=4e-3,
                gae_lambda=1.0, value_coef=1.0, max_grad_norm=0.5, num_steps=200,
                normalize_advantages=True),
            "ppo": TrainConfig(
                algo="ppo", num_envs=64, rollout_length=128, learning_rate=2.5e-3,
                max_grad_norm=0.5, num_steps=80, normalize_advantages=True,
                entropy_coef=0.01),
        },
        default_algo="reinforce",
        description="CartPole-v1 (gymnasium's dynamics, 500-step limit)",
    ),
    "pendulum": Preset(
        make_env=Pendulum,
        hidden=(64, 64),
        configs={
            "ppo": TrainConfig(
                algo="ppo", num_envs=32, rollout_length=200, gamma=0.95, gae_lambda=0.95,
                num_epochs=10, num_minibatches=8, learning_rate=3e-4, max_grad_norm=0.5,
                normalize_advantages=True, num_steps=120),
            "a2c": TrainConfig(
                algo="a2c", num_envs=32, rollout_length=50, gamma=0.95, learning_rate=1e-3,
                max_grad_norm=0.5, normalize_advantages=True, num_steps=400),
            "reinforce": TrainConfig(
                num_envs=64, rollout_length=200, gamma=0.95, baseline="value",
                learning_rate=1e-3, max_grad_norm=0.5, normalize_advantages=True,
                num_steps=300),
        },
        default_algo="ppo",
        description="Pendulum-v1 (continuous torque; gymnasium's dynamics and reward)",
    ),
}
