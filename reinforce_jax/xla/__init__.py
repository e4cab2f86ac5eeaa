"""XLA tools the rest of the package runs on.

* `prng`: threefry keys that XLA:CPU runs fast (bit for bit JAX's numbers) and a fast
  uniform shuffle (`permutation`).
* `compiler`: an optional XLA:CPU compiler option, the persistent compilation cache, and
  the workaround for a LAPACK deadlock on XLA:CPU.
* `initializers`: weight initialisers made of plain XLA operations (no LAPACK call).

Imports: nothing else from the package.
"""

from reinforce_jax.xla import compiler, initializers, prng
from reinforce_jax.xla.compiler import avoid_cpu_deadlock, recommended_compiler_options

__all__ = [
    "avoid_cpu_deadlock",
    "compiler",
    "initializers",
    "prng",
    "recommended_compiler_options",
]
