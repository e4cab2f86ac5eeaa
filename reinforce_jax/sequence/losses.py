"""Group advantages, the sequence policy-gradient surrogate, and KL estimators, by name.

These are the named entry points; each is a thin composition of the parts in
`advantages` (baselines and scales), `importance` (ratios and surrogates), `aggregation`
(token reductions) and `regularizers` (KL, entropy), which a new variant composes directly.

A prompt's group of `G` sampled completions `y_1..y_G` with rewards `r_1..r_G` gives each
completion an advantage `A_i` (`group_advantages`); the surrogate (`policy_gradient_loss`) then
weights each completion's token log-probs `log pi(y_{i,t} | y_{i,<t})` by `A_i`. The score
function (log-derivative trick) says

    grad E[R] = E[(R(y) - b) sum_t grad log pi(y_t | y_<t)]

for any baseline `b` that does not depend on `y`. Which of the popular variants keep this
identity (and so estimate `grad E[R]` without bias) is measured exactly, by enumerating every
sequence of a tabular policy, in `benchmarks/sequence_audit.py`; in short:

* advantages: `"none"` and `"rloo"` (the leave-one-out mean does not depend on `y_i`) are
  unbiased; `"dr_grpo"` (the group mean includes `r_i`) is unbiased for `(G - 1) / G` times
  the gradient, a known scale; `"grpo"` divides by a standard deviation that depends on `y_i`:
  biased in direction at small `G`, and across prompts of different reward scales at every
  `G` (it gives each prompt's gradient the same size).
* aggregation: `"sequence_sum"` is the estimator above; `"constant"` is it divided by the
  padded length `L`, a known scale; `"sequence_mean"` (weight `1 / |y_i|`) is biased in
  direction at every `G` (Liu et al., 2025); `"token_mean"` (weight `1 / sum_j |y_j|`, which
  holds the sequence's own length) is biased, less so as the batch grows, tending to the
  gradient times `1 / E|y|`, a scale that changes with the policy.

The names follow TRL and tunix where they fit: TRL's `loss_type="grpo"` is `"sequence_mean"`,
`"dapo"`/`"bnpo"` are `"token_mean"` and `"dr_grpo"` is `"constant"`; tunix's
`"sequence-mean-token-mean"` is `"sequence_mean"` and `"token-mean"` is `"token_mean"`.

References:
  Williams, R. J. (1992). Simple statistical gradient-following algorithms for connectionist
  reinforcement learning. Machine Learning, 8.
  Kool, W., van Hoof, H., Welling, M. (2019). Buy 4 REINFORCE samples, get a baseline for
  free! ICLR Deep RL Meets Structured Prediction workshop. (RLOO)
  Ahmadian, A. et al. (2024). Back to basics: revisiting REINFORCE style optimization for
  learning from human feedback in LLMs. arXiv:2402.14740.
  Shao, Z. et al. (2024). DeepSeekMath. arXiv:2402.03300. (GRPO, k3 as a loss term)
  Yu, Q. et al. (2025). DAPO: an open-source LLM reinforcement learning system at scale.
  arXiv:2503.14476. (token-mean aggregation, clip-higher)
  Liu, Z. et al. (2025). Understanding R1-Zero-like training: a critical perspective.
  arXiv:2503.20783. (Dr. GRPO: no std, constant normaliser)
  Zheng, C. et al. (2025). Group sequence policy optimization. arXiv:2507.18071. (GSPO)
  Schulman, J. (2020). Approximating KL divergence. http://joschu.net/blog/kl-approx.html
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks
from reinforce_jax.sequence import advantages as advantages_lib
from reinforce_jax.sequence import aggregation as aggregation_lib
from reinforce_jax.sequence import importance, regularizers
from reinforce_jax.sequence.regularizers import kl_penalty

__all__ = [
    "aggregate",
    "group_advantages",
    "kl_penalty",
    "policy_gradient_loss",
]

ESTIMATORS = tuple(advantages_lib.ESTIMATORS)
AGGREGATIONS = aggregation_lib.MODES
KL_ESTIMATORS = regularizers.KL_ESTIMATORS
RATIO_LEVELS = ("token", "sequence")

AdvantageFn = Callable[[jax.Array], jax.Array]
AggregationFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_name(kind: str, value, names: tuple[str, ...]) -> None:
  if value not in names:
    raise ValueError(f"{kind} must be one of {names} or a function, got {value!r}")


def group_advantages(
    rewards: jax.Array,
    *,
    estimator: str | AdvantageFn,
    eps: float = 1e-6,
    ddof: int = 0,
    scale: str | None = None,
) -> jax.Array:
  """Per-completion advantages from the rewards of each prompt's group.

  With `r_i` the reward of completion `i` of a group of `G` (one row of `rewards`):

  * `"none"`: `r_i` (plain REINFORCE, unbiased).
  * `"rloo"`: `r_i - mean_{j != i} r_j` (leave-one-out baseline, unbiased; needs `G >= 2`).
  * `"grpo"`: `(r_i - mean_j r_j) / (std_j r_j + eps)`, by default the population standard
    deviation (`ddof=0`; TRL and tunix use `ddof=1`, with `eps=1e-4` and `1e-6`). Biased: the
    divisor depends on `r_i`.
  * `"dr_grpo"`: `r_i - mean_j r_j`, which is `(G - 1) / G` times the RLOO advantage, so its
    gradient is unbiased for `(G - 1) / G` times `grad E[R]`.

  This is `advantages.relative_advantages(rewards, baseline=..., scale=..., ddof=ddof,
  eps=eps)` with the estimator's baseline and scale (`advantages.ESTIMATORS`); `scale`
  replaces the estimator's own (`"group"`, `"batch"`: one std over the whole batch, as TRL's
  `scale_rewards="batch"`, or `"none"`).

  A group whose rewards are all equal gets advantages of exactly 0 under every estimator but
  `"none"`, whatever their magnitude: each group is first centred on its first member, so
  equal rewards are exact zeros before any mean or standard deviation is taken (no rounding
  residue for `"grpo"`'s small divisor to blow up), and a large common offset does not cancel.

  Args:
    rewards: `[B, G]` float array, `B` prompts with `G` completions each.
    estimator: one of the names above, or a function `[B, G] -> [B, G]`.
    eps: added to the standard deviation by a scale (a group of equal rewards gets
      advantages of 0, also with `eps=0`).
    ddof: 0 (population std) or 1 (sample std).
    scale: `None` (the estimator's), or one of `advantages.SCALES`.

  Returns:
    `[B, G]` advantages, same dtype as `rewards`. Gradients are not stopped here;
    `policy_gradient_loss` stops them.

  Raises:
    ValueError: at trace time, if `rewards` is not a floating `[B, G]` array, the estimator
      or scale is unknown, `"rloo"`, `"grpo"` or `"dr_grpo"` gets `G < 2` (a group of one has
      no others to compare with), `ddof` is not 0 or 1, or `eps` is negative or not finite.
  """
  checks.check_floating(rewards=rewards)
  if jnp.ndim(rewards) != 2:
    raise ValueError(f"rewards must have shape [B, G], got shape {checks.shape_of(rewards)}")
  if callable(estimator):
    advantages = estimator(rewards)
    checks.check_same_shape(rewards=rewards, advantages=advantages)
    return advantages
  _check_name("estimator", estimator, ESTIMATORS)
  checks.check_number("eps", eps, low=0.0)
  baseline, own_scale = advantages_lib.ESTIMATORS[estimator]
  num = rewards.shape[1]
  if estimator != "none" and num < 2:
    raise ValueError(
        f"estimator={estimator!r} compares each completion with the others of its group and "
        f"needs at least 2 completions per group, got rewards of shape "
        f"{checks.shape_of(rewards)} (G = {num}); use estimator='none' for single samples")
  return advantages_lib.relative_advantages(
      rewards, baseline=baseline, scale=own_scale if scale is None else scale, ddof=ddof,
      eps=eps)


def aggregate(
    values: jax.Array,
    mask: jax.Array,
    *,
    aggregation: str | AggregationFn,
    weights: jax.Array | None = None,
    rows: str = "batch",
    max_length: float | None = None,
) -> jax.Array:
  """Reduces per-token values `[N, L]` to a scalar, counting only tokens where `mask` is set.

  With `m` the mask, `w` the weights (1 without them), `|y_n| = sum_t m_{n,t}` and `R = N`
  (or, with `rows="nonempty"`, the number of rows holding a token, as tunix):

  * `"sequence_sum"`: `sum_n sum_t m w v / R` (the unbiased REINFORCE sum over each sequence).
  * `"token_mean"`: `sum_{n,t} m w v / sum_{n,t} m` (DAPO; TRL's `"dapo"`/`"bnpo"`).
  * `"sequence_mean"`: `sum_n (sum_t m w v) / |y_n| / R` (GRPO as published; TRL's `"grpo"`).
  * `"constant"`: `sum_{n,t} m w v / (R * L)` with `L` the padded length or `max_length`
    (Dr. GRPO).

  This is `aggregation.aggregate(values, mask, mode=aggregation, ...)`. The mask only
  selects tokens: the normalisers count tokens, and weights scale each token's value without
  changing them. Masked-out tokens (and tokens of weight 0) never reach the result or its
  gradient, whatever they hold (nan, +-inf): the gradient there is exactly 0. An empty row
  (or batch) contributes 0 rather than 0/0.

  Args:
    values: `[N, L]` float array.
    mask: `[N, L]` bool or 0/1 array; 1 marks a real token.
    aggregation: one of the names above, or a function `(values, mask) -> scalar`, which
      gets `values` with the masked-out tokens set to 0 (and the weights applied).
    weights: optional `[N, L]` real non-negative per-token weights (gradient stopped).
    rows: `"batch"` or `"nonempty"`.
    max_length: `"constant"`'s divisor `L`, or `None` for the padded length.

  Returns:
    A float scalar.

  Raises:
    ValueError: at trace time, if the shapes differ or are not rank 2, or a name is
      unknown; where they are concrete (not traced), if `mask` holds values other than 0
      and 1, or `weights` on real tokens are negative or not finite.
  """
  if not callable(aggregation):
    _check_name("aggregation", aggregation, AGGREGATIONS)
  return aggregation_lib.aggregate(
      values, mask, mode=aggregation, rows=rows, max_length=max_length, weights=weights)


def policy_gradient_loss(
    log_probs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    aggregation: str | AggregationFn,
    old_log_probs: jax.Array | None = None,
    clip_eps: float | None = None,
    clip_eps_high: float | None = None,
    ratio_level: str = "token",
    weights: jax.Array | None = None,
    delta: float | None = None,
    dual_clip: float | None = None,
    rows: str = "batch",
) -> jax.Array:
  """The sequence score-function surrogate, optionally importance-weighted and PPO-clipped.

  Each token of completion `n` gets the objective `o_{n,t}` below and the loss is
  `-aggregate(o, mask, aggregation=aggregation, weights=weights, rows=rows)`:

  * without `old_log_probs` or `clip_eps`: `o_{n,t} = A_n log pi_{n,t}`, whose gradient is
    `A_n grad log pi_{n,t}` (REINFORCE; with `"sequence_sum"` the unbiased estimator);
  * otherwise `importance.ppo_objective`: `o_{n,t} = min(rho A_n, clip(rho, 1 - clip_eps,
    1 + clip_eps_high) A_n)` (PPO; Schulman et al., 2017), with `rho` the importance ratio
    against `old_log_probs`: per token, `rho_{n,t} = pi_{n,t} / pi_old_{n,t}`; or with
    `ratio_level="sequence"`, GSPO's length-normalised sequence ratio
    `s_n = exp(sum_t m (log pi - log pi_old) / |y_n|)`, used as
    `rho_{n,t} = sg(s_n) pi_{n,t} / sg(pi_{n,t})` (GSPO-token, `importance.log_ratio(...,
    level="sequence_token")`: its value is `s_n` so clipping is decided per sequence, its
    gradient is `s_n grad log pi_{n,t}`; with `"sequence_mean"` this is exactly GSPO's
    gradient). `clip_eps=None` with `old_log_probs` gives the unclipped importance-weighted
    surrogate. `delta` caps `rho` before the minimum (INTELLECT-2's two-sided clip, TRL's
    `delta`); `dual_clip` keeps `o >= dual_clip * A_n` where `A_n < 0` (dual-clip PPO,
    tunix's `epsilon_c`).

  `advantages` pass through `jax.lax.stop_gradient`, as do `old_log_probs`; `jax.grad` reaches
  the parameters only through `log_probs`. At `old_log_probs == log_probs` every ratio is 1,
  clipping does not bind, and the gradient equals the plain surrogate's.

  Masked-out tokens never reach the loss or its gradient, whatever `log_probs` and
  `old_log_probs` hold there (padding may hold nan or +-inf), and neither does the advantage
  of a completion without tokens: the loss is the same as with zeros there, and its gradient
  with respect to `log_probs` is exactly 0 at masked-out tokens.

  Args:
    log_probs: `[N, L]` float array, `log pi(y_{n,t} | y_{n,<t})` under the parameters being
      differentiated (`N = B * G` completions, `L` the padded length).
    advantages: `[N]` float array, one advantage per completion (e.g. `group_advantages(...)`
      reshaped from `[B, G]`).
    mask: `[N, L]` bool or 0/1 array, 1 for the completion's tokens (its EOS included).
    aggregation: how tokens are summed and normalised, see `aggregate`.
    old_log_probs: `[N, L]` log-probs under the sampling policy, or `None` (on-policy).
    clip_eps: PPO's clip range `epsilon`, or `None` for no clipping.
    clip_eps_high: the upper clip range (DAPO's clip-higher, e.g. 0.28 with `clip_eps=0.2`);
      `None` means `clip_eps`. Needs `clip_eps`.
    ratio_level: `"token"` or `"sequence"` (GSPO).
    weights: optional `[N, L]` real non-negative per-token weights, passed to `aggregate`.
    delta: the two-sided clip's cap on the ratio (`> 0`), or `None`. Needs `clip_eps`.
    dual_clip: the dual-clip constant (`>= 1`), or `None`. Needs `clip_eps`.
    rows: the aggregation's row count, `"batch"` or `"nonempty"`.

  Returns:
    A float scalar; minimise it.

  Raises:
    ValueError: at trace time, naming the shapes, if `log_probs`, `mask` and `old_log_probs`
      are not all `[N, L]` or `advantages` is not `[N]`; if a name is unknown; if a clip range
      is not in `[0, inf)` (`clip_eps` also below 1), or `clip_eps_high`, `delta` or
      `dual_clip` comes without `clip_eps`; where it is concrete, if `mask` holds values
      other than 0 and 1.
  """
  checks.check_sequence_advantages(log_probs, advantages, mask)
  if ratio_level not in RATIO_LEVELS:
    raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
  for name, value in (("clip_eps_high", clip_eps_high), ("delta", delta),
                      ("dual_clip", dual_clip)):
    if value is not None and clip_eps is None:
      raise ValueError(f"{name} needs clip_eps (the lower clip range)")
  if clip_eps is not None:
    checks.check_number("clip_eps", clip_eps, low=0.0, high=1.0, high_open=True)
  if clip_eps_high is not None:
    checks.check_number("clip_eps_high", clip_eps_high, low=0.0)
  checks.check_mask("mask", mask)
  on = jnp.asarray(mask) != 0
  if old_log_probs is None and clip_eps is None:
    # Masked-out entries become 0 before any arithmetic (see `checks.where_on`).
    (adv,) = checks.where_on(
        jnp.any(on, axis=1), jax.lax.stop_gradient(advantages).astype(log_probs.dtype))
    (log_probs,) = checks.where_on(on, log_probs)
    return -aggregate(adv[:, None] * log_probs, mask, aggregation=aggregation,
                      weights=weights, rows=rows)
  level = "token" if ratio_level == "token" else "sequence_token"
  log_ratio = importance.log_ratio(log_probs, old_log_probs, mask, level=level)
  objective = importance.ppo_objective(
      log_ratio, advantages.astype(log_probs.dtype), mask, eps_low=clip_eps,
      eps_high=clip_eps_high, delta=delta, dual_clip=dual_clip)
  return -aggregate(objective, mask, aggregation=aggregation, weights=weights, rows=rows)
