"""`rj.check_estimator` on discrete problems: every estimator against the exact gradient.

Bernoulli problems (scalar, three logits through a params pytree, a 2x2 batch
under `Independent`) for the score function (RLOO), ARM, DisARM, REBAR, RELAX
(untrained control variates: at initialisation RELAX equals REBAR) and the
unordered-set estimator (stochastic beam search over the joint outcomes; not on
the scalar, whose 2 outcomes are fewer than the set size), and categorical ones
(a 4-armed bandit, 6 categories with a non-linear f) for the score function
(RLOO), ARM and DisARM (on the stick-breaking binary code) and the unordered
set. Every estimator gets `--evaluations` evaluations of f per gradient (ARM
and DisARM: half as many antithetic pairs, two evaluations each; the unordered
set: a set of that size). The exact gradient is `rj.exact_gradient`
(enumeration); reported per problem x estimator: the largest |bias| in
standard errors, the variance of one gradient summed over coordinates, the
smallest signal-to-noise ratio over coordinates and the time per jitted
gradient.

    python benchmarks/discrete_estimators.py [--replicates 4000] [--evaluations 4]
"""

from __future__ import annotations

import argparse
import functools

import common
import distrax
import jax
import jax.numpy as jnp

import reinforce_jax as rj

W3 = jnp.array([[0.5, -1.0, 0.3], [0.2, 0.1, -0.7], [1.0, 0.4, 0.2]])


def _float(b):
  return jnp.asarray(b).astype(jnp.float32)


BERNOULLI = {
    "bernoulli_scalar": (lambda b: (_float(b) - 0.45) ** 2,
                         lambda th: distrax.Bernoulli(logits=th), jnp.float32(0.3)),
    "bernoulli_pytree": (
        lambda b: jnp.sin(_float(b) @ W3 @ _float(b) + 0.3 * _float(b).sum()),
        lambda p: distrax.Bernoulli(logits=jnp.concatenate([p["a"], p["c"][None]])),
        {"a": jnp.array([0.3, -0.5]), "c": jnp.float32(1.2)}),
    "bernoulli_2x2": (
        lambda b: (jnp.sum(_float(b) * jnp.array([[1.0, -0.5], [2.0, 0.7]])) - 1.5) ** 2
        + 3.0 * _float(b)[0, 0] * _float(b)[1, 1],
        lambda th: distrax.Independent(distrax.Bernoulli(logits=th), 2),
        jnp.array([[0.2, -1.0], [0.8, 0.0]])),
}
CATEGORICAL = {
    "bandit_4": (lambda a: jnp.array([6.0, 8.0, 3.0, 5.5])[a],
                 lambda th: distrax.Categorical(logits=th), jnp.array([0.5, -0.3, 1.0, 0.0])),
    "nonlinear_6": (lambda a: jnp.sin(1.3 * a) * a, lambda th: distrax.Categorical(logits=th),
                    jnp.array([0.1, 0.9, -0.4, 0.3, 1.5, -1.0])),
}


def _logit_shape(params):
  if isinstance(params, dict):
    return (3,)
  return tuple(jnp.shape(params))


def _outcomes(build, params):
  """How many (joint) outcomes `build(params)` has: 2^L bits, or the categories."""
  dist = build(params)
  if isinstance(dist, distrax.Categorical):
    return dist.num_categories
  while isinstance(dist, distrax.Independent):
    dist = dist.distribution
  return 2 ** dist.logits.size


def estimators_for(problem, f, build, params, evaluations):
  out = {"score_function+rloo": functools.partial(rj.grad_estimate, num_samples=evaluations,
                                                  baseline="rloo")}
  for name in ("arm", "disarm"):
    out[name] = functools.partial(rj.grad_estimate, num_samples=max(evaluations // 2, 1),
                                  estimator=name)
  if problem in BERNOULLI:
    out["rebar"] = functools.partial(rj.grad_estimate, num_samples=evaluations,
                                     estimator="rebar")
    cv = rj.relax_control_variate(f)
    phi = cv.init(jax.random.key(0), _logit_shape(params))
    out["relax (untrained)"] = functools.partial(
        rj.grad_estimate, num_samples=evaluations, estimator="relax", control_variate=cv,
        cv_params=phi)
  if evaluations <= min(_outcomes(build, params), rj.estimators.unordered_set.MAX_SET_SIZE):
    out["unordered_set"] = functools.partial(rj.grad_estimate, num_samples=evaluations,
                                             estimator="unordered_set")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--replicates", type=int, default=4000)
  parser.add_argument("--evaluations", type=int, default=4)
  parser.add_argument("--out")
  args = parser.parse_args()
  rows = []
  print(f"{'problem':18} {'estimator':20} {'max|bias|/SE':>12} {'variance':>11} {'min SNR':>8} "
        f"{'us/grad':>8}")
  for problem, (f, build, params) in {**BERNOULLI, **CATEGORICAL}.items():
    for name, estimate in estimators_for(problem, f, build, params, args.evaluations).items():
      check = rj.check_estimator(estimate, f, build, params, jax.random.key(0),
                                 replicates=args.replicates, timing_calls=20)
      variance = sum(float(jnp.sum(v)) for v in jax.tree.leaves(check.variance))
      snr = min(float(jnp.min(s)) for s in jax.tree.leaves(check.snr))
      row = {"problem": problem, "estimator": name, "evaluations_of_f": args.evaluations,
             "max_abs_bias_in_stderr": check.max_abs_bias_in_stderr, "variance": variance,
             "min_snr": snr, "us_per_gradient": check.seconds_per_gradient * 1e6}
      rows.append(row)
      print(f"{problem:18} {name:20} {row['max_abs_bias_in_stderr']:>12.2f} {variance:>11.4g} "
            f"{snr:>8.3g} {row['us_per_gradient']:>8.0f}", flush=True)
  worst = max(r["max_abs_bias_in_stderr"] for r in rows)
  print(f"largest |bias| / SE over all rows: {worst:.2f}")
  path = common.write("discrete_estimators", {"replicates": args.replicates,
                                              "evaluations": args.evaluations,
                                              "rows": rows, "max_abs_bias_in_stderr": worst},
                      args.out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
