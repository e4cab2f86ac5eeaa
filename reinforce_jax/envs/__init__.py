"""Functional environments (gymnax 1.x interface), one file each."""

from reinforce_jax.envs.bandit import (
    BanditParams,
    BanditState,
    ContextualBandit,
    make_params,
    seed_params,
)
from reinforce_jax.envs.base import Environment
from reinforce_jax.envs.cartpole import CartPole, CartPoleParams, CartPoleState

__all__ = [
    "BanditParams",
    "BanditState",
    "CartPole",
    "CartPoleParams",
    "CartPoleState",
    "ContextualBandit",
    "Environment",
    "make_params",
    "seed_params",
]
