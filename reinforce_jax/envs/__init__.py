"""Functional environments (gymnax 1.x interface), one file each, and `make`.

`base` (the interface and auto-reset), `bandit` (the seed's contextual bandit),
`cartpole`, `pendulum`, `wrappers` (episode statistics, observation normalisation and
masking), `gymnax_env` and `adapters` (gymnax, Brax and Jumanji environments).

Imports: `reinforce_jax._src` only.
"""

from reinforce_jax.envs import adapters
from reinforce_jax.envs.adapters import BraxEnv, JumanjiEnv, LegacyGymnaxEnv
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
  velocities), any gymnax one as `"gymnax:<name>"` (keyword arguments go to
  the constructor, or to `gymnax.make`; the 5-value API of gymnax 0.0.x is
  adapted by `LegacyGymnaxEnv`), a Brax one as `"brax:<name>"` (`BraxEnv`;
  `episode_length` and `action_repeat` go to Brax's `EpisodeWrapper`, the rest
  to `brax.envs.get_environment`) or a Jumanji one as `"jumanji:<name>"`
  (`JumanjiEnv`; `flatten`, the rest to `jumanji.make`)."""
  if name.startswith("gymnax:"):
    try:
      import gymnax
    except ImportError:
      raise ImportError(
          f"{name!r} needs gymnax: pip install 'reinforce_jax[gymnax]'") from None
    env, params = gymnax.make(name.removeprefix("gymnax:"), **kwargs)
    if adapters.is_legacy_gymnax(env, params):  # gymnax 0.0.x: `done` only
      return adapters.LegacyGymnaxEnv(env, params)
    return GymnaxEnv(env, params)
  if name.startswith("brax:"):
    try:
      from brax import envs as brax_envs
    except ImportError:
      raise ImportError(f"{name!r} needs brax: pip install 'reinforce_jax[brax]'") from None
    wrap = {k: kwargs.pop(k) for k in ("episode_length", "action_repeat") if k in kwargs}
    return adapters.BraxEnv(brax_envs.get_environment(name.removeprefix("brax:"), **kwargs),
                            name=name, **wrap)
  if name.startswith("jumanji:"):
    try:
      import jumanji
    except ImportError:
      raise ImportError(f"{name!r} needs jumanji: pip install 'reinforce_jax[jumanji]'") from None
    flatten = kwargs.pop("flatten", True)
    return adapters.JumanjiEnv(jumanji.make(name.removeprefix("jumanji:"), **kwargs),
                               flatten=flatten, name=name)
  if name not in REGISTRY:
    raise ValueError(
        f"unknown environment {name!r}; known: {sorted(REGISTRY)}, 'gymnax:<name>', "
        "'brax:<name>' or 'jumanji:<name>'")
  return REGISTRY[name](**kwargs)


__all__ = [
    "BanditParams",
    "BanditState",
    "BraxEnv",
    "CartPole",
    "CartPoleParams",
    "CartPoleState",
    "ContextualBandit",
    "Environment",
    "EpisodeStatistics",
    "GymnaxEnv",
    "JumanjiEnv",
    "LegacyGymnaxEnv",
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
