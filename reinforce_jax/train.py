"""The policy-gradient training step (REINFORCE, a2c, ppo), and whole runs built from it.

`make_train_step` returns two pure functions. `train_step(state, key)` rolls out
`B` environments for `T` steps, computes returns and advantages, builds the
surrogate (`reinforce_loss`, or PPO's clipped surrogate), differentiates it with
`jax.grad` and applies any `optax.GradientTransformation`.

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

from reinforce_jax import _sampling, baselines
from reinforce_jax.config import Hyperparams, TrainConfig
from reinforce_jax.losses import clipped_value_loss, entropy_bonus, ppo_clip_loss, value_loss
from reinforce_jax.returns import discounted_returns, gae_advantages, normalize_advantages
from reinforce_jax.rollout import (
    EnvCarry,
    Trajectory,
    reset_envs,
    rollout,
    score,
    split_output,
)

Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
  """Everything a run carries from one train step to the next."""

  params: Any           # policy parameters
  opt_state: Any        # optimizer state
  env: EnvCarry         # batched environment state, observations, episode counters
  step: jax.Array       # [] int32, train steps taken
  baseline: Any = ()    # [] float32 EMA baseline when config.baseline == "ema", else ()
  hyperparams: Any = ()  # () = the config's constants, or a `Hyperparams` of traced values


class _Minibatch(NamedTuple):
  obs: jax.Array
  sample: jax.Array
  old_log_prob: jax.Array
  old_value: jax.Array
  advantage: jax.Array
  target: jax.Array


def updates_per_step(config: TrainConfig) -> int:
  """Optimizer updates in one train step: `num_epochs * num_minibatches` for ppo, else 1."""
  return config.num_epochs * config.num_minibatches if config.algo == "ppo" else 1


def linear_anneal(config: TrainConfig) -> optax.GradientTransformation:
  """Scales updates by `1 - step / num_steps`, from 1 down to 0 over the run.

  Chained after Adam it anneals the learning rate linearly as PureJaxRL and
  CleanRL do: every optimizer update of train step `t` (0-based) is scaled by
  `1 - t / config.num_steps`.
  """
  per_step = updates_per_step(config)
  total = max(config.num_steps, 1)

  def fraction(count):
    return jnp.maximum(1.0 - (count // per_step) / total, 0.0)

  return optax.scale_by_schedule(fraction)


def make_optimizer(
    config: TrainConfig, *, adam: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
  """Adam at `config.learning_rate`, after global-norm clipping if configured,
  annealed linearly to 0 over `config.num_steps` with `config.anneal_lr`.

  `adam` replaces the Adam step (sweeps pass one whose learning rate is state).
  """
  parts = [optax.adam(config.learning_rate) if adam is None else adam]
  if config.max_grad_norm is not None:
    parts.insert(0, optax.clip_by_global_norm(config.max_grad_norm))
  if config.anneal_lr:
    parts.append(linear_anneal(config))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def _episode_columns(traj) -> dict[str, jax.Array]:
  """Per-transition columns whose sums give the episode metrics (no gradient)."""
  traj = jax.lax.stop_gradient(traj)
  return {"num_episodes": jnp.logical_or(traj.terminated, traj.truncated),
          "episode_return": traj.episode_return, "episode_length": traj.episode_length}


def _episode_metrics(sums: dict[str, jax.Array]) -> Metrics:
  """`mean_return`, `num_episodes`, `mean_length` from `_episode_columns`' sums."""
  num_episodes = sums["num_episodes"]

  def per_episode(total):
    return jnp.where(num_episodes > 0, total / jnp.maximum(num_episodes, 1), jnp.nan)

  return {
      "mean_return": per_episode(sums["episode_return"]),
      "num_episodes": num_episodes.astype(jnp.int32),
      "mean_length": per_episode(sums["episode_length"]),
  }


def _baseline(config: TrainConfig, hp, returns, value, ema):
  """REINFORCE's baseline for `[T, B]` returns (see `TrainConfig.baseline`)."""
  if config.baseline == "constant":
    return hp.baseline_constant
  if config.baseline == "ema":
    return ema
  if config.baseline == "batch_mean":
    return baselines.batch_mean(returns, axis=1)
  if config.baseline == "leave_one_out":
    return baselines.leave_one_out(returns, axis=1)
  if config.baseline == "value":
    return value
  return 0.0


