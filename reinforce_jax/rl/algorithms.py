"""Algorithms as values, built from public parts.

An `Algorithm` is a NamedTuple of its hyperparameters and four parts:

  * `advantages(hp, algo_state, traj, last_value) -> (advantage, target)`:
    `[T, B]` advantages and value targets from a trajectory (no gradient);
  * `loss(hp, algo_state, batch) -> (loss, metrics)`: the loss of a `Batch`;
  * `schedule`: how the loss is minimised per rollout: `one_pass()` (the
    rollout itself is differentiated) or `minibatches(num_epochs, n)`;
  * `carry`: an `init`/`update` pair for state the algorithm carries between
    steps (an EMA baseline, an adaptive coefficient); `NO_CARRY` for none.

`hparams` is one pytree (`reinforce_jax.rl.hparams`, or any pytree of your own,
e.g. a `flax.struct.dataclass`): its float leaves may be traced. Put a copy
in `TrainState.hyperparams` (`traced(...)`) and `jax.vmap` over it trains
several settings in one program; a loop can change it between steps without
recompiling. Structural settings are static fields.

`reinforce(baseline=...)`, `a2c(...)` and `ppo(...)` are built from these parts,
so a variant replaces one: `ppo()._replace(loss=my_loss)`.

    algo = algorithms.ppo(clip_eps=0.2, num_epochs=4, num_minibatches=4)
    init_fn, train_step = make_train_step(env, policy, optax.adam(3e-4), algo,
                                          num_envs=4, rollout_length=128)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reinforce_jax._src import categorical
from reinforce_jax._src.scalars import is_real_dtype
from reinforce_jax.core.losses import clipped_value_loss, entropy_bonus, ppo_clip_loss, value_loss
from reinforce_jax.rl import hparams
from reinforce_jax.rl.returns import discounted_returns, gae_advantages, normalize_advantages
from reinforce_jax.xla import prng

__all__ = [
    "a2c",
    "actor_critic_objective",
    "Algorithm",
    "baseline_carry",
    "Batch",
    "build",
    "Carry",
    "episode_columns",
    "episode_metrics",
    "gae",
    "Learner",
    "mean_terms",
    "Minibatches",
    "minibatches",
    "one_pass",
    "OnePass",
    "ppo",
    "ppo_objective",
    "register",
    "reinforce",
    "reinforce_objective",
    "reward_to_go",
    "traced",
]

Metrics = dict[str, jax.Array]


def register(cls):
  """Registers a `reinforce_jax.rl.hparams`-style dataclass as a pytree (floats are leaves)."""
  data, meta = hparams.pytree_fields(cls)
  jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
  return cls


for _cls in (*hparams.ALGORITHMS.values(),
             *(c for c in hparams.BASELINES.values() if c is not None)):
  register(_cls)


class Batch(NamedTuple):
  """The transitions a loss sees: `[T, B]` in one pass, `[N]` (or `[T, B/n]`) per minibatch.

  `log_prob`, `entropy` and `value` carry gradients to the parameters; the rest
  are constants.
  """

  log_prob: jax.Array        # log pi(a | s) of the action taken, differentiable
  entropy: jax.Array         # entropy of pi(. | s), differentiable
  value: jax.Array           # V(s), differentiable (zeros without a critic)
  old_log_prob: jax.Array    # log pi_old(a | s) at rollout time
  old_value: jax.Array       # V_old(s) at rollout time
  advantage: jax.Array       # from `Algorithm.advantages`
  target: jax.Array          # value target, from `Algorithm.advantages`
  done: jax.Array            # bool: an episode ended at this step
  episode_return: jax.Array  # return of the episode that ended here (else 0)
  episode_length: jax.Array  # length of the episode that ended here (else 0)


class Carry(NamedTuple):
  """State an algorithm carries from step to step, as an `init`/`update` pair.

  `init(hp) -> state`; `update(hp, state, traj, advantage, target, metrics)
  -> state`, after the step's gradient update (`metrics` are the step's).
  """

  init: Callable[[Any], Any]
  update: Callable[..., Any]


NO_CARRY = Carry(init=lambda hp: (), update=lambda hp, state, *rest: state)


class Algorithm(NamedTuple):
  """A policy-gradient algorithm: hyperparameters and the parts that use them."""

  hparams: Any
  advantages: Callable[..., tuple[jax.Array, jax.Array]]
  loss: Callable[..., tuple[jax.Array, Metrics]]
  schedule: Any                 # `one_pass()` or `minibatches(...)`, or your own
  carry: Carry = NO_CARRY
  needs_value: bool = False     # whether the policy must return `(dist, value)`


# --- Advantages ------------------------------------------------------------------


def _episode_ends(hp, traj):
  """`(terminated, truncated)`; a truncation counts as a termination (no bootstrap)
  when `hp.bootstrap_truncation` is False (hyperparameters without it bootstrap)."""
  if getattr(hp, "bootstrap_truncation", True):
    return traj.terminated, traj.truncated
  return jnp.logical_or(traj.terminated, traj.truncated), traj.truncated


def reward_to_go(hp, algo_state, traj, last_value):
  """Discounted reward-to-go `G_t` minus `hp.baseline` (REINFORCE); targets are `G_t`.

  Returns are cut where an episode ends; where it is truncated (unless
  `hp.bootstrap_truncation` is False), and at the end of the rollout, they
  bootstrap from the value (zero without a critic).
  """
  terminated, truncated = _episode_ends(hp, traj)
  returns = discounted_returns(
      traj.reward, terminated, truncated, gamma=hp.gamma,
      bootstrap_value_t=traj.bootstrap_value, last_value=last_value)
  baseline = 0.0 if hp.baseline is None else hp.baseline(algo_state, returns, traj.value)
  return returns - baseline, returns


def gae(hp, algo_state, traj, last_value):
  """GAE(`hp.gae_lambda`) advantages and lambda-return targets (a2c, ppo); a truncation
  bootstraps from the final observation's value unless `hp.bootstrap_truncation` is False."""
  del algo_state
  terminated, truncated = _episode_ends(hp, traj)
  return gae_advantages(
      traj.reward, traj.value, terminated, truncated, last_value,
      gamma=hp.gamma, lambda_=hp.gae_lambda, bootstrap_value_t=traj.bootstrap_value)


