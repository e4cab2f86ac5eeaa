"""The REINFORCE training step, and whole runs built from it.

`make_train_step` returns two pure functions. `train_step(state, key)` rolls out
`B` environments for `T` steps (one policy evaluation per step), computes the
discounted reward-to-go, builds the surrogate with `reinforce_loss`,
differentiates it with `jax.grad` and applies any `optax.GradientTransformation`.

Nothing is jitted on the caller's behalf:

    init_fn, train_step = make_train_step(env, policy, optax.adam(1e-2), config)
    train_step = jax.jit(train_step, donate_argnums=0)
    state = init_fn(jax.random.key(0))
    key = jax.random.key(1)
    for _ in range(100):
      state, metrics = train_step(state, key)  # fresh randomness: step is folded in
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from reinforce_jax import baselines
from reinforce_jax.config import TrainConfig
from reinforce_jax.losses import reinforce_loss
from reinforce_jax.returns import discounted_returns
from reinforce_jax.rollout import EnvCarry, reset_envs, rollout

Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
  """Everything a run carries from one train step to the next."""

  params: Any           # policy parameters
  opt_state: Any        # optimizer state
  env: EnvCarry         # batched environment state, observations, episode counters
  step: jax.Array       # [] int32, train steps taken


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Adam at `config.learning_rate`, after global-norm clipping if configured."""
  adam = optax.adam(config.learning_rate)
  if config.max_grad_norm is None:
    return adam
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


def make_train_step(
    env,
    policy: nn.Module,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    *,
    env_params: Any = None,
) -> tuple[Callable[[jax.Array], TrainState],
           Callable[[TrainState, jax.Array], tuple[TrainState, Metrics]]]:
  """Builds `(init_fn, train_step)` for REINFORCE on `env`.

  Args:
    env: a functional environment with gymnax 1.x `reset`/`step` (auto-reset).
    policy: a flax module mapping observations `[B, ...]` to a distribution with
      batch shape `[B]` (e.g. `CategoricalPolicy`).
    optimizer: any `optax.GradientTransformation`.
    config: `TrainConfig` (`num_envs`, `rollout_length`, `gamma`, `baseline`).
    env_params: the environment's params; `env.default_params` if `None`.

  Returns:
    `init_fn(key) -> TrainState` and `train_step(state, key) -> (state, metrics)`.
    `metrics` holds float32/int32 scalars: `loss`, `mean_return` (mean
    undiscounted return of the episodes that finished during this step, NaN if
    none did), `num_episodes`, `mean_length`, `entropy` and `grad_norm`.

  The loss is the mean of `-log_prob * (G_t - b)` over all `T * B` steps, so its
  negated gradient estimates `(1/T) sum_t E[grad log pi(a_t | s_t) (G_t - b)]`:
  for one-step episodes (`T = 1`) exactly the gradient of the expected reward.
  Returns are cut (not bootstrapped) at truncation and at the end of the
  rollout, as REINFORCE has no value estimate to bootstrap from.
  """
  if env_params is None:
    env_params = env.default_params
  num_envs, num_steps = config.num_envs, config.rollout_length

  def init_fn(key: jax.Array) -> TrainState:
    key_params, key_env = jax.random.split(key)
    env_carry = reset_envs(key_env, env, env_params, num_envs)
    params = policy.init(key_params, env_carry.obs)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        env=env_carry,
        step=jnp.zeros((), jnp.int32),
    )

  def loss_fn(params, env_carry: EnvCarry, key: jax.Array):
    env_carry, traj = rollout(
        key, params, policy.apply, env, env_params, env_carry, num_steps)
    returns = discounted_returns(
        traj.reward, traj.terminated, traj.truncated, gamma=config.gamma)
    baseline = None
    if config.baseline == "leave_one_out":
      baseline = baselines.leave_one_out(returns, axis=1)
    loss = reinforce_loss(traj.log_prob, returns, baseline)
    return loss, (env_carry, traj)

  def train_step(state: TrainState, key: jax.Array) -> tuple[TrainState, Metrics]:
    # The step count is folded into the key, so a loop may pass one key for the
    # whole run and still draw fresh randomness every step.
    key = jax.random.fold_in(key, state.step)
    (loss, (env_carry, traj)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.env, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    done = jnp.logical_or(traj.terminated, traj.truncated)
    num_episodes = jnp.sum(done, dtype=jnp.int32)
    per_episode = lambda total: jnp.where(  # noqa: E731
        num_episodes > 0, total / jnp.maximum(num_episodes, 1), jnp.nan)
    metrics = {
        "loss": loss,
        "mean_return": per_episode(jnp.sum(traj.episode_return)),
        "num_episodes": num_episodes,
        "mean_length": per_episode(jnp.sum(traj.episode_length).astype(jnp.float32)),
        "entropy": jnp.mean(traj.entropy),
        "grad_norm": jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))),
    }
    new_state = TrainState(
        params=params, opt_state=opt_state, env=env_carry, step=state.step + 1)
    return new_state, metrics

  return init_fn, train_step


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class RunOutput(NamedTuple):
  state: TrainState    # the last state whose loss and parameters were finite
  metrics: Metrics     # each [max_steps]; entries past `steps_done` are zero
  steps_done: jax.Array  # [] int32, train steps completed by this call
  finite: jax.Array    # [] bool, False if the run stopped on a non-finite value


