"""Small ops under plain `jax.jit` vs `recommended_compiler_options()`, on one device.

Why the library avoids tiny reductions: on XLA:CPU (jaxlib 0.10) every
reduction goes to YNNPACK at a fixed cost per call. Each op here works on the
`[4096, 2]` logits of the bandit's step; the JSON records the median time per
call and how many YNNPACK fusions the compiled program has.

    python benchmarks/ops_cpu.py [--rows 4096] [--cols 2]
"""

from __future__ import annotations

import argparse

import common
import jax
import jax.numpy as jnp

import reinforce_jax as rj
from reinforce_jax._src import categorical


def ops():
  return {
      "jax.nn.log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
      "categorical.log_softmax": categorical.log_softmax,
      "sum over all": jnp.sum,
      "sum over rows (a bias gradient)": lambda x: jnp.sum(x, axis=0),
      "sum over the 2-wide axis": lambda x: jnp.sum(x, axis=-1),
      "3 separate scalar sums": lambda x: (jnp.sum(x[:, 0]), jnp.sum(x[:, 1]),
                                           jnp.sum(x[:, 0] * x[:, 1])),
      "categorical.column_sums of 3": lambda x: categorical.column_sums(
          {"a": x[:, 0], "b": x[:, 1], "c": x[:, 0] * x[:, 1]}),
      "elementwise x * 2 (no reduction)": lambda x: x * 2.0,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=4096)
  parser.add_argument("--cols", type=int, default=2)
  parser.add_argument("--calls", type=int, default=300)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--out")
  args = parser.parse_args()
  x = jax.random.normal(jax.random.key(0), (args.rows, args.cols))
  variants = {"plain": {}, "recommended": rj.recommended_compiler_options()}
  candidates, fusions = {}, {}
  for name, fn in ops().items():
    for variant, options in variants.items():
      compiled = jax.jit(fn, compiler_options=options).lower(x).compile()
      fusions[f"{name} | {variant}"] = compiled.as_text().count('"__ynn_fusion"')
      common.block(compiled(x))

      def measure(compiled=compiled):
        out = None
        start = common.time.perf_counter()
        for _ in range(args.calls):
          out = compiled(x)
        common.block(out)
        return (common.time.perf_counter() - start) / args.calls

      candidates[f"{name} | {variant}"] = measure
  timings = common.interleaved_medians(candidates, args.rounds)
  print(f"{'op':40} {'plain us':>9} {'ynn':>4} {'recommended us':>15} {'ynn':>4}")
  for name in ops():
    plain, tuned = f"{name} | plain", f"{name} | recommended"
    print(f"{name:40} {timings[plain]['median_s'] * 1e6:>9.1f} {fusions[plain]:>4} "
          f"{timings[tuned]['median_s'] * 1e6:>15.1f} {fusions[tuned]:>4}")
  path = common.write("ops_cpu", {"shape": [args.rows, args.cols], "timings": timings,
                                  "ynn_fusions": fusions,
                                  "recommended": variants["recommended"]}, args.out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
