"""Predicates on numbers and dtypes that do not import JAX (the command line uses them)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def is_concrete_number(value: Any) -> bool:
  """A Python or NumPy real scalar (not an array, a tracer or a placeholder)."""
  if isinstance(value, bool | np.bool_):
    return False
  return isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.ndim == 0)



def is_real_dtype(kind) -> bool:
  """Whether `kind` is an integer or floating dtype, bfloat16 and other ml_dtypes included."""
  kind = np.dtype(kind)
  if np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating):
    return True
  try:
    import ml_dtypes  # JAX's own dependency: bfloat16, float8_*

    ml_dtypes.finfo(kind)
  except (ImportError, ValueError, TypeError):
    return False
  return True
