"""Importance ratios against the sampling policy and the per-token surrogates built on them.

Completions sampled from `pi_old` and trained under `pi` carry, per token, the log ratio
`l_{n,t} = log pi(y_{n,t} | y_{n,<t}) - log pi_old(y_{n,t} | y_{n,<t})`. `log_ratio` gives it
at token level, or per sequence (GSPO's length-normalised ratio, as a value or only as a
weight), `gmpo_log_ratio` as GMPO's clipped geometric mean. The surrogates turn a ratio and
the advantages `A_n` into a per-token objective `o_{n,t}` to be maximised: the loss is
`-aggregation.aggregate(o, mask, mode=...)`.

* `ppo_objective`: PPO's clipped ratio (Schulman et al., 2017), with DAPO's asymmetric
  clip-higher `eps_high` (Yu et al., 2025), INTELLECT-2's two-sided `delta` (TRL's `delta`)
  and dual clip `c` (Ye et al., 2020; tunix's `epsilon_c`).
* `cispo_objective`: a clipped, stopped weight on the REINFORCE term (MiniMax-M1, 2025).
* `sapo_objective`: SAPO's soft sigmoid gate (Gao et al., 2025).
* `vespo_weights` / `vespo_objective`: VESPO's Gamma weights of the sequence ratio (2026).

GSPO (Zheng et al., 2025) is `ppo_objective` on `log_ratio(..., level="sequence")`; LUSPO
(arXiv:2602.05261) is the same objective aggregated with `"sequence_sum"` (each sequence's
loss scaled by its length); GMPO (Zhao et al., 2025) is `gmpo_objective` aggregated with
`"sequence_mean"`.

Every function here replaces masked-out entries (padding may hold nan or +-inf) by 0 before
any arithmetic, so they reach neither a value nor a gradient; old log-probs and advantages
pass through `jax.lax.stop_gradient`, and `jax.grad` reaches the parameters only through
`log_probs`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks

__all__ = [
    "LEVELS",
    "cispo_objective",
    "gmpo_log_ratio",
    "gmpo_objective",
    "log_ratio",
    "ppo_objective",
    "sapo_objective",
    "vespo_objective",
    "vespo_weights",
]

LEVELS = ("token", "sequence", "sequence_token")


def _on(mask, log_probs) -> jax.Array:
  checks.check_floating(log_probs=log_probs)
  if jnp.ndim(log_probs) != 2:
    raise ValueError(
        f"log_probs must have shape [N, L], got shape {checks.shape_of(log_probs)}")
  checks.check_same_shape(log_probs=log_probs, mask=mask)
  checks.check_mask("mask", mask)
  return jnp.asarray(mask) != 0


def _advantages(advantages, on: jax.Array, dtype) -> jax.Array:
  """`[N]` or `[N, L]` advantages as `[N, 1]` or `[N, L]`, stopped, 0 where nothing is real."""
  checks.check_floating(advantages=advantages)
  shape, (n, length) = checks.shape_of(advantages), on.shape
  advantages = jax.lax.stop_gradient(jnp.asarray(advantages)).astype(dtype)
  if shape == (n,):
    (advantages,) = checks.where_on(jnp.any(on, axis=1), advantages)
    return advantages[:, None]
  if shape == (n, length):
    return checks.where_on(on, advantages)[0]
  raise ValueError(f"advantages must have shape [N] = ({n},) or [N, L] = ({n}, {length}) for "
                   f"a mask of shape ({n}, {length}), got shape {shape}")


def _lengths(on: jax.Array, dtype) -> jax.Array:
  return jnp.maximum(jnp.sum(on, axis=1, keepdims=True), 1).astype(dtype)


def log_ratio(
    log_probs: jax.Array,
    old_log_probs: jax.Array | None,
    mask: jax.Array,
    *,
    level: str = "token",
) -> jax.Array:
  """The log importance ratio of each token, `[N, L]`, 0 at masked-out tokens.

  With `l_{n,t} = log pi_{n,t} - sg(log pi_old_{n,t})` and `|y_n| = sum_t m_{n,t}`:

  * `"token"`: `l_{n,t}` (PPO, GRPO, DAPO).
  * `"sequence"`: `s_n = sum_t m_{n,t} l_{n,t} / |y_n|` on every token of the sequence, the
    log of GSPO's length-normalised ratio `(pi(y_n) / pi_old(y_n))^{1/|y_n|}` (Zheng et al.,
    2025, arXiv:2507.18071; TRL's `importance_sampling_level="sequence"`). The gradient
    flows through every token's log-prob: `grad s_n = sum_t m grad log pi_{n,t} / |y_n|`.
  * `"sequence_token"`: `sg(s_n) + log pi_{n,t} - sg(log pi_{n,t})` (GSPO-token; tunix's
    `loss_algo="gspo-token"`): its value is `s_n`, so clipping is decided per sequence, and
    its gradient is that of a token-level ratio, `grad log pi_{n,t}`.

  Under an aggregation whose token weights are equal within each row (all of
  `aggregation.MODES`), `"sequence"` and `"sequence_token"` give the same loss and the same
  gradient; they differ under per-token weights.

  Args:
    log_probs: `[N, L]` float array, log-probs of the sampled tokens under `pi`.
    old_log_probs: `[N, L]` log-probs under the sampling policy (gradient stopped), or
      `None` for `sg(log_probs)` (on-policy: every ratio 1, gradients as above).
    mask: `[N, L]` bool or 0/1 array.
    level: one of `LEVELS`.

  Returns:
    `[N, L]` log ratios, exactly 0 at masked-out tokens (with gradient exactly 0 there).

  Raises:
    ValueError: at trace time, if the shapes differ or are not rank 2, or `level` is
      unknown; where it is concrete, if `mask` holds values other than 0 and 1.
  """
  on = _on(mask, log_probs)
  if level not in LEVELS:
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
  if old_log_probs is None:
    old_log_probs = log_probs
  checks.check_floating(old_log_probs=old_log_probs)
  checks.check_same_shape(log_probs=log_probs, old_log_probs=old_log_probs)
  old_log_probs = jax.lax.stop_gradient(old_log_probs).astype(log_probs.dtype)
  log_probs, old_log_probs = checks.where_on(on, log_probs, old_log_probs)
  token = log_probs - old_log_probs
  if level == "token":
    return token
  sequence = jnp.sum(token, axis=1, keepdims=True) / _lengths(on, log_probs.dtype)
  if level == "sequence":
    values = jnp.broadcast_to(sequence, token.shape)
  else:
    values = jax.lax.stop_gradient(sequence) + (token - jax.lax.stop_gradient(token))
  return jnp.where(on, values, 0.0)


def ppo_objective(
    log_ratio: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float | None,
    eps_high: float | None = None,
    delta: float | None = None,
    dual_clip: float | None = None,
) -> jax.Array:
  """PPO's clipped surrogate per token, with clip-higher, two-sided and dual clipping.

  With `rho = exp(log_ratio)`, `A` the advantage and `clip(rho) = clip(rho, 1 - eps_low,
  1 + eps_high)`:

      o = min(min(rho, delta) * A, clip(rho) * A)               (PPO, `delta` optional)
      o = max(o, dual_clip * A)          where A < 0            (dual clip, optional)

  * Schulman et al. (2017), Proximal policy optimization algorithms, arXiv:1707.06347:
    `o = min(rho A, clip(rho, 1 - eps, 1 + eps) A)`.
  * Yu et al. (2025), DAPO, arXiv:2503.14476: `eps_high > eps_low` ("clip-higher").
  * Prime Intellect (2025), INTELLECT-2, arXiv:2505.07291: `rho` is first capped at `delta`
    (> 1 + eps_high), bounding the objective of a negative advantage whose ratio has grown
    (TRL's `delta`).
  * Ye et al. (2020), Mastering complex control in MOBA games with deep RL, arXiv:1912.09729:
    dual-clip PPO, for `A < 0` the objective is at least `c A` (`c > 1`; tunix's
    `epsilon_c`).

  `eps_low=None` gives the unclipped importance-weighted surrogate `rho A` (and needs
  `eps_high`, `delta`, `dual_clip` unset).

  Args:
    log_ratio: `[N, L]` log ratios (`log_ratio(...)`).
    advantages: `[N]` or `[N, L]` advantages (gradient stopped).
    mask: `[N, L]` bool or 0/1 array.
    eps_low: the lower clip range, in `[0, 1)`, or `None` for no clipping.
    eps_high: the upper clip range (`>= 0`); `None` means `eps_low`.
    delta: the cap on `rho` before the minimum (`> 0`), or `None`.
    dual_clip: the dual-clip constant `c` (`>= 1`), or `None`.

  Returns:
    `[N, L]` objectives, 0 at masked-out tokens.

  Raises:
    ValueError: at trace time, on shapes that do not fit, a clip setting out of its range or
      given without `eps_low`.
  """
  on = _on(mask, log_ratio)
  advantages = _advantages(advantages, on, log_ratio.dtype)
  if eps_low is None:
    for name, value in (("eps_high", eps_high), ("delta", delta), ("dual_clip", dual_clip)):
      if value is not None:
        raise ValueError(f"{name}={value!r} needs eps_low (the lower clip range); set eps_low")
  else:
    checks.check_number("eps_low", eps_low, low=0.0, high=1.0, high_open=True)
  if eps_high is not None:
    checks.check_number("eps_high", eps_high, low=0.0)
  if delta is not None:
    checks.check_number("delta", delta, low=0.0, low_open=True)
  if dual_clip is not None:
    checks.check_number("dual_clip", dual_clip, low=1.0)
  (log_ratio,) = checks.where_on(on, log_ratio)
  ratio = jnp.exp(log_ratio)
  if eps_low is None:
    return jnp.where(on, ratio * advantages, 0.0)
  high = eps_low if eps_high is None else eps_high
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + high) * advantages
  if delta is not None:
    ratio = jnp.minimum(ratio, delta)
  objective = jnp.minimum(ratio * advantages, clipped)
  if dual_clip is not None:
    objective = jnp.where(advantages < 0, jnp.maximum(objective, dual_clip * advantages),
                          objective)
  return jnp.where(on, objective, 0.0)


def cispo_objective(
    log_probs: jax.Array,
    log_ratio: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    high: float,
    low: float | None = None,
) -> jax.Array:
  """CISPO: the REINFORCE term weighted by a clipped, stopped importance ratio.

      o = sg(clip(rho, low, high)) * A * log pi,    rho = exp(log_ratio)

  Chen et al. / MiniMax (2025), MiniMax-M1: scaling test-time compute efficiently with
  lightning attention, arXiv:2506.13585. The ratio is clipped and stopped, never the token:
  every token keeps a gradient `sg(clip(rho)) A grad log pi`, also where PPO's clip would
  drop it. TRL's `loss_type="cispo"` is `high = epsilon_high` (an absolute cap, e.g. 5.0 as
  ScaleRL, arXiv:2510.13786, recommends) and no lower bound.

  Args:
    log_probs: `[N, L]` log-probs under `pi` (the gradient flows through these only).
    log_ratio: `[N, L]` log ratios (their gradient is stopped here).
    advantages: `[N]` or `[N, L]` advantages (gradient stopped).
    mask: `[N, L]` bool or 0/1 array.
    high: the cap on the ratio, `> 0`.
    low: an optional floor on the ratio, in `[0, high]`.

  Returns:
    `[N, L]` objectives, 0 at masked-out tokens.

  Raises:
    ValueError: at trace time, on shapes that do not fit or bounds out of range.
  """
  on = _on(mask, log_probs)
  checks.check_same_shape(log_probs=log_probs, log_ratio=log_ratio)
  advantages = _advantages(advantages, on, log_probs.dtype)
  checks.check_number("high", high, low=0.0, low_open=True)
  if low is not None:
    checks.check_number("low", low, low=0.0, high=float(high))
  log_probs, log_ratio = checks.where_on(on, log_probs, jax.lax.stop_gradient(log_ratio))
  weight = jnp.clip(jnp.exp(log_ratio), min=low, max=high)
  return jnp.where(on, weight * advantages * log_probs, 0.0)


def sapo_objective(
    log_ratio: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    temperature_pos: float = 1.0,
    temperature_neg: float = 1.05,
) -> jax.Array:
  """SAPO: a soft sigmoid gate on the ratio in place of a hard clip.

      o = (4 / tau) * sigmoid(tau * (rho - 1)) * A,   tau = tau_pos if A > 0 else tau_neg

  Gao, C. et al. (2025), Soft adaptive policy optimization, arXiv:2511.20347 (as TRL's
  `loss_type="sapo"` computes it). At `rho = 1` the gradient is `A grad log pi` (the gate's
  slope there is `tau / 4`); away from 1 the gradient
  `4 sigmoid'(tau (rho - 1)) rho A grad log pi` decays smoothly instead of dropping to 0.

  Args:
    log_ratio: `[N, L]` log ratios.
    advantages: `[N]` or `[N, L]` advantages (gradient stopped).
    mask: `[N, L]` bool or 0/1 array.
    temperature_pos: `tau` where `A > 0`, `> 0`.
    temperature_neg: `tau` where `A <= 0`, `> 0`.

  Returns:
    `[N, L]` objectives, 0 at masked-out tokens.

  Raises:
    ValueError: at trace time, on shapes that do not fit or a temperature not positive.
  """
  on = _on(mask, log_ratio)
  advantages = _advantages(advantages, on, log_ratio.dtype)
  checks.check_number("temperature_pos", temperature_pos, low=0.0, low_open=True)
  checks.check_number("temperature_neg", temperature_neg, low=0.0, low_open=True)
  (log_ratio,) = checks.where_on(on, log_ratio)
  tau = jnp.where(advantages > 0, temperature_pos, temperature_neg).astype(log_ratio.dtype)
  gate = jax.nn.sigmoid(tau * (jnp.exp(log_ratio) - 1.0)) * (4.0 / tau)
  return jnp.where(on, gate * advantages, 0.0)


def vespo_weights(
    log_ratio: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> jax.Array:
  """VESPO's Gamma weight of each sequence's importance ratio, `[N]`, gradient stopped.

      log w_n = clip(sum_t m clip(l_{n,t}, -20, 20), log 1e-8, 20)
      phi(w_n) = exp(lambda + k log w_n - lambda w_n) = e^lambda w^k e^{-lambda w}

  with `(k, lambda) = (k_pos, lambda_pos)` where `A_n >= 0`, else `(k_neg, lambda_neg)`
  (`lambda` at least 1e-4); `phi(1) = 1`, and a non-finite `phi` counts as 0. Note the
  sequence ratio is the full product `pi(y) / pi_old(y)`, not GSPO's length-normalised one.
  VESPO: variational sequence-level soft policy optimization (2026), arXiv:2602.10693, as
  TRL's `loss_type="vespo"` computes it (its clamps included).

  Args:
    log_ratio: `[N, L]` token log ratios (`log_ratio(..., level="token")`).
    advantages: `[N]` advantages (only their sign is used).
    mask: `[N, L]` bool or 0/1 array.
    k_pos, lambda_pos, k_neg, lambda_neg: the Gamma shapes per advantage sign, `>= 0`.

  Returns:
    `[N]` weights (1 for a completion without tokens, whose ratio is 1).

  Raises:
    ValueError: at trace time, on shapes that do not fit or a shape parameter out of range.
  """
  on = _on(mask, log_ratio)
  n = on.shape[0]
  if checks.shape_of(advantages) != (n,):
    raise ValueError(f"advantages must have shape [N] = ({n},), got shape "
                     f"{checks.shape_of(advantages)}")
  for name, value in (("k_pos", k_pos), ("lambda_pos", lambda_pos), ("k_neg", k_neg),
                      ("lambda_neg", lambda_neg)):
    checks.check_number(name, value, low=0.0)
  advantages = _advantages(advantages, on, log_ratio.dtype)[:, 0]
  (log_ratio,) = checks.where_on(on, jax.lax.stop_gradient(log_ratio))
  total = jnp.sum(jnp.clip(log_ratio, -20.0, 20.0), axis=1)
  log_w = jnp.clip(total, math.log(1e-8), 20.0)
  nonneg = advantages >= 0
  k = jnp.where(nonneg, k_pos, k_neg).astype(log_w.dtype)
  lam = jnp.maximum(jnp.where(nonneg, lambda_pos, lambda_neg), 1e-4).astype(log_w.dtype)
  phi = jnp.exp(lam + k * log_w - lam * jnp.exp(log_w))
  return jnp.where(jnp.isfinite(phi), phi, 0.0)


def vespo_objective(
    log_probs: jax.Array,
    log_ratio: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    **shape,
) -> jax.Array:
  """VESPO: `o_{n,t} = sg(phi(w_n)) * A_n * log pi_{n,t}` (see `vespo_weights`).

  Args:
    log_probs: `[N, L]` log-probs under `pi` (the gradient flows through these only).
    log_ratio: `[N, L]` token log ratios.
    advantages: `[N]` advantages (gradient stopped).
    mask: `[N, L]` bool or 0/1 array.
    **shape: `k_pos`, `lambda_pos`, `k_neg`, `lambda_neg` of `vespo_weights`.

  Returns:
    `[N, L]` objectives, 0 at masked-out tokens.

  Raises:
    ValueError: as `vespo_weights`.
  """
  on = _on(mask, log_probs)
  checks.check_same_shape(log_probs=log_probs, log_ratio=log_ratio)
  phi = vespo_weights(log_ratio, advantages, mask, **shape)
  advantages = _advantages(advantages, on, log_probs.dtype)
  (log_probs,) = checks.where_on(on, log_probs)
  return jnp.where(on, phi[:, None] * advantages * log_probs, 0.0)


def gmpo_log_ratio(
    log_probs: jax.Array,
    old_log_probs: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.4,
    eps_high: float | None = None,
) -> jax.Array:
  """GMPO's log ratio: the mean over tokens of the sign-aware clipped token log ratios.

      c_{n,t} = clip(l_{n,t}, -eps_low, eps_high)        (a clip in log space)
      g_n = sum_t m * sgn(A_n) * min(sgn(A_n) l_{n,t}, sgn(A_n) c_{n,t}) / |y_n|

  so that `exp(g_n)` is the geometric mean over the sequence of the per-token clipped ratios
  PPO's `min` would pick (Zhao, Y. et al., 2025, Geometric-mean policy optimization,
  arXiv:2507.20673; their default range is `eps = 0.4`, i.e. `(e^-0.4, e^0.4)`). A token
  whose ratio is clipped drops out of the gradient; the others share it equally.

  Args:
    log_probs: `[N, L]` log-probs under `pi`.
    old_log_probs: `[N, L]` sampling log-probs (gradient stopped), or `None` (on-policy).
    advantages: `[N]` advantages (only their sign is used).
    mask: `[N, L]` bool or 0/1 array.
    eps_low: the lower clip range in log space, `>= 0`.
    eps_high: the upper one, `>= 0`; `None` means `eps_low`.

  Returns:
    `[N, L]`: `g_n` on each real token of sequence `n`, 0 at masked-out tokens.

  Raises:
    ValueError: at trace time, on shapes that do not fit or a clip range out of range.
  """
  token = log_ratio(log_probs, old_log_probs, mask, level="token")
  on = jnp.asarray(mask) != 0
  if checks.shape_of(advantages) != (on.shape[0],):
    raise ValueError(f"advantages must have shape [N] = ({on.shape[0]},), got shape "
                     f"{checks.shape_of(advantages)}")
  checks.check_number("eps_low", eps_low, low=0.0)
  if eps_high is not None:
    checks.check_number("eps_high", eps_high, low=0.0)
  high = eps_low if eps_high is None else eps_high
  sign = jnp.sign(_advantages(advantages, on, token.dtype))
  clipped = jnp.clip(token, -eps_low, high)
  chosen = sign * jnp.minimum(sign * token, sign * clipped)
  sequence = jnp.sum(jnp.where(on, chosen, 0.0), axis=1, keepdims=True) / _lengths(
      on, token.dtype)
  return jnp.where(on, jnp.broadcast_to(sequence, token.shape), 0.0)


def gmpo_objective(
    log_probs: jax.Array,
    old_log_probs: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.4,
    eps_high: float | None = None,
) -> jax.Array:
  """GMPO: `o_{n,t} = A_n * exp(g_n)` on every real token (`g_n` from `gmpo_log_ratio`).

  Aggregated with `"sequence_mean"` this is GMPO's objective `mean_n A_n exp(g_n)` (Zhao et
  al., 2025, arXiv:2507.20673).

  Args:
    log_probs, old_log_probs, advantages, mask, eps_low, eps_high: as `gmpo_log_ratio`.

  Returns:
    `[N, L]` objectives, 0 at masked-out tokens.

  Raises:
    ValueError: as `gmpo_log_ratio`.
  """
  g = gmpo_log_ratio(log_probs, old_log_probs, advantages, mask, eps_low=eps_low,
                     eps_high=eps_high)
  on = jnp.asarray(mask) != 0
  advantages = _advantages(advantages, on, g.dtype)
  return jnp.where(on, jnp.exp(g) * advantages, 0.0)
