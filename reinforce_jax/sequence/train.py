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
from reinforce_jax.sequence import advantages as advantages_lib
from reinforce_jax.sequence import aggregation, losses, regularizers
from reinforce_jax.sequence.sampling import ApplyFn, Decoder, sample, token_log_probs
from reinforce_jax.xla import prng

__all__ = [
    "make_sequence_train_step",
    "preset_loss",
    "sequence_loss",
    "SequenceBatch",
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
  `clip_eps_high >= 0`, `delta > 0`, `dual_clip >= 1`, the last three needing `clip_eps`,
  `entropy_coef >= 0`); a bad one raises `ValueError` naming it.

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
    ddof: 0 or 1, the standard deviation's delta degrees of freedom when advantages are
      scaled (TRL and tunix use 1).
    scale: the advantages' scale, `None` (the estimator's own: "group" for "grpo"), or one
      of `advantages.SCALES` ("group", "batch": TRL's `scale_rewards="batch"`, "none").
    rows: the aggregation's row count, "batch" or "nonempty" (tunix's).
    delta: the two-sided clip's cap on the ratio (TRL's `delta`), or None; needs `clip_eps`.
    dual_clip: dual-clip PPO's constant (tunix's `epsilon_c`), or None; needs `clip_eps`.
    entropy_coef: weight of the entropy bonus (mean per-token entropy) subtracted from the
      loss (0: none).
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
  ddof: int = 0
  scale: str | None = None
  rows: str = "batch"
  delta: float | None = None
  dual_clip: float | None = None
  entropy_coef: float = 0.0

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
    if isinstance(self.ddof, bool) or self.ddof not in (0, 1):
      raise ValueError(f"ddof must be 0 or 1, got {self.ddof!r}")
    if self.scale is not None and self.scale not in advantages_lib.SCALES:
      raise ValueError(
          f"scale must be None or one of {advantages_lib.SCALES}, got {self.scale!r}")
    if self.scale == "group" and self.group_size < 2:
      raise ValueError(f"scale='group' divides by each group's std: group_size must be at "
                       f"least 2, got {self.group_size}")
    if self.rows not in aggregation.ROW_COUNTS:
      raise ValueError(f"rows must be one of {aggregation.ROW_COUNTS}, got {self.rows!r}")
    for name, low in (("delta", 0.0), ("dual_clip", 1.0)):
      value = getattr(self, name)
      if value is None:
        continue
      if self.clip_eps is None:
        raise ValueError(f"{name}={value!r} needs clip_eps (PPO's clip range); set clip_eps too")
      checks.check_number(name, value, low=low, low_open=name == "delta", dtype=jnp.float32)
    checks.check_number("entropy_coef", self.entropy_coef, low=0.0, dtype=jnp.float32)


class SequenceBatch(NamedTuple):
  """One sampled batch as the loss sees it: `N = B * G` rows (prompt-major), `T` new tokens.

  Attributes:
    tokens: int32 `[N, P + T]`, each prompt followed by its sampled completion.
    mask: float32 `[N, T]`, 1 on the completion's tokens up to and including EOS.
    rewards: float32 `[N]`.
    advantages: float32 `[N]`, the group advantages of `SequenceConfig.estimator`.
    old_log_probs: float32 `[N, T]`, log-probs under the sampling policy (0 where `mask` is 0).
    ref_log_probs: float32 `[N, T]`, log-probs under the reference (initial) policy, gradient
      stopped (0 where `mask` is 0).
  """

  tokens: jax.Array
  mask: jax.Array
  rewards: jax.Array
  advantages: jax.Array
  old_log_probs: jax.Array
  ref_log_probs: jax.Array


# (log_probs [N, T] under the parameters being differentiated, batch) -> scalar loss
LossFn = Callable[[jax.Array, SequenceBatch], jax.Array]


