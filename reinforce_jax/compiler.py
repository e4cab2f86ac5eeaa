"""XLA compiler options that make small policy-gradient programs fast on a CPU.

XLA's CPU backend (seen with jaxlib 0.10.2) hands reductions to YNNPACK, which
is slow for the tiny axes of a policy-gradient step (the action axis, small
batches): a `log_softmax` over `[4096, 2]` logits took about 100 us. Keeping
YNNPACK for matrix products only halved the bandit's train step at 4096
environments (488 -> 251 us; the hand-written reference loop 290 -> 221 us;
`benchmarks/throughput.py --compiler-options default` vs `recommended`).

The option is per compilation, so it changes nothing else in the process:

    step = jax.jit(train_step, donate_argnums=0,
                   compiler_options=reinforce_jax.recommended_compiler_options())
"""

from __future__ import annotations

import functools

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
