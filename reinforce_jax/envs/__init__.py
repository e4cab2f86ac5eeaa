"""Functional environments (gymnax 1.x interface), one file each, and `make`."""

from reinforce_jax.envs.bandit import (
    BanditParams,
    BanditState,
    ContextualBandit,
    make_params,
    seed_params,
)
from reinforce_jax.envs.base import Environment
from reinforce_jax.envs.cartpole import CartPole, CartPoleParams, CartPoleState
from reinforce_jax.envs.gymnax_env import GymnaxEnv
from reinforce_jax.envs.pendulum import Pendulum, PendulumParams, PendulumState
from reinforce_jax.envs.wrappers import (
    EpisodeStatistics,
    NormalizeObservation,
    ObservationMask,
    Wrapper,
    hide_velocities,
)

REGISTRY = {
    "ContextualBandit-v0": ContextualBandit,
    "CartPole-v1": CartPole,
    "MaskedCartPole-v1": hide_velocities,  # CartPole without its velocities
    "Pendulum-v1": Pendulum,
}


def make(name: str, **kwargs) -> Environment:
  """An environment by name: ours (`"CartPole-v1"`, `"Pendulum-v1"`,
  `"ContextualBandit-v0"`, `"MaskedCartPole-v1"`: CartPole without its
  velocities) or any gymnax 1.x one as `"gymnax:<name>"` (keyword
  arguments go to the constructor, or to `gymnax.make`)."""
  if name.startswith("gymnax:"):
    try:
      import gymnax
    except ImportError:
      raise ImportError(
          f"{name!r} needs gymnax: pip install 'reinforce_jax[gymnax]'") from None
    return GymnaxEnv(*gymnax.make(name.removeprefix("gymnax:"), **kwargs))
  if name not in REGISTRY:
    raise ValueError(
        f"unknown environment {name!r}; known: {sorted(REGISTRY)} or 'gymnax:<name>'")
  return REGISTRY[name](**kwargs)


__all__ = [
    "BanditParams",
    "BanditState",
    "CartPole",
    "CartPoleParams",
    "CartPoleState",
    "ContextualBandit",
    "Environment",
    "EpisodeStatistics",
    "GymnaxEnv",
    "NormalizeObservation",
    "ObservationMask",
    "REGISTRY",
    "Wrapper",
    "hide_velocities",
    "make",
    "Pendulum",
    "PendulumParams",
    "PendulumState",
    "make_params",
    "seed_params",
]