# --- Losses --------------------------------------------------------------------


def episode_columns(batch: Batch) -> dict[str, jax.Array]:
  """Per-transition columns whose sums give the episode statistics."""
  return {"num_episodes": batch.done, "episode_return": batch.episode_return,
          "episode_length": batch.episode_length}


def episode_metrics(sums: dict[str, jax.Array]) -> Metrics:
  """`mean_return`, `num_episodes`, `mean_length` from the sums of `episode_columns`."""
  num_episodes = sums["num_episodes"]

  def per_episode(total):
    return jnp.where(num_episodes > 0, total / jnp.maximum(num_episodes, 1), jnp.nan)

  return {"mean_return": per_episode(sums["episode_return"]),
          "num_episodes": num_episodes.astype(jnp.int32),
          "mean_length": per_episode(sums["episode_length"])}


def mean_terms(batch: Batch, terms: dict[str, jax.Array]) -> Metrics:
  """Means of per-transition `terms`, and the batch's episode statistics, in one reduction.

  Each term has the batch's shape. On XLA:CPU each separate reduction of a
  cheap step costs about 10 us (`categorical.column_sums`); a loss that returns
  these metrics saves the train step from reducing the episode columns again.
  """
  sums = categorical.column_sums({**terms, **jax.lax.stop_gradient(episode_columns(batch))})
  size = batch.log_prob.size
  return {**{name: sums[name] / size for name in terms}, **episode_metrics(sums)}


def _maybe_normalized(hp, advantage):
  return normalize_advantages(advantage) if hp.normalize_advantages else advantage


