"""Regularisers of the sequence loss: KL estimators to a reference policy and an entropy bonus.

* `kl_penalty`: per-token estimates k1/k2/k3 of `KL(pi || pi_ref)` (Schulman, 2020), with an
  optional symmetric clamp (tunix's `kl_clamp_value`).
* `bias_corrected_kl`: a per-token KL estimate times the importance ratio `pi / pi_old`
  (DeepSeek-V3.2, 2025; TRL's `use_bias_correction_kl`), so that off-policy samples still
  estimate the reverse KL's gradient.
* `entropy_bonus`: the aggregated per-token entropy, to be subtracted (times a coefficient)
  from the loss.

Peer names: tunix's `kl_loss_mode` `"kl"`, `"mse_kl"`, `"low_var_kl"` are `"k1"`, `"k2"`,
`"k3"` (`KL_NAMES`); TRL always uses k3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks
from reinforce_jax.sequence import aggregation

__all__ = [
    "KL_ESTIMATORS",
    "KL_NAMES",
    "bias_corrected_kl",
    "entropy_bonus",
    "kl_penalty",
]

KL_ESTIMATORS = ("k1", "k2", "k3")
# tunix's `kl_loss_mode` -> ours.
KL_NAMES = {"kl": "k1", "mse_kl": "k2", "low_var_kl": "k3"}


def _check_tokens(log_probs, mask, **others) -> jax.Array:
  checks.check_floating(log_probs=log_probs, **others)
  checks.check_same_shape(log_probs=log_probs, mask=mask, **others)
  if jnp.ndim(log_probs) != 2:
    raise ValueError(
        f"log_probs must have shape [N, L], got shape {checks.shape_of(log_probs)}")
  checks.check_mask("mask", mask)
  return jnp.asarray(mask) != 0


def kl_penalty(
    log_probs: jax.Array,
    ref_log_probs: jax.Array,
    mask: jax.Array,
    *,
    estimator: str,
    clamp: float | None = None,
) -> jax.Array:
  """Per-token estimates of `KL(pi || pi_ref)` from tokens sampled from `pi`.

  With `d = log pi - log pi_ref` at the sampled token (Schulman, 2020):
  `"k1"`: `d`; `"k2"`: `d^2 / 2`; `"k3"`: `exp(-d) + d - 1`. k1 and k3 are unbiased for the
  per-token KL's value (k3 is never negative); k2 is biased for it. With `clamp`, the
  estimate is `clip(k, -clamp, clamp)` (tunix's `kl_clamp_value`; the gradient is 0 where it
  binds).

  Their gradients are a different matter. The exact gradient of the sequence KL is
  `E[sum_t grad log pi_t * sum_{s >= t} d_s]` (the score function applied to
  `log pi(y) - log pi_ref(y)`, plus `E[grad log pi(y)] = 0`):

  * as a reward (`r_n - beta * stop_gradient(sum_t k_{n,t})` before the advantages), only
    `"k1"` gives that gradient without bias: its own derivative has mean zero. k2 and k3 miss
    the mean of their own derivative, which is not zero.
  * as a loss term (`loss + beta * aggregate(kl_penalty(...), mask, ...)`), `"k1"`'s gradient
    `grad log pi_t` has mean zero (it penalises nothing, adding only noise); `"k2"`'s,
    `d_t grad log pi_t`, is the gradient of each token's KL with the prefixes held fixed:
    exact for one token, biased for sequences (it drops `sum_{s > t} d_s`); `"k3"`'s,
    `(1 - pi_ref / pi) grad log pi_t`, is in expectation the gradient of the *forward*
    per-token KL(pi_ref || pi) (DeepSeekMath's GRPO penalty): biased.

  `benchmarks/sequence_audit.py` measures all six exactly.

  Args:
    log_probs: `[N, L]` float array, log-probs of the sampled tokens under `pi`.
    ref_log_probs: `[N, L]` float array, the same tokens under `pi_ref` (gradient stopped).
    mask: `[N, L]` bool or 0/1 array; masked positions give 0.
    estimator: `"k1"`, `"k2"` or `"k3"`.
    clamp: an optional bound `> 0` on the estimate's magnitude.

  Returns:
    `[N, L]` per-token estimates, exactly 0 where `mask` is not set, whatever the inputs hold
    there (nan, +-inf); the gradient with respect to `log_probs` is exactly 0 there too.

  Raises:
    ValueError: at trace time, if the three shapes differ or are not rank 2, the estimator
      is unknown or `clamp` is not positive; where it is concrete, if `mask` holds values
      other than 0 and 1.

  References:
    Schulman, J. (2020). Approximating KL divergence. http://joschu.net/blog/kl-approx.html
    Tang, Y., Munos, R. (2025). On a few pitfalls in KL divergence gradient estimation for
    RL. arXiv:2506.09477.
  """
  on = _check_tokens(log_probs, mask, ref_log_probs=ref_log_probs)
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
  if clamp is not None:
    checks.check_number("clamp", clamp, low=0.0, low_open=True)
  # Padded positions may hold anything: zero them before any arithmetic, so that neither the
  # value nor the gradient sees them (and exp(-d) cannot overflow there).
  log_probs, ref_log_probs = checks.where_on(
      on, log_probs, jax.lax.stop_gradient(ref_log_probs).astype(log_probs.dtype))
  d = log_probs - ref_log_probs
  if estimator == "k1":
    kl = d
  elif estimator == "k2":
    kl = 0.5 * d**2
  else:
    kl = jnp.expm1(-d) + d  # exp(-d) - 1 + d, accurate near d = 0
  if clamp is not None:
    kl = jnp.clip(kl, -clamp, clamp)
  return jnp.where(on, kl, 0.0)


def bias_corrected_kl(kl: jax.Array, log_ratio: jax.Array, mask: jax.Array) -> jax.Array:
  """A per-token KL estimate times the importance ratio: `k_{n,t} * exp(log_ratio_{n,t})`.

  DeepSeek-AI (2025), DeepSeek-V3.2, arXiv:2512.02556: with tokens sampled from `pi_old`,
  `E_{pi_old}[(pi / pi_old) k3]` is the reverse KL `KL(pi || pi_ref)` and its gradient
  (through both factors) is the reverse KL's gradient, without the bias of plain k3. TRL's
  `use_bias_correction_kl=True` applies it as here: the ratio is not stopped, so it changes
  the gradient also on-policy, where its value is 1; with a sequence-level ratio
  (`log_ratio(..., level="sequence")`) the sequence's weight multiplies each token's KL.

  Args:
    kl: `[N, L]` per-token KL estimates (`kl_penalty(...)`).
    log_ratio: `[N, L]` log importance ratios (`importance.log_ratio(...)`).
    mask: `[N, L]` bool or 0/1 array.

  Returns:
    `[N, L]`, 0 at masked-out tokens.

  Raises:
    ValueError: at trace time, if the shapes differ or are not rank 2.
  """
  on = _check_tokens(kl, mask, log_ratio=log_ratio)
  kl, log_ratio = checks.where_on(on, kl, log_ratio.astype(kl.dtype))
  return jnp.where(on, kl * jnp.exp(log_ratio), 0.0)


def entropy_bonus(
    entropy: jax.Array,
    mask: jax.Array,
    *,
    mode: str = "token_mean",
    rows: str = "batch",
) -> jax.Array:
  """The aggregated per-token entropy `H`; a loss adds `-coef * H` to encourage exploration.

  `H = aggregate(entropy, mask, mode=mode, rows=rows)`, by default the mean entropy over
  real tokens, `sum m H_t / sum m` (TRL's `entropy_coef` term, whatever its `loss_type`;
  Williams & Peng, 1991, Function optimization using connectionist reinforcement learning
  algorithms, Connection Science 3(3), introduced the entropy term). The gradient flows
  through `entropy` (compute it from the logits without stopping it).

  Args:
    entropy: `[N, L]` per-token entropies of the next-token distribution.
    mask: `[N, L]` bool or 0/1 array.
    mode: an `aggregation.MODES` name.
    rows: `"batch"` or `"nonempty"`.

  Returns:
    A float scalar.

  Raises:
    ValueError: as `aggregation.aggregate`.
  """
  return aggregation.aggregate(entropy, mask, mode=mode, rows=rows)
