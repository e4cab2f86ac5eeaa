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
                  low_open: bool = False, high_open: bool = False) -> None:
  """Raises `ValueError` unless `value` is real and every entry is finite and in range.

  A traced value (under `jit`, `vmap`, `grad`: `algorithms.traced` makes traced
  discounts in sweeps) is unknown at trace time and passes unchecked.
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
  above = values > low if low_open else values >= low
  below = values < high if high_open else values <= high
  if not np.all(np.isfinite(values) & above & below):
    left = "(" if low_open or low == -math.inf else "["
    right = ")" if high_open or high == math.inf else "]"
    interval = f"{left}{low:g}, {high:g}{right}"
    bound = "" if (low, high) == (-math.inf, math.inf) else f" and in {interval}"
    raise ValueError(f"{name} must be finite{bound}, got {value!r}")