def _score_function_loss(hp, batch: Batch, value_coef) -> tuple[jax.Array, Metrics]:
  """`mean(-log_prob * A) - c_H mean(entropy) [+ c_V mean(0.5 (V - target)^2)]`."""
  advantage = _maybe_normalized(hp, batch.advantage)
  terms = {"policy_loss": -batch.log_prob * jax.lax.stop_gradient(advantage),
           "entropy": batch.entropy}
  if value_coef is not None:
    terms["value_loss"] = 0.5 * jnp.square(batch.value - jax.lax.stop_gradient(batch.target))
  metrics = mean_terms(batch, terms)
  loss = metrics["policy_loss"] - hp.entropy_coef * metrics["entropy"]
  if value_coef is not None:
    loss = loss + value_coef * metrics["value_loss"]
  return loss, metrics


def reinforce_objective(hp, algo_state, batch: Batch):
  """REINFORCE's loss: the score-function surrogate `-log_prob * (G - b)`, an entropy
  bonus, and with `baselines.Value` its squared-error value loss.

  Its negated gradient estimates `(1/T) sum_t E[grad log pi(a_t | s_t) (G_t - b)]`.
  """
  del algo_state
  value_coef = hp.baseline.value_coef if isinstance(hp.baseline, hparams.Value) else None
  return _score_function_loss(hp, batch, value_coef)


def actor_critic_objective(hp, algo_state, batch: Batch):
  """a2c's loss: `-log_prob * A - c_H entropy + c_V 0.5 (V - target)^2`, batch means."""
  del algo_state
  return _score_function_loss(hp, batch, hp.value_coef)


def ppo_objective(hp, algo_state, batch: Batch):
  """PPO's clipped surrogate, the (clipped, with `hp.clip_value`) value loss and the
  entropy bonus; advantages are standardised per minibatch with `normalize_advantages`."""
  del algo_state
  advantage = _maybe_normalized(hp, batch.advantage)
  policy_loss, metrics = ppo_clip_loss(
      batch.log_prob, batch.old_log_prob, advantage, clip_eps=hp.clip_eps)
  if hp.clip_value:
    critic = clipped_value_loss(batch.value, batch.old_value, batch.target, clip_eps=hp.clip_eps)
  else:
    critic = value_loss(batch.value, batch.target)
  metrics = {"policy_loss": policy_loss, "entropy": entropy_bonus(batch.entropy),
             "value_loss": critic, **metrics}
  loss = policy_loss + hp.value_coef * critic - hp.entropy_coef * metrics["entropy"]
  return loss, metrics


# --- Update schedules ----------------------------------------------------------------


class OnePass(NamedTuple):
  """One gradient step per rollout, differentiating the rollout's own `log_prob`."""

  @property
  def updates_per_step(self) -> int:
    return 1

  def step(self, learner: Learner, state, key):
    return _one_pass_step(learner, state, key)


class Minibatches(NamedTuple):
  """`num_epochs` passes of `num_minibatches` shuffled minibatches per rollout (PPO).

  The rollout runs without gradients; each minibatch evaluates the policy again.
  Feedforward policies shuffle transitions; recurrent ones shuffle whole
  environments and replay their sequences from the rollout's first carry.

  Each epoch's order is `permutation(key, n)`, drawn for all epochs before the
  first (under `jax.vmap` over the epochs' keys), so the epochs' sorts do not
  wait on each other's updates; each minibatch gathers its rows by its slice
  of the order.
  `prng.permutation` (the default, `None`) is uniform like
  `jax.random.permutation` and several times faster on XLA:CPU; pass
  `jax.random.permutation` for JAX's own numbers.
  """

  num_epochs: int = 4
  num_minibatches: int = 4
  permutation: Callable[[jax.Array, int], jax.Array] | None = None

  @property
  def updates_per_step(self) -> int:
    return self.num_epochs * self.num_minibatches

  def step(self, learner: Learner, state, key):
    return _minibatch_step(self, learner, state, key)


def one_pass() -> OnePass:
  return OnePass()


