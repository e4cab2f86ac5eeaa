"""Trace-time argument checks shared by the estimators.

Shapes are static under `jax.jit`, so these checks run once while tracing and
cost nothing in the compiled program.
"""

from __future__ import annotations

import jax.numpy as jnp


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