def make_run(
    train_step: Callable[[TrainState, jax.Array], tuple[TrainState, Metrics]],
    max_steps: int,
) -> Callable[[TrainState, jax.Array, jax.Array], RunOutput]:
  """Fuses up to `max_steps` train steps into one program with a finiteness guard.

  `run(state, key, num_steps)` calls `train_step(state, key)` `num_steps <=
  max_steps` times inside a `lax.while_loop`, so `num_steps` is a traced value
  (any count, one compile). `train_step` folds `state.step` into the key, so a
  run split into chunks gives bit-identical results to the same run in one call.
  If a step's loss or new parameters are not finite, the loop stops before
  committing that step and returns the last good state.
  """

  def run(state: TrainState, key: jax.Array, num_steps) -> RunOutput:
    metric_shapes = jax.eval_shape(train_step, state, key)[1]
    buffer = jax.tree.map(
        lambda s: jnp.zeros((max_steps,) + s.shape, s.dtype), metric_shapes)
    limit = jnp.minimum(jnp.asarray(num_steps, jnp.int32), max_steps)

    def cond(carry):
      i, finite, _, _ = carry
      return jnp.logical_and(i < limit, finite)

    def body(carry):
      i, _, state, buffer = carry
      new_state, metrics = train_step(state, key)
      finite = jnp.logical_and(jnp.isfinite(metrics["loss"]), _all_finite(new_state.params))
      state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      buffer = jax.tree.map(lambda b, m: b.at[i].set(m), buffer, metrics)
      return i + finite.astype(jnp.int32), finite, state, buffer

    steps_done, finite, state, buffer = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), jnp.array(True), state, buffer))
    return RunOutput(state, buffer, steps_done, finite)

  return run


def make_train(
    env,
    policy: nn.Module,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    *,
    env_params: Any = None,
) -> Callable[[jax.Array], RunOutput]:
  """A whole run of `config.num_steps` train steps as one pure function of a key.

  `jax.jit(make_train(...))(key)` compiles the run into one program;
  `jax.jit(jax.vmap(make_train(...)))(jax.random.split(key, n))` trains `n`
  independent seeds in one program. Metrics come back stacked, `[num_steps]`
  (`[n, num_steps]` under vmap).
  """
  init_fn, train_step = make_train_step(env, policy, optimizer, config, env_params=env_params)
  run = make_run(train_step, max(config.num_steps, 1))

  def train(key: jax.Array) -> RunOutput:
    key_init, key_run = jax.random.split(key)
    return run(init_fn(key_init), key_run, config.num_steps)

  return train
