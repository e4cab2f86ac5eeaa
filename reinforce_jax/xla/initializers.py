"""Weight initialisers built from plain XLA operations (no LAPACK call).

`orthogonal(scale)` is a drop-in for `flax.linen.initializers.orthogonal`
(`jax.nn.initializers.orthogonal`): the same Haar-distributed matrix for the
same key, to float32 rounding, but computed by Gram-Schmidt instead of
`jnp.linalg.qr`.

Why it exists: on XLA:CPU (jaxlib 0.10) a QR is a LAPACK custom call whose
handler splits its batch over XLA's intra-op thread pool and blocks a worker
until the pieces finish. When two such calls run at once (the layers of a
network are independent, so the executor starts them together) every worker
of a small pool can be blocked waiting for work that no free worker picks up.
`jax.jit(jax.vmap(make_train(...)))` over 24 a2c seeds hung this way on a
2-core machine (native stacks: two `lapack_sorgqr_ffi` threads in
`jax::ParallelBatchMap` -> `BlockingCounter::Wait`, every other worker idle).
The library's policies therefore initialise with the function here, and their
programs contain no custom call at all (`tests/test_initializers.py`).

The Gram-Schmidt is done twice per column ("CGS2"), which keeps the columns
orthonormal to float rounding for the Gaussian matrices an initialiser draws.
Orthogonalising the columns of a Gaussian `z` in order gives the `Q` of
`z = QR` with a positive diagonal of `R`: the unique QR factor that
`jax.random.orthogonal` returns after its sign correction, so the two agree.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "orthogonal",
    "random_orthogonal",
]


def _orthonormal_columns(z: jax.Array) -> jax.Array:
  """`Q` of `z = QR` (`z` is `[p, k]`, `p >= k`) with `diag(R) > 0`, by CGS2."""
  k = z.shape[1]

  def column(j, q):
    v = jax.lax.dynamic_index_in_dim(z, j, axis=1, keepdims=False)
    # q's columns j.. are still zero, so they take nothing out of v.
    v = v - q @ (q.T @ v)
    v = v - q @ (q.T @ v)
    v = v * jax.lax.rsqrt(jnp.sum(v * v))
    return jax.lax.dynamic_update_index_in_dim(q, v, j, axis=1)

  return jax.lax.fori_loop(0, k, column, jnp.zeros_like(z))


def random_orthogonal(key: jax.Array, n: int, m: int, dtype=jnp.float32) -> jax.Array:
  """A `[n, m]` matrix with orthonormal columns (`n >= m`) or rows (`n < m`), Haar-distributed.

  The same draw as `jax.random.orthogonal(key, n, (), dtype, m)`.
  """
  z = jax.random.normal(key, (max(n, m), min(n, m)), dtype)
  q = _orthonormal_columns(z)
  return q.T if n < m else q


def orthogonal(scale: float = 1.0, column_axis: int = -1, dtype=jnp.float32):
  """An initialiser `init(key, shape, dtype)` of (scaled) orthogonal matrices.

  Same signature and same values as `flax.linen.initializers.orthogonal`: the
  parameter is flattened to `[prod(other axes), shape[column_axis]]`, whose
  columns (or rows, if there are fewer rows) are orthonormal, times `scale`.
  """
  def init(key: jax.Array, shape, dtype=dtype, out_sharding=None) -> jax.Array:
    if out_sharding is not None:
      raise NotImplementedError("orthogonal: out_sharding is not supported")
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
      raise ValueError(f"orthogonal initialisation needs a shape of at least 2 axes, got {shape}")
    if any(d == 0 for d in shape):
      return jnp.zeros(shape, dtype)
    n_cols = shape[column_axis]
    n_rows = math.prod(shape) // n_cols
    q = random_orthogonal(key, n_rows, n_cols, dtype)
    q = jnp.reshape(q, tuple(np.delete(shape, column_axis)) + (n_cols,))
    return jnp.asarray(scale, dtype) * jnp.moveaxis(q, -1, column_axis)

  return init
