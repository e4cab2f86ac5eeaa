"""Token aggregations: how a batch of per-token values `[N, L]` becomes one scalar loss.

A per-token objective `v_{n,t}` (a surrogate, a KL estimate, an entropy) over `N` completions
padded to `L` tokens is reduced with a mask `m` (1 on real tokens) by one of four rules, each a
choice of who counts and what divides:

* `"sequence_sum"`: `sum_{n,t} m v / R` (each completion's sum, averaged over rows): the
  REINFORCE estimator (Williams, 1992); LUSPO's rule (Liu et al., 2026, arXiv:2602.05261).
* `"token_mean"`: `sum_{n,t} m v / sum_{n,t} m` (DAPO; Yu et al., 2025, arXiv:2503.14476).
* `"sequence_mean"`: `sum_n (sum_t m v / |y_n|) / R` (GRPO as published; Shao et al., 2024,
  arXiv:2402.03300).
* `"constant"`: `sum_{n,t} m v / (R * L_max)` (Dr. GRPO; Liu et al., 2025, arXiv:2503.20783),
  `L_max` the padded length `L` or a fixed `max_length`.

`R`, the row count, is `N` (`rows="batch"`, TRL's rule) or the number of completions with at
least one real token (`rows="nonempty"`, tunix's `non_zero_rows`), at least 1. Which of these
keep the score-function gradient unbiased is measured in `benchmarks/sequence_audit.py`
(see `reinforce_jax.sequence.losses`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks

__all__ = [
    "MODES",
    "ROW_COUNTS",
    "aggregate",
    "row_count",
]

MODES = ("sequence_sum", "token_mean", "sequence_mean", "constant")
ROW_COUNTS = ("batch", "nonempty")

AggregationFn = Callable[[jax.Array, jax.Array], jax.Array]


def row_count(mask: jax.Array, *, rows: str = "batch") -> jax.Array:
  """The number `R` of rows an aggregation divides by.

  Args:
    mask: `[N, L]` bool or 0/1 array.
    rows: `"batch"` (`R = N`) or `"nonempty"` (`R = max(#{n : sum_t m_{n,t} > 0}, 1)`,
      tunix's rule: completions without a token do not count).

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if `rows` is unknown or `mask` is not rank 2.
  """
  if rows not in ROW_COUNTS:
    raise ValueError(f"rows must be one of {ROW_COUNTS}, got {rows!r}")
  if jnp.ndim(mask) != 2:
    raise ValueError(f"mask must have shape [N, L], got shape {checks.shape_of(mask)}")
  if rows == "batch":
    return jnp.asarray(jnp.shape(mask)[0], jnp.float32)
  nonempty = jnp.sum(jnp.any(jnp.asarray(mask) != 0, axis=1))
  return jnp.maximum(nonempty, 1).astype(jnp.float32)


def aggregate(
    values: jax.Array,
    mask: jax.Array,
    *,
    mode: str | AggregationFn,
    rows: str = "batch",
    max_length: float | None = None,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Reduces per-token values `[N, L]` to a scalar, counting only tokens where `mask` is set.

  With `m` the mask, `w` the weights (1 without them), `|y_n| = sum_t m_{n,t}` and `R` the
  row count (`row_count(mask, rows=rows)`):

  * `"sequence_sum"`: `sum_{n,t} m w v / R`.
  * `"token_mean"`: `sum_{n,t} m w v / max(sum_{n,t} m, 1)` (`rows` does not enter).
  * `"sequence_mean"`: `sum_n (sum_t m w v / max(|y_n|, 1)) / R`.
  * `"constant"`: `sum_{n,t} m w v / (R * L_max)`, `L_max = max_length` or the padded `L`.

  The mask only selects tokens: the normalisers count tokens, and weights scale each token's
  value without changing them. Masked-out tokens (and tokens of weight 0) never reach the
  result or its gradient, whatever they hold (nan, +-inf): they are replaced by 0 before any
  arithmetic. An empty row (or batch) contributes 0 rather than 0/0.

  Args:
    values: `[N, L]` float array.
    mask: `[N, L]` bool or 0/1 array; 1 marks a real token.
    mode: one of `MODES`, or a function `(values, mask) -> scalar`, which gets `values` with
      the masked-out tokens set to 0 (and the weights applied).
    rows: `"batch"` or `"nonempty"`, see `row_count`.
    max_length: `"constant"`'s `L_max` (e.g. TRL's `max_completion_length`), a positive
      number; `None` means the padded length `L`.
    weights: optional `[N, L]` real non-negative per-token weights (gradient stopped).

  Returns:
    A float scalar.

  Raises:
    ValueError: at trace time, if the shapes differ or are not rank 2, a name is unknown, or
      `max_length` is not a positive number; where they are concrete (not traced), if `mask`
      holds values other than 0 and 1, or `weights` on real tokens are negative or not finite.
  """
  checks.check_floating(values=values)
  checks.check_same_shape(values=values, mask=mask)
  if jnp.ndim(values) != 2:
    raise ValueError(f"values must have shape [N, L], got shape {checks.shape_of(values)}")
  if not callable(mode) and mode not in MODES:
    raise ValueError(f"mode must be one of {MODES} or a function, got {mode!r}")
  if rows not in ROW_COUNTS:
    raise ValueError(f"rows must be one of {ROW_COUNTS}, got {rows!r}")
  if max_length is not None:
    checks.check_number("max_length", max_length, low=0.0, low_open=True)
  checks.check_mask("mask", mask)
  on = jnp.asarray(mask) != 0
  live = on
  if weights is not None:
    checks.check_same_shape(values=values, weights=weights)
    checks.check_kept("weights", weights, on, low=0.0)
    weights = jax.lax.stop_gradient(jnp.asarray(weights))
    live = on & (weights != 0)
    # `where` before the product: a masked-out token may hold nan, and 0 * nan is nan.
    values, weights = checks.where_on(live, values, weights.astype(values.dtype))
    values = values * weights
  else:
    (values,) = checks.where_on(live, values)
  if callable(mode):
    return mode(values, mask)
  tokens = on.astype(values.dtype)
  length = values.shape[1] if max_length is None else max_length
  count = row_count(mask, rows=rows).astype(values.dtype)
  if mode == "sequence_sum":
    return jnp.sum(values) / count
  if mode == "constant":
    return jnp.sum(values) / (count * length)
  if mode == "token_mean":
    return jnp.sum(values) / jnp.maximum(jnp.sum(tokens), 1.0)
  per_sequence = jnp.sum(values, axis=1) / jnp.maximum(jnp.sum(tokens, axis=1), 1.0)
  return jnp.sum(per_sequence) / count