def make_train_step(
    env,
    policy: nn.Module,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    *,
    env_params: Any = None,
    unroll: int = 1,
) -> tuple[Callable[[jax.Array], TrainState],
           Callable[[TrainState, jax.Array], tuple[TrainState, Metrics]]]:
  """Builds `(init_fn, train_step)` for `config.algo` on `env`.

  Args:
    env: a functional environment with gymnax 1.x `reset`/`step` (auto-reset).
    policy: a flax module mapping observations `[B, ...]` to a distribution with
      batch shape `[B]`, or to `(distribution, value [B])` (needed by a2c, ppo
      and the `"value"` baseline).
    optimizer: any `optax.GradientTransformation`.
    config: `TrainConfig`.
    env_params: the environment's params; `env.default_params` if `None`.
    unroll: loop iterations fused per compiled iteration, for the rollout and
      PPO's minibatch updates (`lax.scan`'s `unroll`). Same values; a speed knob
      for small batches (`benchmarks/ppo_levers.py` measures it).

  Returns:
    `init_fn(key) -> TrainState` and `train_step(state, key) -> (state, metrics)`.
    `metrics` holds float32/int32 scalars: `loss`, `policy_loss`, `entropy`,
    `grad_norm`, `mean_return` (mean undiscounted return of the episodes that
    finished during this step, NaN if none did), `num_episodes`, `mean_length`;
    with a critic also `value_loss`; with ppo also `approx_kl` and
    `clip_fraction` (means over its minibatch updates).

  The loss and return hyperparameters (`gamma`, `gae_lambda`, `entropy_coef`,
  `value_coef`, `clip_eps`, `baseline_constant`, `ema_decay`) come from
  `state.hyperparams` when it holds a `Hyperparams`, else from `config`.

  REINFORCE and a2c differentiate one pass: the rollout keeps `log_prob` (and the
  value) differentiable. Their policy loss is the mean of
  `-log_prob * (G_t - b)` over all `T * B` steps, so its negated gradient
  estimates `(1/T) sum_t E[grad log pi(a_t | s_t) (G_t - b)]`: for one-step
  episodes (`T = 1`) exactly the gradient of the expected reward. Without a
  critic, returns are cut at truncation and at the end of the rollout; with one,
  they bootstrap from the value of the final (or last) observation. ppo rolls
  out without gradients and re-evaluates `log_prob` in each minibatch.
  """
  if env_params is None:
    env_params = env.default_params
  if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
    raise ValueError(f"unroll must be a positive integer, got {unroll!r}")
  num_envs, num_steps = config.num_envs, config.rollout_length
  use_value = config.uses_value

  def init_fn(key: jax.Array) -> TrainState:
    key_params, key_env = jax.random.split(key)
    env_carry = reset_envs(key_env, env, env_params, num_envs)
    params = policy.init(key_params, env_carry.obs)
    _, value = split_output(jax.eval_shape(policy.apply, params, env_carry.obs))
    if use_value and value is None:
      raise ValueError(
          f"algo={config.algo!r} with baseline={config.baseline!r} needs a value head: "
          "build the policy with value='shared' or value='separate'")
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        env=env_carry,
        step=jnp.zeros((), jnp.int32),
        baseline=jnp.zeros((), jnp.float32) if config.baseline == "ema" else (),
    )

  def last_value(params, obs):
    if not use_value:
      return jnp.zeros(obs.shape[:1], jnp.float32)
    return jax.lax.stop_gradient(split_output(policy.apply(params, obs))[1])

  def hyperparams(state: TrainState):
    # The state's traced values if it carries them, else the config's constants.
    if isinstance(state.hyperparams, Hyperparams):
      return state.hyperparams
    return config

  def advantages(traj: Trajectory, bootstrap_last, ema, hp):
    """`(advantages, value_targets)`, both `[T, B]` and free of gradients."""
    traj = jax.lax.stop_gradient(traj)
    if config.algo == "reinforce":
      returns = discounted_returns(
          traj.reward, traj.terminated, traj.truncated, gamma=hp.gamma,
          bootstrap_value_t=traj.bootstrap_value, last_value=bootstrap_last)
      advantage, target = returns - _baseline(config, hp, returns, traj.value, ema), returns
    else:
      advantage, target = gae_advantages(
          traj.reward, traj.value, traj.terminated, traj.truncated, bootstrap_last,
          gamma=hp.gamma, lambda_=hp.gae_lambda,
          bootstrap_value_t=traj.bootstrap_value)
    return advantage, target

  def one_pass_loss(params, state: TrainState, key: jax.Array):
    env_carry, traj = rollout(
        key, params, policy.apply, env, env_params, state.env, num_steps, unroll=unroll)
    hp = hyperparams(state)
    advantage, target = advantages(
        traj, last_value(params, env_carry.obs), state.baseline, hp)
    if config.normalize_advantages:
      advantage = normalize_advantages(advantage)
    # The means of `reinforce_loss`, `entropy_bonus` and `value_loss` (the same
    # formulas; tests/test_train.py checks them against those functions) and the
    # episode statistics, all from one reduction: on XLA:CPU each separate
    # reduction of a cheap step costs about 10 us (see `_sampling.column_sums`).
    columns = {"policy_loss": -traj.log_prob * jax.lax.stop_gradient(advantage),
               "entropy": traj.entropy}
    if use_value:
      columns["value_loss"] = 0.5 * jnp.square(traj.value - jax.lax.stop_gradient(target))
    sums = _sampling.column_sums({**columns, **_episode_columns(traj)})
    size = num_envs * num_steps
    metrics = {name: sums[name] / size for name in columns}
    loss = metrics["policy_loss"] - hp.entropy_coef * metrics["entropy"]
    if use_value:
      loss = loss + hp.value_coef * metrics["value_loss"]
    metrics.update(_episode_metrics(sums))
    return loss, (env_carry, target, metrics)

  def one_pass_step(state: TrainState, key: jax.Array):
    (loss, (env_carry, target, metrics)), grads = jax.value_and_grad(
        one_pass_loss, has_aux=True)(state.params, state, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.baseline
    if config.baseline == "ema":
      ema = baselines.ema_update(state.baseline, target, decay=hyperparams(state).ema_decay)
    metrics = {"loss": loss, **metrics, "grad_norm": _global_norm(grads)}
    return state._replace(params=params, opt_state=opt_state, env=env_carry,
                          baseline=ema), metrics

  def ppo_minibatch_loss(params, batch: _Minibatch, hp):
    dist, value = split_output(policy.apply(params, batch.obs))
    log_prob, entropy = score(dist, batch.sample)
    advantage = batch.advantage
    if config.normalize_advantages:
      advantage = normalize_advantages(advantage)
    policy_loss, metrics = ppo_clip_loss(
        log_prob, batch.old_log_prob, advantage, clip_eps=hp.clip_eps)
    metrics = {"policy_loss": policy_loss, "entropy": entropy_bonus(entropy),
               "value_loss": (clipped_value_loss(value, batch.old_value, batch.target,
                                                 clip_eps=hp.clip_eps)
                              if config.clip_value else value_loss(value, batch.target)),
               **metrics}
    loss = (policy_loss + hp.value_coef * metrics["value_loss"]
            - hp.entropy_coef * metrics["entropy"])
    return loss, metrics

  def ppo_step(state: TrainState, key: jax.Array):
    key_rollout, key_epochs = jax.random.split(key)
    env_carry, traj = rollout(
        key_rollout, state.params, policy.apply, env, env_params, state.env, num_steps,
        unroll=unroll)
    traj = jax.lax.stop_gradient(traj)
    hp = hyperparams(state)
    advantage, target = advantages(traj, last_value(state.params, env_carry.obs), (), hp)
    size = num_envs * num_steps
    flat = jax.tree.map(lambda x: x.reshape((size,) + x.shape[2:]), _Minibatch(
        traj.obs, traj.sample, traj.log_prob, traj.value, advantage, target))

    def update(carry, batch):
      params, opt_state = carry
      (loss, metrics), grads = jax.value_and_grad(ppo_minibatch_loss, has_aux=True)(
          params, batch, hp)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      metrics = {"loss": loss, **metrics, "grad_norm": _global_norm(grads)}
      return (optax.apply_updates(params, updates), opt_state), metrics

    def epoch(carry, key):
      order = jax.random.permutation(key, size)
      batches = jax.tree.map(
          lambda x: x[order].reshape((config.num_minibatches, -1) + x.shape[1:]), flat)
      return jax.lax.scan(update, carry, batches,
                          unroll=min(unroll, config.num_minibatches))

    (params, opt_state), metrics = jax.lax.scan(
        epoch, (state.params, state.opt_state),
        jax.random.split(key_epochs, config.num_epochs), unroll=min(unroll, config.num_epochs))
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics.update(_episode_metrics(_sampling.column_sums(_episode_columns(traj))))
    return state._replace(params=params, opt_state=opt_state, env=env_carry), metrics

  algo_step = ppo_step if config.algo == "ppo" else one_pass_step

  def train_step(state: TrainState, key: jax.Array) -> tuple[TrainState, Metrics]:
    # The step count is folded into the key, so a loop may pass one key for the
    # whole run and still draw fresh randomness every step.
    new_state, metrics = algo_step(state, jax.random.fold_in(key, state.step))
    return new_state._replace(step=state.step + 1), metrics

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

  Raises:
    ValueError: if `max_steps` is not a positive integer.
  """
  if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
    raise ValueError(f"max_steps must be a positive integer (the most steps one call runs), "
                     f"got {max_steps!r}")

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
    unroll: int = 1,
) -> Callable[[jax.Array], RunOutput]:
  """A whole run of `config.num_steps` train steps as one pure function of a key.

  `jax.jit(make_train(...))(key)` compiles the run into one program;
  `jax.jit(jax.vmap(make_train(...)))(jax.random.split(key, n))` trains `n`
  independent seeds in one program. Metrics come back stacked, `[num_steps]`
  (`[n, num_steps]` under vmap).
  """
  init_fn, train_step = make_train_step(env, policy, optimizer, config, env_params=env_params,
                                        unroll=unroll)
  run = make_run(train_step, max(config.num_steps, 1))

  def train(key: jax.Array) -> RunOutput:
    key_init, key_run = jax.random.split(key)
    return run(init_fn(key_init), key_run, config.num_steps)

  return train
