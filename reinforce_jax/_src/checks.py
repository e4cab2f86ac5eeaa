"""Trace-time argument checks shared by the estimators.

Shapes are static under `jax.jit`, so these checks run once while tracing and
cost nothing in the compiled program.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax._src.scalars import is_real_dtype


def shape_of(x) -> tuple[int, ...]:
  return tuple(jnp.shape(x))


def check_same_shape(**arrays) -> None:
  """Raises `ValueError` naming every shape unless all shapes are equal."""
  shapes = {name: shape_of(x) for name, x in arrays.items()}
  if len(set(shapes.values())) > 1:
    described = ", ".join(f"{name} has shape {s}" for name, s in shapes.items())
    raise ValueError(f"shapes must match exactly (no broadcasting): {described}")


def check_floating(**arrays) -> None:
  for name, x in arrays.items():
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise ValueError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}")


def check_rank_at_least(name: str, x, rank: int) -> None:
  if jnp.ndim(x) < rank:
    raise ValueError(f"{name} must have rank >= {rank}, got shape {shape_of(x)}")


def check_number(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
                  low_open: bool = False, high_open: bool = False, dtype: Any = None) -> None:
  """Raises `ValueError` unless `value` is real and every entry is finite and in range.

  With `dtype` (e.g. `jnp.float32`), the value must also stay finite and in range once cast
  to it (1e300 is finite in Python, inf in float32). A traced value (under `jit`, `vmap`,
  `grad`: `algorithms.traced` makes traced discounts in sweeps) is unknown at trace time and
  passes unchecked.
  """
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value)):
    return
  real = isinstance(value, numbers.Real | np.ndarray | jax.Array) and not isinstance(
      value, bool | np.bool_)
  if real:
    real = is_real_dtype(jnp.result_type(value))
  if not real:
    raise ValueError(f"{name} must be a real number, got {value!r}")
  values = np.asarray(value).astype(np.float64)

  def fits(v):
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    return bool(np.all(np.isfinite(v) & above & below))

  note = ""
  ok = fits(values)
  if ok and dtype is not None:
    with np.errstate(over="ignore", under="ignore"):
      cast = values.astype(dtype).astype(np.float64)
    ok = fits(cast)
    shown = f"{float(cast):g}" if cast.ndim == 0 else "out of range"
    note = f" ({shown} in {np.dtype(dtype).name}, the dtype used)"
  if not ok:
    left = "(" if low_open or low == -math.inf else "["
    right = ")" if high_open or high == math.inf else "]"
    interval = f"{left}{low:g}, {high:g}{right}"
    bound = "" if (low, high) == (-math.inf, math.inf) else f" and in {interval}"
    raise ValueError(f"{name} must be finite{bound}, got {value!r}{note}")


def is_concrete(value: Any) -> bool:
  """Whether `value` holds no tracer, so its numbers can be read at trace time."""
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def check_mask(name: str, mask: Any) -> None:
  """Raises `ValueError` unless `mask` is bool, or real and (where concrete) only 0 and 1.

  A mask selects entries; it must not scale them (real weights have their own argument). A
  traced mask cannot be read and passes the value check.
  """
  kind = jnp.result_type(mask)
  if kind == jnp.bool_:
    return
  if not is_real_dtype(kind):
    raise ValueError(f"{name} must be a bool or 0/1 array, got dtype {kind}")
  if not is_concrete(mask):
    return
  values = np.asarray(mask)
  bad = values[(values != 0) & (values != 1)]
  if bad.size:
    raise ValueError(
        f"{name} must hold only 0 and 1 (or be bool), got {bad.size} other value(s) such as "
        f"{bad.flat[0].item()!r}; pass real non-negative weights as `weights`")


def check_tokens(mask: Any, **arrays) -> jax.Array:
  """Checks `[B, L]` float arrays against a 0/1 `mask` of their shape; returns it as bool."""
  check_floating(**arrays)
  check_same_shape(**arrays, mask=mask)
  name, first = next(iter(arrays.items()))
  if jnp.ndim(first) != 2:
    raise ValueError(f"{name} must have shape [B, L], got shape {shape_of(first)}")
  check_mask("mask", mask)
  return jnp.asarray(mask) != 0


def check_sequence_advantages(log_probs: Any, advantages: Any, mask: Any,
                              rows: str = "N") -> None:
  """Checks `[rows, L]` float `log_probs`, a `mask` of their shape and one advantage per row."""
  check_floating(log_probs=log_probs, advantages=advantages)
  if jnp.ndim(log_probs) != 2:
    raise ValueError(
        f"log_probs must have shape [{rows}, L], got shape {shape_of(log_probs)}")
  check_same_shape(log_probs=log_probs, mask=mask)
  if shape_of(advantages) != shape_of(log_probs)[:1]:
    raise ValueError(
        f"advantages must have shape [{rows}] = {shape_of(log_probs)[:1]} for log_probs of "
        f"shape {shape_of(log_probs)}, got shape {shape_of(advantages)}")


def where_on(on: jax.Array, *arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Each array with its entries off `on` replaced by 0, before any arithmetic touches them.

  Masked entries may hold anything (nan, +-inf: padding, finished episodes). `0 * nan` is nan,
  so a product with the mask is not enough; and a `where` applied only to the result still
  lets nan through the gradient (its cotangent 0 is multiplied by the nan operand). Replacing
  the inputs first (the "double where") makes both the value and the gradient at those entries
  exactly 0.
  """
  return tuple(jnp.where(on, x, jnp.zeros((), jnp.result_type(x))) for x in arrays)


def check_kept(name: str, value: Any, on: Any, **bounds) -> None:
  """`check_number` on the entries of `value` that the bool array `on` keeps (a scalar: all).

  Entries that `on` drops may hold anything (they never reach a result). With a traced `on`,
  which entries count is unknown, and an array `value` is not checked.
  """
  if jnp.ndim(value) == 0:
    check_number(name, value, **bounds)
  elif is_concrete(on) and is_concrete(value):
    check_number(name, np.asarray(value)[np.asarray(on)], **bounds)