def minibatches(num_epochs: int = 4, num_minibatches: int = 4, *,
                permutation: Callable[[jax.Array, int], jax.Array] | None = None
                ) -> Minibatches:
  """The `Minibatches` schedule; `permutation(key, n) -> int[n]` shuffles each epoch."""
  for name, value in (("num_epochs", num_epochs), ("num_minibatches", num_minibatches)):
    hparams._check_int(name, value, 1)
  if permutation is not None and not callable(permutation):
    raise ValueError(f"permutation must be a function (key, n) -> int[n], got {permutation!r}")
  return Minibatches(num_epochs, num_minibatches, permutation)


# --- Carried state -----------------------------------------------------------------


def baseline_carry() -> Carry:
  """The state of `hp.baseline` (an EMA's average), updated with the step's targets."""

  def init(hp):
    return () if hp.baseline is None else hp.baseline.init()

  def update(hp, state, traj, advantage, target, metrics):
    del traj, advantage, metrics
    return state if hp.baseline is None else hp.baseline.update(state, target)

  return Carry(init, update)


# --- The built-in algorithms ----------------------------------------------------------


def reinforce(*, baseline: hparams.Baseline | None = None, gamma: float = 0.99,
              entropy_coef: float = 0.0, normalize_advantages: bool = False) -> Algorithm:
  """REINFORCE (Williams, 1992) with any baseline from `reinforce_jax.rl.baselines`."""
  return build(hparams.Reinforce(gamma=gamma, entropy_coef=entropy_coef, baseline=baseline,
                                 normalize_advantages=normalize_advantages))


def a2c(**settings) -> Algorithm:
  """Advantage actor-critic; settings as `hparams.A2C`."""
  return build(hparams.A2C(**settings))


def ppo(**settings) -> Algorithm:
  """PPO (Schulman et al., 2017); settings as `hparams.PPO`."""
  return build(hparams.PPO(**settings))


def build(hp: hparams.AlgorithmParams) -> Algorithm:
  """The algorithm of a built-in hyperparameter value (`hparams.Reinforce`, `A2C`, `PPO`)."""
  if isinstance(hp, hparams.Reinforce):
    return Algorithm(hp, reward_to_go, reinforce_objective, one_pass(), baseline_carry(),
                     needs_value=hp.needs_value)
  if isinstance(hp, hparams.A2C):
    return Algorithm(hp, gae, actor_critic_objective, one_pass(), needs_value=True)
  if isinstance(hp, hparams.PPO):
    return Algorithm(hp, gae, ppo_objective, minibatches(hp.num_epochs, hp.num_minibatches),
                     needs_value=True)
  raise ValueError(f"no built-in algorithm for {hp!r}; build an `Algorithm` from parts")


def traced(hp, **overrides):
  """`hp` with every float leaf a float32 array (and `overrides` by flat name).

  Put the result in `TrainState.hyperparams`: the step then reads its values
  from the state, so `jax.vmap` over states trains several settings at once.

  Raises:
    ValueError: for an unknown name, or a concrete override outside its range
      (traced ones, inside `jit` or `vmap`, cannot be checked).
  """
  if overrides:
    if not isinstance(hp, hparams.Hyperparameters):
      raise ValueError("overrides by name need a reinforce_jax.rl.hparams value; "
                       f"got {type(hp).__name__}")
    ranges = {**hparams.all_hparam_ranges(), **_own_ranges(hp)}
    for name, value in overrides.items():
      if name in ranges and not any(isinstance(x, jax.core.Tracer)
                                    for x in jax.tree.leaves(value)):
        _check_array(name, value, ranges[name])
    hp = hp.replace_flat(**overrides)
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), hp)


def _own_ranges(hp) -> dict[str, hparams.Range]:
  out = dict(hparams.hparam_ranges(type(hp)))
  for field in dataclasses.fields(hp):
    value = getattr(hp, field.name)
    if isinstance(value, hparams.Hyperparameters):
      out.update(_own_ranges(value))
  return out


def _check_array(name: str, value, where: hparams.Range) -> None:
  if isinstance(value, str | bool):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  values = np.asarray(value)
  if values.dtype == np.bool_ or not is_real_dtype(values.dtype):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  for v in values.reshape(-1).astype(np.float64):
    hparams.check_value(name, float(v), where)


