"""The policy-gradient training step, and whole runs built from it.

`make_train_step(env, policy, optimizer, algorithm, num_envs=, rollout_length=)`
returns two pure functions. `train_step(state, key)` rolls out `B` environments
for `T` steps and hands the rest to the algorithm's parts
(`reinforce_jax.rl.algorithms`): its advantages, its loss, differentiated with
`jax.grad` and applied with any `optax.GradientTransformation`, on its update
schedule.

Nothing is jitted on the caller's behalf:

    algo = algorithms.reinforce(baseline=baselines.LeaveOneOut())
    init_fn, train_step = make_train_step(env, policy, optax.adam(1e-2), algo,
                                          num_envs=64, rollout_length=200)
    train_step = jax.jit(train_step, donate_argnums=0)
    state = init_fn(jax.random.key(0))
    key = jax.random.key(1)
    for _ in range(100):
      state, metrics = train_step(state, key)  # fresh randomness: step is folded in

A `TrainConfig` in place of the algorithm gives its algorithm and batch shape
(and, with `normalize_observations=True`, a shared observation normaliser:
`reinforce_jax.rl.normalization`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from reinforce_jax.rl import algorithms as algorithms_lib
from reinforce_jax.rl.config import TrainConfig
from reinforce_jax.rl.hparams import AlgorithmParams
from reinforce_jax.rl.normalization import ObsNormalizer, ObsStats
from reinforce_jax.rl.policies import (
    Policy,
    _check_observations,
    as_policy,
    from_function,
    score,
    split_output,
)
from reinforce_jax.rl.rollouts import (
    EnvCarry,
    _check_policy_output,
    act,
    replay,
    reset_envs,
    rollout,
)
from reinforce_jax.xla import compiler, prng

__all__ = [
    "linear_anneal",
    "make_optimizer",
    "make_run",
    "make_train",
    "make_train_step",
    "RunOutput",
    "TrainState",
    "updates_per_step",
]

Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
  """Everything a run carries from one train step to the next."""

  params: Any           # policy parameters
  opt_state: Any        # optimizer state
  env: EnvCarry         # batched environment state, observations, episode counters
  step: jax.Array       # [] int32, train steps taken
  algo_state: Any = ()  # the algorithm's carried state (an EMA baseline's average), or ()
  hyperparams: Any = ()  # () = the algorithm's constants, or its hyperparameters traced
  obs_stats: Any = ()   # the shared observation statistics (normalization.ObsStats), or ()


def updates_per_step(config: TrainConfig | algorithms_lib.Algorithm) -> int:
  """Optimizer updates in one train step: `num_epochs * num_minibatches` for ppo, else 1."""
  if isinstance(config, TrainConfig):
    return config.algorithm.updates_per_step
  return config.schedule.updates_per_step


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


def _positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return value


def _resolve(algorithm, num_envs, rollout_length):
  """`(Algorithm, num_envs, rollout_length)` from an algorithm or a `TrainConfig`."""
  if isinstance(algorithm, TrainConfig):
    config = algorithm
    for name, value in (("num_envs", num_envs), ("rollout_length", rollout_length)):
      if value is not None and value != getattr(config, name):
        raise ValueError(f"{name}={value} contradicts the config's {getattr(config, name)}")
    return algorithms_lib.build(config.algorithm), config.num_envs, config.rollout_length
  if isinstance(algorithm, AlgorithmParams):
    algorithm = algorithms_lib.build(algorithm)
  if not isinstance(algorithm, algorithms_lib.Algorithm):
    raise ValueError(f"algorithm must be an algorithms.Algorithm (e.g. algorithms.ppo()), "
                     f"hyperparameters from reinforce_jax.rl.hparams, or a TrainConfig; got "
                     f"{algorithm!r}")
  if num_envs is None or rollout_length is None:
    raise ValueError("give the batch shape: make_train_step(..., num_envs=B, rollout_length=T)")
  return algorithm, _positive_int("num_envs", num_envs), _positive_int(
      "rollout_length", rollout_length)


def _resolve_normalizer(obs_normalization, config) -> ObsNormalizer | None:
  """The run's `ObsNormalizer` (or None) from `obs_normalization` and the config's flag."""
  flag = config.normalize_observations if isinstance(config, TrainConfig) else None
  if obs_normalization is None:
    return ObsNormalizer() if flag else None
  if isinstance(obs_normalization, bool):
    normalizer = ObsNormalizer() if obs_normalization else None
  elif isinstance(obs_normalization, ObsNormalizer):
    normalizer = obs_normalization
  else:
    raise ValueError(f"obs_normalization must be True, False, None or a "
                     f"normalization.ObsNormalizer, got {obs_normalization!r}")
  if flag is not None and flag != (normalizer is not None):
    raise ValueError(f"obs_normalization={obs_normalization!r} contradicts the config's "
                     f"normalize_observations={flag}")
  return normalizer


def _check_policy_on_env(env, env_params, policy: Policy, module, num_envs: int,
                         use_value: bool) -> None:
  """Raises `ValueError` if `policy` does not fit `num_envs` environments of `env`.

  One abstract evaluation (`jax.eval_shape`: shapes only, nothing runs or
  compiles) of a reset, the policy's init and one action, whatever kind of
  policy it is: the built-in MLP policies against the observations' shape,
  then the output against the batch and the action space.
  """
  def probe(key):
    key_params, key_env, key_action = jax.random.split(key, 3)
    carry = reset_envs(key_env, env, env_params, num_envs, policy)
    _check_observations(module, jnp.shape(carry.obs)[1:])
    params = policy.init(key_params, carry.obs)
    dist, value = split_output(policy.apply(params, carry.policy_carry, carry.obs)[1])
    if use_value and value is None:
      raise ValueError(
          "this algorithm needs a value head: the policy must return (distribution, value); "
          "build it with value='shared' or value='separate'")
    action, _, log_prob, _ = act(dist, key_action)
    _check_policy_output(dist, value, action, log_prob, env, env_params, num_envs)

  jax.eval_shape(probe, jax.random.key(0))


def make_train_step(
    env,
    policy: Any,
    optimizer: optax.GradientTransformation,
    algorithm: Any,
    *,
    num_envs: int | None = None,
    rollout_length: int | None = None,
    env_params: Any = None,
    init_params: Any = None,
    unroll: int = 1,
    obs_normalization: bool | ObsNormalizer | None = None,
) -> tuple[Callable[[jax.Array], TrainState],
           Callable[[TrainState, jax.Array], tuple[TrainState, Metrics]]]:
  """Builds `(init_fn, train_step)` for `algorithm` on `env`.

  Args:
    env: a functional environment with gymnax 1.x `reset`/`step` (auto-reset).
    policy: a flax linen module, a recurrent linen module (`initialize_carry`),
      an NNX module, a `policies.Policy`, or a plain function `apply(params,
      obs)` together with `init_params`. It maps observations `[B, ...]` to a
      distribution with batch shape `[B]`, or to `(distribution, value [B])`
      (needed by a2c, ppo and the value baseline).
    optimizer: any `optax.GradientTransformation`.
    algorithm: an `algorithms.Algorithm` (`algorithms.ppo()`, or your own),
      hyperparameters from `reinforce_jax.rl.hparams` (built with their `build()`),
      or a `TrainConfig` (its algorithm and batch shape).
    num_envs: environments stepped in parallel (`B`).
    rollout_length: environment steps per environment per train step (`T`).
    env_params: the environment's params; `env.default_params` if `None`.
    init_params: with a plain function as `policy`: its parameters, or a
      function `init(key, obs) -> params`.
    unroll: loop iterations fused per compiled iteration, for the rollout and
      the minibatch updates (`lax.scan`'s `unroll`). Same values; a speed knob
      for small batches (`benchmarks/ppo_levers.py` measures it).
    obs_normalization: normalise the policy's observations with one running
      estimate shared by all environments (`normalization.ObsNormalizer`;
      True is its default rule, rejax's). The statistics live in
      `TrainState.obs_stats` and advance with every rollout; the policy sees
      normalised observations, `info["final_observation"]` included. `None`
      follows a `TrainConfig`'s `normalize_observations` (off otherwise).

  Returns:
    `init_fn(key) -> TrainState` and `train_step(state, key) -> (state, metrics)`.
    `metrics` holds float32/int32 scalars: `loss`, `policy_loss`, `entropy`,
    `grad_norm`, `mean_return` (mean undiscounted return of the episodes that
    finished during this step, NaN if none did), `num_episodes`, `mean_length`;
    with a critic also `value_loss`; with ppo also `approx_kl` and
    `clip_fraction` (means over its minibatch updates); and whatever a custom
    loss adds.

  The hyperparameters come from `state.hyperparams` when it holds them
  (`algorithms.traced`), else from the algorithm, as compile-time constants.

  Raises:
    ValueError: for a batch shape or `unroll` that is not a positive integer,
      or a policy that does not fit the environment, found by one abstract
      evaluation (shapes only) of a reset, the policy's init and one action:
      a categorical policy with another number of actions than the
      environment's, continuous actions of another shape than its
      `action_shape`, a distribution whose batch shape is not `[B]`, a value
      not of shape `[B]` or missing where the algorithm needs one, or a
      built-in MLP policy given observations of more than one axis per
      environment without `flatten=True` or `torso="cnn"`; or an
      `obs_normalization` that contradicts the config's `normalize_observations`.
  """
  normalizer = _resolve_normalizer(obs_normalization, algorithm)
  algorithm, num_envs, num_steps = _resolve(algorithm, num_envs, rollout_length)
  if env_params is None:
    env_params = env.default_params
  if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
    raise ValueError(f"unroll must be a positive integer, got {unroll!r}")
  module = policy
  if init_params is not None:
    policy = from_function(policy, init_params)
  elif not isinstance(policy, Policy):
    policy = as_policy(policy)
  hp0 = algorithm.hparams
  if hasattr(hp0, "check_batch"):
    hp0.check_batch(num_envs, num_steps)
  use_value = algorithm.needs_value
  # A truncation that counts as a termination never reads the final observation's
  # value: the rollout leaves it out (its zeros are never selected).
  bootstrap = bool(getattr(hp0, "bootstrap_truncation", True))
  _check_policy_on_env(env, env_params, policy, module, num_envs, use_value)

  def init_fn(key: jax.Array) -> TrainState:
    key_params, key_env = jax.random.split(key)
    env_carry = reset_envs(key_env, env, env_params, num_envs, policy)
    compiler.warn_if_lapack_can_deadlock("the policy's init", policy.init, key_params,
                                         env_carry.obs)
    params = policy.init(key_params, env_carry.obs)
    output = jax.eval_shape(policy.apply, params, env_carry.policy_carry, env_carry.obs)[1]
    if use_value and split_output(output)[1] is None:
      raise ValueError(
          "this algorithm needs a value head: the policy must return (distribution, value); "
          "build it with value='shared' or value='separate'")
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        env=env_carry,
        step=jnp.zeros((), jnp.int32),
        algo_state=algorithm.carry.init(hp0),
        obs_stats=() if normalizer is None else normalizer.init(env_carry.obs.shape[1:]),
    )

  def last_value(params, env_carry: EnvCarry):
    if not use_value:
      return jnp.zeros(env_carry.episode_return.shape, jnp.float32)
    obs = env_carry.obs
    if normalizer is not None:
      obs = normalizer.normalize(env_carry.obs_stats, obs)
    output = policy.apply(params, env_carry.policy_carry, obs)[1]
    return jax.lax.stop_gradient(split_output(output)[1])

  def evaluate(params, obs, sample):
    dist, value = split_output(policy.apply(params, (), obs)[1])
    log_prob, entropy = score(dist, sample)
    return log_prob, entropy, jnp.zeros_like(log_prob) if value is None else value

  learner = algorithms_lib.Learner(
      algorithm=algorithm,
      optimizer=optimizer,
      rollout=lambda params, carry, key: rollout(
          key, params, policy, env, env_params, carry, num_steps, unroll=unroll,
          normalizer=normalizer, bootstrap=bootstrap),
      last_value=last_value,
      evaluate=evaluate,
      replay=lambda params, carry0, obs, sample, done: replay(
          params, policy, carry0, obs, sample, done),
      recurrent=policy.recurrent,
      num_envs=num_envs,
      rollout_length=num_steps,
      unroll=unroll,
  )

  def train_step(state: TrainState, key: jax.Array) -> tuple[TrainState, Metrics]:
    # The step count is folded into the key, so a loop may pass one key for the
    # whole run and still draw fresh randomness every step.
    key = jax.random.fold_in(key, state.step)
    if normalizer is None:
      new_state, metrics = algorithm.schedule.step(learner, state, key)
      return new_state._replace(step=state.step + 1), metrics
    # The rollout advances the statistics in the environments' carry; between
    # steps they live in the state (replicated, where the carry is split).
    if not isinstance(state.obs_stats, ObsStats):
      raise ValueError("this train step normalises observations, but state.obs_stats holds "
                       f"no statistics ({state.obs_stats!r}): build the state with this "
                       "step's init_fn")
    new_state, metrics = algorithm.schedule.step(
        learner, state._replace(env=state.env._replace(obs_stats=state.obs_stats)), key)
    return new_state._replace(step=state.step + 1, obs_stats=new_state.env.obs_stats,
                              env=new_state.env._replace(obs_stats=())), metrics

  # Threefry keys take the unrolled hash, which XLA:CPU runs and compiles faster
  # (`reinforce_jax.xla.prng`: the same numbers, the caller's key types back).
  if num_envs >= prng.MIN_BATCH:
    train_step = prng.with_fast_keys(train_step)
    init_fn = prng.with_fast_init(init_fn)
  # Building a state is one compiled program: its checks run once, while tracing,
  # and every later call (a seed, a sweep point) takes microseconds.
  return jax.jit(init_fn), train_step


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
    # One trace of the step serves both the metrics' shapes and the loop body: the
    # jitted step reuses its trace for the same argument types (and XLA inlines it).
    step = jax.jit(train_step)
    metric_shapes = jax.eval_shape(step, state, key)[1]
    buffer = jax.tree.map(
        lambda s: jnp.zeros((max_steps,) + s.shape, s.dtype), metric_shapes)
    limit = jnp.minimum(jnp.asarray(num_steps, jnp.int32), max_steps)

    def cond(carry):
      i, finite, _, _ = carry
      return jnp.logical_and(i < limit, finite)

    def body(carry):
      i, _, state, buffer = carry
      new_state, metrics = step(state, key)
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
    policy: Any,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    *,
    env_params: Any = None,
    unroll: int = 1,
    obs_normalization: bool | ObsNormalizer | None = None,
) -> Callable[[jax.Array], RunOutput]:
  """A whole run of `config.num_steps` train steps as one pure function of a key.

  `jax.jit(make_train(...))(key)` compiles the run into one program;
  `jax.jit(jax.vmap(make_train(...)))(jax.random.split(key, n))` trains `n`
  independent seeds in one program. Metrics come back stacked, `[num_steps]`
  (`[n, num_steps]` under vmap).
  """
  init_fn, train_step = make_train_step(env, policy, optimizer, config, env_params=env_params,
                                        unroll=unroll, obs_normalization=obs_normalization)
  run = make_run(train_step, max(config.num_steps, 1))

  def train(key: jax.Array) -> RunOutput:
    key_init, key_run = jax.random.split(key)
    return run(init_fn(key_init), key_run, config.num_steps)

  return train
