"""XLA:CPU settings: an optional compiler option, and a hang workaround.

XLA's CPU backend (jaxlib 0.10.2) hands reductions to YNNPACK, with about
10 us of fixed cost per call. That is slow for the tiny reductions of a cheap
policy-gradient step (a `log_softmax` over two actions, the scalar means of a
loss) and fast for large ones (PPO's minibatch updates ran 8-19% slower
without it). The library's own step therefore avoids tiny reductions instead
of switching YNNPACK off: small categoricals are normalised and sampled
without a reduction (`reinforce_jax/_sampling.py`, `policies.Categorical`),
and the step's per-transition statistics share one reduction. A plain
`jax.jit(train_step)` needs no option, and the CLI sets none.

`recommended_compiler_options()` still returns the per-compilation option that
keeps YNNPACK for matrix products only, for programs of your own made of many
tiny reductions. Measure before using it: on the CartPole presets it changed
REINFORCE by +2%, a2c by -5% and PPO by +12% (time per step).
`benchmarks/throughput.py` reports it beside the plain path:

    step = jax.jit(train_step, compiler_options=reinforce_jax.recommended_compiler_options())

`avoid_cpu_deadlock()` works around a hang of XLA:CPU in jaxlib 0.10: some
vmapped programs never finish, every XLA worker thread idle and the caller
waiting for a result. A sweep of 24 a2c runs on CartPole hung in 8 launches of
12, `jax.jit(jax.vmap(make_train(...)))` over 24 a2c seeds in 4 of 4 (4 seeds:
0 of 3). With XLA's concurrency-optimised scheduler off they finished every
time. Re-checked after the step lost its tiny reductions: without the flag
`jax.jit(jax.vmap(make_train(...)))` over 24 a2c seeds still hung in 4 of 4
launches, and the same run as a `lax.scan` in 1 of 3. The flag is not free:
it makes the plain single-seed bandit step about 15-20% slower (0.93-0.95x vs
1.09-1.15x the hand-written fused loop, A/B of the same code on a loaded
machine), because small programs lose the scheduler's concurrency. A deadlock
is worse, so it stays until jaxlib fixes the hang. The setting is
process-wide (`XLA_FLAGS`, read when JAX starts its CPU backend), so
`import reinforce_jax` applies it only if no JAX computation has run yet, and
not at all with
`REINFORCE_JAX_KEEP_XLA_FLAGS=1`; the CLI, tests and benchmarks also call it.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

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