# --- What a schedule works with -------------------------------------------------------


class Learner(NamedTuple):
  """What `make_train_step` hands an update schedule: the step's pure pieces.

  A schedule is any value with `updates_per_step` and `step(learner, state,
  key) -> (state, metrics)`; `OnePass` and `Minibatches` are the built-in ones.
  """

  algorithm: Algorithm
  optimizer: Any                # an optax.GradientTransformation
  rollout: Callable[..., Any]   # (params, env_carry, key) -> (env_carry, traj)
  last_value: Callable[..., jax.Array]  # (params, env_carry) -> [B], no gradient
  evaluate: Callable[..., tuple]  # (params, obs, sample) -> (log_prob, entropy, value)
  replay: Callable[..., tuple]  # (params, policy_carry, obs, sample, done) -> the same, [T, B]
  recurrent: bool
  num_envs: int
  rollout_length: int
  unroll: int = 1               # `lax.scan` unroll of the minibatch loops

  def hparams(self, state) -> Any:
    """The state's traced hyperparameters if it carries them, else the algorithm's."""
    hyperparams = getattr(state, "hyperparams", ())
    return self.algorithm.hparams if _is_empty(hyperparams) else hyperparams


def _is_empty(tree) -> bool:
  return isinstance(tree, tuple) and not tree


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def _batch(traj, log_prob, entropy, value, advantage, target) -> Batch:
  done = jnp.logical_or(traj.terminated, traj.truncated)
  return Batch(log_prob=log_prob, entropy=entropy, value=value,
               old_log_prob=jax.lax.stop_gradient(traj.log_prob),
               old_value=jax.lax.stop_gradient(traj.value),
               advantage=jax.lax.stop_gradient(advantage),
               target=jax.lax.stop_gradient(target), done=done,
               episode_return=traj.episode_return, episode_length=traj.episode_length)


def _trajectory_episode_metrics(traj) -> Metrics:
  traj = jax.lax.stop_gradient(traj)
  columns = {"num_episodes": jnp.logical_or(traj.terminated, traj.truncated),
             "episode_return": traj.episode_return, "episode_length": traj.episode_length}
  return episode_metrics(categorical.column_sums(columns))


