"""The sequence policy-gradient train step: sample groups, score them, update.

`make_sequence_train_step(prompt_sampler, reward_fn, policy, optimizer, config)`
returns `(init_fn, train_step)` of the same shape as `reinforce_jax.make_train_step`'s,
so `make_run`'s finiteness guard, `run_loop` and its callbacks work unchanged:

    task = tasks.SortTask()
    model = models.CausalTransformer(task.vocab_size, max_len=2 * task.prompt_length)
    config = SequenceConfig(max_new_tokens=task.max_new_tokens, eos_id=task.eos_id)
    init_fn, train_step = make_sequence_train_step(
        task.sample_prompts, task.reward, transformer_policy(model), optax.adam(3e-3), config)
    state = init_fn(jax.random.key(0))
    state, metrics = jax.jit(train_step)(state, jax.random.key(1))

One step draws `B` prompts, samples `G` completions of each (`sampling.sample`,
with the model's key/value cache when it has one), rewards them, turns the
rewards into group advantages (`losses.group_advantages`), and takes
`num_updates` gradient steps on the surrogate (`losses.policy_gradient_loss`,
clipped against the sampling log-probs when `clip_eps` is set) plus
`kl_coef` times the KL estimate to the initial policy (`losses.kl_penalty`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from reinforce_jax._src import checks
from reinforce_jax.sequence import losses
from reinforce_jax.sequence.sampling import ApplyFn, Decoder, sample, token_log_probs
from reinforce_jax.xla import prng

__all__ = [
    "make_sequence_train_step",
    "SequenceConfig",
    "SequencePolicy",
    "SequenceTrainState",
    "transformer_policy",
]

Metrics = dict[str, jax.Array]
# (prompts [N, P], completions [N, T], mask [N, T]) -> rewards [N]
RewardFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class SequencePolicy(NamedTuple):
  """A causal model as the train step uses it.

  `init(key) -> params`; `apply(params, tokens [N, L]) -> logits [N, L, V]`;
  `decoder`: its key/value cache for sampling, or None (recompute every position).
  """

  init: Callable[[jax.Array], Any]
  apply: ApplyFn
  decoder: Decoder | None = None


def transformer_policy(model, *, cached: bool = True) -> SequencePolicy:
  """A `SequencePolicy` of a `models.CausalTransformer` (its cache unless `cached=False`)."""
  from reinforce_jax.sequence.models import decoder

  def init(key):
    return model.init(key, jnp.zeros((1, model.max_len), jnp.int32))

  return SequencePolicy(init=init, apply=model.apply, decoder=decoder(model) if cached else None)


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
  """The settings of a sequence train step.

  Every float setting is checked at construction: finite (in float32 too, the dtype used)
  and in its range (`kl_coef >= 0`, `temperature > 0`, `clip_eps` in `[0, 1)`,
  `clip_eps_high >= 0`, which needs `clip_eps`); a bad one raises `ValueError` naming it.

  Attributes:
    max_new_tokens: `T`, tokens sampled per completion.
    group_size: `G`, completions per prompt (at least 2 for "rloo", "grpo" and "dr_grpo").
    estimator: the group advantage, a name of `losses.ESTIMATORS` ("rloo": unbiased).
    aggregation: the token aggregation, a name of `losses.AGGREGATIONS`.
    kl_coef: weight of the KL estimate to the initial policy in the loss (0: none).
    kl_estimator: `losses.KL_ESTIMATORS` name of that term ("k3", DeepSeekMath's).
    clip_eps: PPO's clip range against the sampling policy, or None.
    clip_eps_high: DAPO's upper clip range, or None (`clip_eps`).
    ratio_level: "token" or "sequence" (GSPO).
    num_updates: gradient steps on each sampled batch (more than 1 wants `clip_eps`).
    temperature: the sampling temperature (> 0).
    eos_id: the token that ends a completion, or None.
  """

  max_new_tokens: int
  group_size: int = 8
  estimator: str = "rloo"
  aggregation: str = "sequence_sum"
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  clip_eps: float | None = None
  clip_eps_high: float | None = None
  ratio_level: str = "token"
  num_updates: int = 1
  temperature: float = 1.0
  eos_id: int | None = None

  def __post_init__(self):
    for name in ("max_new_tokens", "group_size", "num_updates"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, names in (("estimator", losses.ESTIMATORS), ("aggregation", losses.AGGREGATIONS),
                        ("kl_estimator", losses.KL_ESTIMATORS),
                        ("ratio_level", losses.RATIO_LEVELS)):
      if getattr(self, name) not in names:
        raise ValueError(f"{name} must be one of {names}, got {getattr(self, name)!r}")
    if self.estimator != "none" and self.group_size < 2:
      raise ValueError(f"estimator={self.estimator!r} compares completions within a group: "
                       f"group_size must be at least 2, got {self.group_size}")
    # Each float finite (in float32, the dtype used) and in its range: inf or nan here
    # would turn the parameters into nan on the first step.
    checks.check_number("kl_coef", self.kl_coef, low=0.0, dtype=jnp.float32)
    checks.check_number("temperature", self.temperature, low=0.0, low_open=True,
                        dtype=jnp.float32)
    if self.clip_eps is not None:
      checks.check_number("clip_eps", self.clip_eps, low=0.0, high=1.0, high_open=True,
                          dtype=jnp.float32)
    if self.clip_eps_high is not None:
      if self.clip_eps is None:
        raise ValueError(f"clip_eps_high={self.clip_eps_high!r} needs clip_eps (the lower "
                         "clip range); set clip_eps too")
      checks.check_number("clip_eps_high", self.clip_eps_high, low=0.0, dtype=jnp.float32)


class SequenceTrainState(NamedTuple):
  """Everything a sequence run carries from one train step to the next."""

  params: Any      # policy parameters
  opt_state: Any   # optimizer state
  ref_params: Any  # the initial parameters: the KL term's reference policy
  step: jax.Array  # [] int32, train steps taken


def make_sequence_train_step(
    prompt_sampler: Callable[[jax.Array], jax.Array],
    reward_fn: RewardFn,
    policy: SequencePolicy,
    optimizer: optax.GradientTransformation,
    config: SequenceConfig,
) -> tuple[Callable[[jax.Array], SequenceTrainState],
           Callable[[SequenceTrainState, jax.Array], tuple[SequenceTrainState, Metrics]]]:
  """Builds `(init_fn, train_step)` for policy-gradient training on a verifiable reward.

  Args:
    prompt_sampler: `key -> prompts`, int `[B, P]` (pure, jittable).
    reward_fn: `(prompts [N, P], completions [N, T], mask [N, T]) -> rewards [N]`
      (pure, jittable), `N = B * G`, rows prompt-major.
    policy: a `SequencePolicy` (`transformer_policy(model)`).
    optimizer: any `optax.GradientTransformation`.
    config: a `SequenceConfig`.

  Returns:
    `init_fn(key) -> SequenceTrainState` and `train_step(state, key) -> (state,
    metrics)`. `metrics` are float32 scalars: `loss`, `policy_loss`,
    `mean_return` (mean reward), `reward_std`, `num_episodes` (completions
    sampled, int32), `mean_length` (completion tokens up to EOS), `kl` (mean
    per-sequence k3 estimate of KL to the initial policy), `clip_fraction`
    (tokens whose ratio was clipped, over the updates), `entropy` (mean
    per-token entropy of the next-token distribution) and `grad_norm`.

  Raises:
    ValueError: at trace time, if the rewards are not `[N]`.
  """
  if not isinstance(config, SequenceConfig):
    raise ValueError(f"config must be a SequenceConfig, got {config!r}")
  g = config.group_size
  clipped = config.clip_eps is not None

  def init_fn(key: jax.Array) -> SequenceTrainState:
    params = policy.init(key)
    # A copy, not the same buffers: a step that donates its state donates both.
    return SequenceTrainState(params=params, opt_state=optimizer.init(params),
                              ref_params=jax.tree.map(jnp.copy, params),
                              step=jnp.zeros((), jnp.int32))

  def train_step(state: SequenceTrainState, key: jax.Array):
    # The step count is folded into the key, so a loop may pass one key for the whole run.
    key_prompts, key_sample = jax.random.split(jax.random.fold_in(key, state.step))
    prompts = prompt_sampler(key_prompts)
    p = prompts.shape[1]
    out = sample(key_sample, policy.apply, state.params, prompts,
                 max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                 eos_id=config.eos_id, group_size=g, decoder=policy.decoder)
    completions, mask = out.tokens[:, p:], out.mask[:, p:]
    rewards = reward_fn(out.tokens[:, :p], completions, mask)
    n = completions.shape[0]
    if rewards.shape != (n,):
      raise ValueError(f"reward_fn returned shape {rewards.shape}; expected [N] = ({n},) for "
                       f"{n // g} prompts x group_size {g}")
    rewards = rewards.astype(jnp.float32)
    advantages = losses.group_advantages(rewards.reshape(n // g, g),
                                         estimator=config.estimator).reshape(n)
    old_log_probs = out.log_probs[:, p:]
    ref_log_probs = jax.lax.stop_gradient(token_log_probs(
        policy.apply, state.ref_params, out.tokens, out.mask,
        temperature=config.temperature)[:, p:])

    def loss_fn(params):
      log_probs, entropy = token_log_probs(policy.apply, params, out.tokens, out.mask,
                                           temperature=config.temperature, with_entropy=True)
      log_probs, entropy = log_probs[:, p:], entropy[:, p:]
      policy_loss = losses.policy_gradient_loss(
          log_probs, advantages, mask, aggregation=config.aggregation,
          old_log_probs=old_log_probs if clipped else None, clip_eps=config.clip_eps,
          clip_eps_high=config.clip_eps_high, ratio_level=config.ratio_level)
      kl = losses.kl_penalty(log_probs, ref_log_probs, mask, estimator=config.kl_estimator)
      loss = policy_loss
      if config.kl_coef > 0:
        loss = loss + config.kl_coef * losses.aggregate(kl, mask, aggregation=config.aggregation)
      k3 = losses.kl_penalty(jax.lax.stop_gradient(log_probs), ref_log_probs, mask,
                             estimator="k3")
      log_ratio = jax.lax.stop_gradient(log_probs) - old_log_probs
      high = config.clip_eps if config.clip_eps_high is None else config.clip_eps_high
      outside = (log_ratio < jnp.log1p(-config.clip_eps)) | (log_ratio > jnp.log1p(high)) \
          if clipped else jnp.zeros(log_ratio.shape, bool)
      tokens = jnp.maximum(jnp.sum(mask), 1.0)
      aux = {"policy_loss": policy_loss,
             "kl": jnp.mean(jnp.sum(k3, axis=1)),
             "clip_fraction": jnp.sum(jnp.where(mask > 0, outside, False)) / tokens,
             "entropy": jnp.sum(jax.lax.stop_gradient(entropy)) / tokens}
      return loss, aux

    def update(carry, _):
      params, opt_state = carry
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}

    (params, opt_state), per_update = jax.lax.scan(
        update, (state.params, state.opt_state), length=config.num_updates)
    metrics = jax.tree.map(jnp.mean, per_update)
    # The loss and KL of the batch as sampled (before this step's updates), like the reward.
    for name in ("loss", "policy_loss", "kl", "entropy"):
      metrics[name] = per_update[name][0]
    metrics.update(
        mean_return=jnp.mean(rewards), reward_std=jnp.std(rewards),
        num_episodes=jnp.asarray(n, jnp.int32),
        mean_length=jnp.mean(jnp.sum(mask, axis=1)))
    new_state = SequenceTrainState(params=params, opt_state=opt_state,
                                   ref_params=state.ref_params, step=state.step + 1)
    return new_state, metrics

  # Threefry keys take the unrolled hash inside (`reinforce_jax.xla.prng`: the same numbers).
  return jax.jit(init_fn), prng.with_fast_keys(train_step)  # init: one compile, then µs