def sequence_loss(
    apply_fn: ApplyFn,
    params: Any,
    batch: SequenceBatch,
    config: SequenceConfig,
    *,
    loss_fn: LossFn | None = None,
) -> tuple[jax.Array, Metrics]:
  """The loss a sequence train step differentiates on one sampled batch, and its metrics.

  The policy term is `losses.policy_gradient_loss` with `config`'s aggregation and clipping,
  or `loss_fn(log_probs, batch)` when given; `config.kl_coef` times the aggregated KL estimate
  to the reference policy is added to either.

  Args:
    apply_fn: `(params, tokens [N, L]) -> logits [N, L, V]` (`SequencePolicy.apply`).
    params: the parameters to differentiate.
    batch: a `SequenceBatch`.
    config: a `SequenceConfig`.
    loss_fn: `(log_probs [N, T], batch) -> scalar`, a policy loss of your own, or None;
      `log_probs` are the completion tokens' log-probs under `params` (0 where
      `batch.mask` is 0), the only input that carries a gradient. A `loss_fn` whose
      attribute `takes_entropy` is True is also given `entropy=` (`[N, T]` per-token
      entropies under `params`), as `preset_loss` does.

  Returns:
    `(loss, metrics)`: float32 scalars `policy_loss`, `kl`, `clip_fraction` and `entropy`
    (as in `make_sequence_train_step`).

  Raises:
    ValueError: at trace time, if `loss_fn` does not return a scalar.
  """
  clipped = config.clip_eps is not None
  mask = batch.mask
  n, t = mask.shape
  p = batch.tokens.shape[1] - t
  full_mask = jnp.concatenate([jnp.zeros((n, p), mask.dtype), mask], axis=1)
  log_probs, entropy = token_log_probs(apply_fn, params, batch.tokens, full_mask,
                                       temperature=config.temperature, with_entropy=True)
  log_probs, entropy = log_probs[:, p:], entropy[:, p:]
  old_log_probs, ref_log_probs = batch.old_log_probs, batch.ref_log_probs
  if loss_fn is None:
    policy_loss = losses.policy_gradient_loss(
        log_probs, batch.advantages, mask, aggregation=config.aggregation,
        old_log_probs=old_log_probs if clipped else None, clip_eps=config.clip_eps,
        clip_eps_high=config.clip_eps_high, ratio_level=config.ratio_level,
        delta=config.delta, dual_clip=config.dual_clip, rows=config.rows)
  else:
    if getattr(loss_fn, "takes_entropy", False):
      policy_loss = loss_fn(log_probs, batch, entropy=entropy)
    else:
      policy_loss = loss_fn(log_probs, batch)
    if jnp.shape(policy_loss) != ():
      raise ValueError(f"loss_fn must return a scalar loss, got shape {jnp.shape(policy_loss)}")
  kl = losses.kl_penalty(log_probs, ref_log_probs, mask, estimator=config.kl_estimator)
  loss = policy_loss
  if config.kl_coef > 0:
    loss = loss + config.kl_coef * losses.aggregate(kl, mask, aggregation=config.aggregation,
                                                    rows=config.rows)
  if config.entropy_coef > 0:
    loss = loss - config.entropy_coef * regularizers.entropy_bonus(entropy, mask)
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


class _PresetLoss:
  """A preset's `(loss, metrics)` function seen as a train step's `loss_fn`."""

  takes_entropy = True

  def __init__(self, preset: Callable[..., tuple[jax.Array, Metrics]]):
    self.preset = preset

  def __call__(self, log_probs: jax.Array, batch: SequenceBatch, *,
               entropy: jax.Array | None = None) -> jax.Array:
    loss, _ = self.preset(log_probs, batch.old_log_probs, batch.ref_log_probs,
                          batch.advantages, batch.mask, entropy=entropy)
    return loss


def preset_loss(preset: Callable[..., tuple[jax.Array, Metrics]]) -> LossFn:
  """A `presets.trl_loss` / `presets.tunix_loss` function as `make_sequence_train_step`'s loss.

  The preset is called as `preset(log_probs, batch.old_log_probs, batch.ref_log_probs,
  batch.advantages, batch.mask, entropy=entropy)` and its loss kept (its metrics are
  dropped). The preset's own KL term (`beta`) uses the batch's reference log-probs, so set
  `SequenceConfig(kl_coef=0)` to avoid counting a KL twice. The advantages are the batch's,
  from `SequenceConfig`'s `estimator`, `ddof` and `scale` (TRL and tunix use
  `estimator="grpo", ddof=1`; their exact `eps` is in `presets.trl_advantages` and
  `presets.tunix_advantages`).

  Args:
    preset: a loss function returned by `trl_loss` or `tunix_loss` (or any function with
      their signature).

  Returns:
    A `loss_fn` for `make_sequence_train_step` and `sequence_loss`.
  """
  return _PresetLoss(preset)


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
    *,
    loss_fn: LossFn | None = None,
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
    loss_fn: a policy loss of your own, `(log_probs [N, T], batch: SequenceBatch) -> scalar`,
      in place of `losses.policy_gradient_loss` (see `sequence_loss`); `config`'s
      `aggregation`, `clip_eps`, `clip_eps_high` and `ratio_level` then only shape the KL
      term and the `clip_fraction` metric, `estimator` still gives `batch.advantages`.

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
                                         estimator=config.estimator, ddof=config.ddof,
                                         scale=config.scale).reshape(n)
    ref_log_probs = jax.lax.stop_gradient(token_log_probs(
        policy.apply, state.ref_params, out.tokens, out.mask,
        temperature=config.temperature)[:, p:])
    batch = SequenceBatch(tokens=out.tokens, mask=mask, rewards=rewards, advantages=advantages,
                          old_log_probs=out.log_probs[:, p:], ref_log_probs=ref_log_probs)

    def objective(params):
      return sequence_loss(policy.apply, params, batch, config, loss_fn=loss_fn)

    def update(carry, _):
      params, opt_state = carry
      (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
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
