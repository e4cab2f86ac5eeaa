"""XLA:CPU settings: an optional compiler option, and a hang workaround.

XLA's CPU backend (jaxlib 0.10.2) hands reductions to YNNPACK, with about
10 us of fixed cost per call. That is slow for the tiny reductions of a cheap
policy-gradient step (a `log_softmax` over two actions, the scalar means of a
loss) and fast for large ones (PPO's minibatch updates ran 8-19% slower
without it). The library's own step therefore avoids tiny reductions instead
of switching YNNPACK off: small categoricals are normalised and sampled
without a reduction (`reinforce_jax/_src/categorical.py`, `policies.Categorical`),
and the step's per-transition statistics share one reduction. A plain
`jax.jit(train_step)` needs no option, and the CLI sets none.

`recommended_compiler_options()` still returns the per-compilation option that
keeps YNNPACK for matrix products only, for programs of your own made of many
tiny reductions. Measure before using it: on the CartPole presets it changed
REINFORCE by +2%, a2c by -5% and PPO by +12% (time per step).
`benchmarks/throughput.py` reports it beside the plain path:

    step = jax.jit(train_step, compiler_options=reinforce_jax.recommended_compiler_options())

A hang of XLA:CPU in jaxlib 0.10, and what the library does about it.
Some vmapped programs never finished: every XLA worker idle, the caller
waiting. `jax.jit(jax.vmap(make_train(...)))` over 24 a2c seeds on CartPole hung
in 4 launches of 4 on a 2-core machine. Native stacks of the hung process
showed the cause: two LAPACK `sorgqr` calls (the QR behind flax's orthogonal
initialiser, batched by `vmap`) running at once, each in
`jax::ParallelBatchMap` blocking an intra-op worker until its pieces finish on
the same pool, with no worker left to run them. The library's policies now
initialise with `reinforce_jax.xla.initializers.orthogonal` (the same matrices,
by Gram-Schmidt in plain XLA operations), so its training programs contain no
LAPACK call, and the same launches finished 4 of 4.

The earlier workaround, `--xla_cpu_enable_concurrency_optimized_scheduler=false`
in `XLA_FLAGS`, is no longer applied on import: it cost a small train step
15-20% (the plain bandit step went from about 1.1x to 1.4x the hand-written
fused loop). `avoid_cpu_deadlock()` still applies it, for programs of your own
with several LAPACK calls (a flax module with `nn.initializers.orthogonal`, a
Cholesky in a policy); `make_train_step` warns (`CpuDeadlockWarning`) when the
policy it is given has such calls and the flag is not set.
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.extend
import jax.numpy as jnp

__all__ = [
    "avoid_cpu_deadlock",
    "CpuDeadlockWarning",
    "deadlock_workaround_missing",
    "default_cache_dir",
    "lapack_primitives",
    "recommended_compiler_options",
    "use_compilation_cache",
    "warn_if_lapack_can_deadlock",
]

_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def _accepted(items: tuple[tuple[str, str], ...]) -> bool:
  try:
    jax.jit(jnp.sum, compiler_options=dict(items)).lower(jnp.zeros(3)).compile()
  except Exception:  # an unknown option or value: this jaxlib has no such flag
    return False
  return True


def recommended_compiler_options() -> dict[str, str]:
  """Options for `jax.jit(..., compiler_options=...)` on JAX's default backend.

  Returns the CPU options above where this jaxlib accepts them (checked once by
  compiling a tiny function), and `{}` on other backends or other jaxlibs, so
  the result can always be passed to `jax.jit`.
  """
  if jax.default_backend() != "cpu":
    return {}
  items = tuple(sorted(_CPU_OPTIONS.items()))
  return dict(items) if _accepted(items) else {}


_DEADLOCK_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def avoid_cpu_deadlock() -> bool:
  """Adds `--xla_cpu_enable_concurrency_optimized_scheduler=false` to `XLA_FLAGS`.

  Call it before the first JAX computation of the process. It does nothing
  (and returns False) once JAX's backends have started, if `XLA_FLAGS` already
  sets that flag, or on a jaxlib other than 0.10.x, where the hang was seen
  and the flag is known to exist (XLA aborts on a flag it does not know).

  Returns:
    Whether the flag was added.
  """
  import jaxlib
  from jax._src import xla_bridge

  flags = os.environ.get("XLA_FLAGS", "")
  if (not jaxlib.__version__.startswith("0.10.") or _DEADLOCK_FLAG in flags
      or xla_bridge.backends_are_initialized()):
    return False
  os.environ["XLA_FLAGS"] = f"{flags} --{_DEADLOCK_FLAG}=false".strip()
  return True


class CpuDeadlockWarning(RuntimeWarning):
  """A program with LAPACK calls, on XLA:CPU of jaxlib 0.10 without the hang workaround."""


# Primitives that XLA:CPU lowers to LAPACK custom calls (jax/_src/lax/linalg.py).
LAPACK_PRIMITIVES = frozenset({
    "cholesky", "eig", "eigh", "geqp3", "geqrf", "hessenberg", "householder_product", "lu",
    "qr", "schur", "svd", "triangular_solve", "tridiagonal", "tridiagonal_solve"})


def _subjaxprs(value):
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _subjaxprs(item)


def lapack_primitives(fn, *args) -> frozenset[str]:
  """Names of the LAPACK-backed primitives in `fn(*args)`'s jaxpr (sub-jaxprs included).

  `args` may be arrays, tracers or `jax.ShapeDtypeStruct`s: only shapes and dtypes are used.
  """
  specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
                       if not isinstance(x, jax.ShapeDtypeStruct) else x, args)
  found, todo = set(), [jax.make_jaxpr(fn)(*specs).jaxpr]
  while todo:
    for eqn in todo.pop().eqns:
      if eqn.primitive.name in LAPACK_PRIMITIVES:
        found.add(eqn.primitive.name)
      for value in eqn.params.values():
        todo.extend(_subjaxprs(value))
  return frozenset(found)


def warn_if_lapack_can_deadlock(what: str, fn, *args) -> None:
  """Warns (`CpuDeadlockWarning`) if `fn(*args)` calls LAPACK where XLA:CPU 0.10 can hang on it."""
  if not deadlock_workaround_missing():
    return
  found = lapack_primitives(fn, *args)
  if found:
    warnings.warn(
        f"{what} calls LAPACK ({', '.join(sorted(found))}); on XLA:CPU of jaxlib 0.10 two "
        "such calls running at once can hang the program (seen under jax.vmap). Use "
        "reinforce_jax.xla.initializers.orthogonal instead of flax's orthogonal initialiser, or "
        "call reinforce_jax.avoid_cpu_deadlock() before the first JAX computation",
        CpuDeadlockWarning, stacklevel=3)


def deadlock_workaround_missing() -> bool:
  """Whether this process runs XLA:CPU of jaxlib 0.10.x without `avoid_cpu_deadlock`'s flag."""
  import jaxlib

  return (jax.default_backend() == "cpu" and jaxlib.__version__.startswith("0.10.")
          and _DEADLOCK_FLAG not in os.environ.get("XLA_FLAGS", ""))


CACHE_ENV = "REINFORCE_JAX_CACHE_DIR"


def default_cache_dir() -> str | None:
  """`$REINFORCE_JAX_CACHE_DIR` (`none` turns the cache off), else `~/.cache/reinforce_jax/xla`."""
  value = os.environ.get(CACHE_ENV)
  if value is not None:
    return None if value.strip().lower() in ("", "none") else value
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "reinforce_jax", "xla")


def use_compilation_cache(directory: str | os.PathLike | None) -> bool:
  """Points JAX's persistent compilation cache at `directory` (None: leave it off).

  A later process that compiles the same program (same shapes, config, JAX
  version and XLA flags: JAX keys the cache on all of them) loads it from
  disk instead of compiling: the CLI's CartPole run starts about 2 s sooner.
  Programs that compile in under 0.2 s are not stored. Call it before the
  first compilation; JAX's own `jax_compilation_cache_dir` set by the user wins,
  and `jax_enable_compilation_cache=False` keeps it off.

  Returns:
    Whether the cache was turned on.
  """
  if (directory is None or jax.config.jax_compilation_cache_dir
      or not jax.config.jax_enable_compilation_cache):
    return False
  jax.config.update("jax_compilation_cache_dir", os.fspath(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  return True