def _one_pass_step(learner: Learner, state, key):
  algo = learner.algorithm
  hp = learner.hparams(state)

  def loss_fn(params):
    env_carry, traj = learner.rollout(params, state.env, key)
    advantage, target = algo.advantages(
        hp, state.algo_state, jax.lax.stop_gradient(traj), learner.last_value(params, env_carry))
    batch = _batch(traj, traj.log_prob, traj.entropy, traj.value, advantage, target)
    loss, metrics = algo.loss(hp, state.algo_state, batch)
    return loss, (env_carry, traj, advantage, target, metrics)

  (loss, (env_carry, traj, advantage, target, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = learner.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if "mean_return" not in metrics:  # the loss did not use `mean_terms`
    metrics = {**metrics, **_trajectory_episode_metrics(traj)}
  metrics = {"loss": loss, **metrics, "grad_norm": _global_norm(grads)}
  algo_state = algo.carry.update(hp, state.algo_state, jax.lax.stop_gradient(traj),
                                 jax.lax.stop_gradient(advantage),
                                 jax.lax.stop_gradient(target), metrics)
  return state._replace(params=params, opt_state=opt_state, env=env_carry,
                        algo_state=algo_state), metrics



class _Transitions(NamedTuple):
  """What a minibatch carries of the rollout: the inputs to evaluate, and the constants."""

  obs: jax.Array
  sample: jax.Array
  done: jax.Array
  old_log_prob: jax.Array
  old_value: jax.Array
  advantage: jax.Array
  target: jax.Array
  episode_return: jax.Array
  episode_length: jax.Array


def _checked_order(order, length: int) -> jax.Array:
  if jnp.shape(order) != (length,) or not jnp.issubdtype(jnp.result_type(order), jnp.integer):
    raise ValueError(f"the schedule's permutation(key, {length}) must return integers of "
                     f"shape ({length},); got {jnp.result_type(order)}{list(jnp.shape(order))}")
  return order


def _minibatch_step(self: Minibatches, learner: Learner, state, key):
  unroll = learner.unroll
  algo = learner.algorithm
  hp = learner.hparams(state)
  key_rollout, key_epochs = jax.random.split(key)
  env_carry, traj = learner.rollout(state.params, state.env, key_rollout)
  traj = jax.lax.stop_gradient(traj)
  advantage, target = algo.advantages(hp, state.algo_state, traj,
                                      learner.last_value(state.params, env_carry))
  data = _Transitions(traj.obs, traj.sample, jnp.logical_or(traj.terminated, traj.truncated),
                      traj.log_prob, traj.value, advantage, target, traj.episode_return,
                      traj.episode_length)
  num = self.num_minibatches
  if learner.recurrent:
    # Whole environments per minibatch: each sequence is replayed from its first carry.
    if learner.num_envs % num:
      raise ValueError(f"a recurrent policy's minibatches split the environments: "
                       f"num_minibatches={num} must divide num_envs={learner.num_envs}")
    first_carry = state.env.policy_carry
  else:
    size = learner.num_envs * learner.rollout_length
    data = jax.tree.map(lambda x: x.reshape((size,) + x.shape[2:]), data)

  def loss_fn(params, batch: _Transitions, carry0):
    if learner.recurrent:
      log_prob, entropy, value = learner.replay(params, carry0, batch.obs, batch.sample,
                                                batch.done)
    else:
      log_prob, entropy, value = learner.evaluate(params, batch.obs, batch.sample)
    return algo.loss(hp, state.algo_state, Batch(
        log_prob=log_prob, entropy=entropy, value=value, old_log_prob=batch.old_log_prob,
        old_value=batch.old_value, advantage=batch.advantage, target=batch.target,
        done=batch.done, episode_return=batch.episode_return,
        episode_length=batch.episode_length))

  def update(carry, minibatch):
    params, opt_state = carry
    batch, carry0 = minibatch
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, carry0)
    updates, opt_state = learner.optimizer.update(grads, opt_state, params)
    metrics = {"loss": loss, **metrics, "grad_norm": _global_norm(grads)}
    return (optax.apply_updates(params, updates), opt_state), metrics

  def gathered_update(carry, indices):
    # Each minibatch gathers its own rows: the same batch as splitting the
    # shuffled data, without writing the shuffled copy (and, under `vmap`, its
    # transpose to the scanned axis) every epoch.
    return update(carry, (jax.tree.map(lambda x: x[indices], data), 0.0))

  def epoch(carry, order):
    if learner.recurrent:
      split = lambda x: jnp.moveaxis(  # noqa: E731 - [T, B, ...] -> [n, T, B / n, ...]
          x[:, order].reshape((x.shape[0], num, -1) + x.shape[2:]), 1, 0)
      batches = (jax.tree.map(split, data), jax.tree.map(
          lambda c: c[order].reshape((num, -1) + c.shape[1:]), first_carry))
      return jax.lax.scan(update, carry, batches, unroll=min(unroll, num))
    return jax.lax.scan(gathered_update, carry, order.reshape((num, -1)),
                        unroll=min(unroll, num))

  # Every epoch's order up front, in one batched draw: nothing orders them after
  # the previous epoch's updates, and the program holds one copy of the shuffle.
  permutation = prng.permutation if self.permutation is None else self.permutation
  length = learner.num_envs if learner.recurrent else data.obs.shape[0]
  orders = jax.vmap(lambda k: _checked_order(permutation(k, length), length))(
      jax.random.split(key_epochs, self.num_epochs))
  (params, opt_state), metrics = jax.lax.scan(
      epoch, (state.params, state.opt_state), orders, unroll=min(unroll, self.num_epochs))
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics.update(_trajectory_episode_metrics(traj))  # over the whole rollout
  algo_state = algo.carry.update(hp, state.algo_state, traj, advantage, target, metrics)
  return state._replace(params=params, opt_state=opt_state, env=env_carry,
                        algo_state=algo_state), metrics

