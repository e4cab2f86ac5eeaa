"""Bias, variance and time per gradient of each estimator on closed-form problems.

In the spirit of the tables of Mohamed et al. (2020): for each problem x
estimator x number of samples N (1, 10, 100, 1000), `--replicates` independent
gradient estimates give the bias (mean minus the exact gradient, in units of its
standard error) and the variance of one N-sample estimate; the time is the
median of jitted calls. Problems: a Gaussian with f = (x - k)^2 and with
f = cos(omega x), a Bernoulli(sigmoid(theta)) with f = (b - 0.45)^2, and a
softmax bandit (f = r[a]).

    python benchmarks/estimators.py [--replicates 400]
"""

from __future__ import annotations

import argparse
import time

import common
import distrax
import jax
import jax.numpy as jnp
import numpy as np

import reinforce_jax as rj


def problems():
  mu, sigma, k, omega = 0.6, 0.8, 0.2, 1.7
  damp = np.exp(-(omega**2) * sigma**2 / 2)
  gaussian = {"mu": jnp.float32(mu), "log_sigma": jnp.log(jnp.float32(sigma))}
  build_gaussian = lambda p: distrax.Normal(p["mu"], jnp.exp(p["log_sigma"]))  # noqa: E731
  theta, t = 0.3, 0.45
  p = 1 / (1 + np.exp(-theta))
  logits = jnp.array([0.5, -0.3, 1.0, 0.0])
  rewards = jnp.array([6.0, 8.0, 3.0, 5.5])
  pi = jax.nn.softmax(logits)
  return {
      "gaussian_quadratic": (lambda x: (x - k) ** 2, build_gaussian, gaussian,
                             np.array([2 * sigma**2, 2 * (mu - k)]), True),
      "gaussian_cosine": (lambda x: jnp.cos(omega * x), build_gaussian, gaussian,
                          np.array([-(omega**2) * sigma**2 * np.cos(omega * mu) * damp,
                                    -omega * np.sin(omega * mu) * damp]), True),
      "bernoulli": (lambda b: (b - t) ** 2, lambda th: distrax.Bernoulli(logits=th),
                    jnp.float32(theta), np.array([p * (1 - p) * (1 - 2 * t)]), False),
      "softmax_bandit": (lambda a: rewards[a], lambda th: distrax.Categorical(logits=th),
                         logits, np.asarray(pi * (rewards - jnp.dot(pi, rewards))), False),
  }


ESTIMATORS = [("score_function", None), ("score_function", "rloo"),
              ("score_function", "optimal"), ("pathwise", None), ("measure_valued", None)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--replicates", type=int, default=400)
  parser.add_argument("--samples", default="1,10,100,1000")
  parser.add_argument("--out")
  args = parser.parse_args()
  rows = []
  print(f"{'problem':20} {'estimator':24} {'N':>5} {'bias/SE':>8} {'variance':>12} {'us/grad':>9}")
  for name, (f, build, params, exact, continuous) in problems().items():
    for estimator, baseline in ESTIMATORS:
      if estimator != "score_function" and not continuous:
        continue
      for n in (int(s) for s in args.samples.split(",")):
        if baseline == "rloo" and n < 2:
          continue

        def one(key, f=f, build=build, params=params, n=n, estimator=estimator,
                baseline=baseline):
          g = rj.grad_estimate(f, build, params, key, num_samples=n, estimator=estimator,
                               baseline=baseline)
          return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(g)])

        keys = jax.random.split(jax.random.key(0), args.replicates)
        estimates = np.asarray(jax.jit(jax.vmap(one))(keys))
        single = jax.jit(one)
        common.block(single(keys[0]))
        times = []
        for i in range(20):
          start = time.perf_counter()
          common.block(single(keys[i]))
          times.append(time.perf_counter() - start)
        stderr = estimates.std(0) / np.sqrt(args.replicates) + 1e-12
        row = {
            "problem": name, "estimator": estimator + (f"+{baseline}" if baseline else ""),
            "num_samples": n, "bias": (estimates.mean(0) - exact).tolist(),
            "bias_in_stderr": float(np.max(np.abs(estimates.mean(0) - exact) / stderr)),
            "variance": float(estimates.var(0).sum()),
            "us_per_gradient": float(np.median(times) * 1e6),
        }
        rows.append(row)
        print(f"{name:20} {row['estimator']:24} {n:>5} {row['bias_in_stderr']:>8.2f} "
              f"{row['variance']:>12.4g} {row['us_per_gradient']:>9.1f}", flush=True)
  path = common.write("estimators", {"replicates": args.replicates, "rows": rows}, args.out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
