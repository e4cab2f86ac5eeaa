"""Figures 2 and 3 of Mohamed, Rosca, Figurnov and Mnih (2020), exact and measured.

The variance of one-sample estimates of `grad_theta E_{N(x | mu, sigma^2)}[f(x; k)]`,
theta in {mu, sigma}, at mu = sigma = 1, for four estimators: the score function, the
score function with the variance-optimal baseline `b* = E[f s^2] / E[s^2]` per parameter,
the pathwise estimator, and the measure-valued estimator with coupling (the Weibull pair
shares its draw for mu; the double-sided Maxwell is coupled to the Gaussian as `u * m`
for sigma).

The costs, k grids and axes are those of the paper's companion notebook
(google-deepmind/mc_gradients, `monte_carlo_gradients/variance_numerical_integration.ipynb`):

  Figure 2           f = (x - k)^2    k = linspace(-3, 3, 100)    y in [1, 1e3] (mu and sigma)
  Figure 3 (top)     f = exp(-k x^2)  k = logspace over [0.1, 10]  y in [1e-3, 1] (mu and sigma)
  Figure 3 (bottom)  f = cos(k x)     k = logspace over [0.5, 5]   y in [5e-3, 10] (mu),
                                                                   [0.1, 10] (sigma)

with 100 k values each, mu = sigma = 1, log y axes and (Figure 3) log k axes; the
notebook also computes a mean baseline but does not plot it.

"Exact" is the variance computed by numerical integration (float64 trapezoid rules on
[-12, 12], and on [0, 12] x [0, 1]-style grids for the weak derivatives' Weibull and
Maxwell-uniform measures), drawn as lines on the paper's 100-point grids. "Measured" is
the sample variance of `--samples` per-sample gradients from `rj.grad_estimate` (params
`{mu, log_sigma}`; at sigma = 1 the derivative in log sigma equals the one in sigma), at
`--measured-points` of those k values (dots), with its standard error
`sqrt((m4 - v^2) / M)` from the fourth central moment; the script reports the largest
|measured - exact| / SE over all measured cells.

    python benchmarks/mohamed_figures.py [--samples 20000] [--points 100]
                                         [--measured-points 25]

References:
  Mohamed, S., Rosca, M., Figurnov, M. and Mnih, A. (2020). Monte Carlo gradient
    estimation in machine learning. JMLR 21(132), Figures 2 and 3.
"""

from __future__ import annotations

import argparse
import math

import common
import distrax
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.ticker
import numpy as np

import reinforce_jax as rj

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MU, SIGMA = 1.0, 1.0
ESTIMATORS = {  # name: (estimator, baseline)
    "score_function": ("score_function", None),
    "score_function+optimal_baseline": ("score_function", "optimal"),
    "pathwise": ("pathwise", None),
    "measure_valued+coupling": ("measure_valued", None),
}
COSTS = {  # name: (f(x, k) for jnp and numpy, f'(x, k) in numpy)
    "quadratic": (lambda x, k: (x - k) ** 2, lambda x, k: 2 * (x - k)),
    "exponential": (lambda x, k: np.exp(-k * x**2) if isinstance(x, np.ndarray)
                    else jnp.exp(-k * x**2),
                    lambda x, k: -2 * k * x * np.exp(-k * x**2)),
    "cosine": (lambda x, k: np.cos(k * x) if isinstance(x, np.ndarray) else jnp.cos(k * x),
               lambda x, k: -k * np.sin(k * x)),
}


# The companion notebook's grids (100 points each there) and y limits per (mu, sigma).
K_RANGE = {"quadratic": (-3.0, 3.0), "exponential": (0.1, 10.0), "cosine": (0.5, 5.0)}
Y_LIMITS = {"quadratic": ((1.0, 1e3), (1.0, 1e3)),
            "exponential": ((1e-3, 1.0), (1e-3, 1.0)),
            "cosine": ((5e-3, 10.0), (0.1, 10.0))}
LOG_K_TICKS = {"exponential": (0.1, 1.0, 10.0), "cosine": (0.5, 1.0, 2.0, 5.0)}


def k_grid(cost: str, points: int) -> np.ndarray:
  low, high = K_RANGE[cost]
  if cost == "quadratic":
    return np.linspace(low, high, points)
  return np.logspace(np.log10(low), np.log10(high), points)


# --- Exact variances by numerical integration (float64) ---------------------------

_X = np.linspace(-12.0, 12.0, 200_001)                   # for N(0, 1) and the Maxwell
_W = np.linspace(0.0, 12.0, 100_001)                     # for the Weibull(sqrt 2, 2)
_M = np.linspace(-12.0, 12.0, 24_001)                    # the Maxwell of the 2-d coupling
_U = np.linspace(0.0, 1.0, 401)                          # its uniform
_NORMAL = np.exp(-0.5 * _X**2) / math.sqrt(2 * math.pi)
_WEIBULL = _W * np.exp(-0.5 * _W**2)
_MAXWELL = _M**2 * np.exp(-0.5 * _M**2) / math.sqrt(2 * math.pi)
TITLES = {"quadratic": "f = (x - k)^2", "exponential": "f = exp(-k x^2)",
          "cosine": "f = cos(k x)"}


def _expect(values, density, grid):
  return np.trapezoid(values * density, grid)


def exact_variances(cost: str, k: float) -> dict[str, np.ndarray]:
  """`{estimator: [var_mu, var_sigma]}` of one-sample estimates, and the exact gradient."""
  f, df = COSTS[cost]
  x = MU + SIGMA * _X
  fx = f(x, k)
  scores = [(x - MU) / SIGMA**2, ((x - MU) ** 2 - SIGMA**2) / SIGMA**3]
  gradient = np.array([_expect(fx * s, _NORMAL, _X) for s in scores])
  out = {"exact_gradient": gradient}

  def variance(per_sample_values, density, grid, g):
    return _expect(per_sample_values**2, density, grid) - g**2

  out["score_function"] = np.array(
      [variance(fx * s, _NORMAL, _X, g) for s, g in zip(scores, gradient, strict=True)])
  optimal = []
  for s, g in zip(scores, gradient, strict=True):
    b = _expect(fx * s**2, _NORMAL, _X) / _expect(s**2, _NORMAL, _X)
    optimal.append(variance((fx - b) * s, _NORMAL, _X, g))
  out["score_function+optimal_baseline"] = np.array(optimal)
  dfx = df(x, k)
  out["pathwise"] = np.array([variance(dfx, _NORMAL, _X, gradient[0]),
                              variance(dfx * (x - MU) / SIGMA, _NORMAL, _X, gradient[1])])
  d_mu = (f(MU + SIGMA * _W, k) - f(MU - SIGMA * _W, k)) / (math.sqrt(2 * math.pi) * SIGMA)
  m, u = _M[:, None], _U[None, :]
  d_sigma = (f(MU + SIGMA * m, k) - f(MU + SIGMA * u * m, k)) / SIGMA
  second = np.trapezoid(np.trapezoid(d_sigma**2, _U, axis=1) * _MAXWELL, _M)
  out["measure_valued+coupling"] = np.array([variance(d_mu, _WEIBULL, _W, gradient[0]),
                                             second - gradient[1] ** 2])
  return out


# --- Measured variances with reinforce_jax ---------------------------------------

def gaussian(p):
  return distrax.Normal(p["mu"], jnp.exp(p["log_sigma"]))


def measured_variances(cost: str, ks: np.ndarray, samples: int, seed: int = 0):
  """`{estimator: (variance [len(ks), 2], stderr [len(ks), 2])}` from per-sample gradients."""
  f = COSTS[cost][0]
  params = {"mu": jnp.float32(MU), "log_sigma": jnp.float32(math.log(SIGMA))}
  out = {}
  for name, (estimator, baseline) in ESTIMATORS.items():
    def per_sample(k, key, estimator=estimator, baseline=baseline):
      _, stats = rj.grad_estimate(lambda x: f(x, k), gaussian, params, key,
                                  num_samples=samples, estimator=estimator, baseline=baseline,
                                  optimal_baseline_samples=samples, return_stats=True)
      g = jnp.stack([stats.per_sample["mu"], stats.per_sample["log_sigma"]], -1)  # [M, 2]
      centred = g - g.mean(0)
      v = jnp.mean(centred**2, 0)
      m4 = jnp.mean(centred**4, 0)
      return v, jnp.sqrt(jnp.maximum(m4 - v**2, 0.0) / samples)

    keys = jax.random.split(jax.random.key(seed), len(ks))
    v, se = jax.jit(jax.vmap(per_sample))(jnp.asarray(ks, jnp.float32), keys)
    out[name] = (np.asarray(v, np.float64), np.asarray(se, np.float64))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--samples", type=int, default=20_000)
  parser.add_argument("--points", type=int, default=100,
                      help="k values of the exact curves (the paper's 100)")
  parser.add_argument("--measured-points", type=int, default=25,
                      help="k values, spread over the grid, that are also measured")
  parser.add_argument("--out")
  args = parser.parse_args()
  rows, worst = [], 0.0
  fig, axes = plt.subplots(2, 3, figsize=(15, 8), dpi=100)
  for column, cost in enumerate(COSTS):
    ks = k_grid(cost, args.points)
    picked = np.unique(np.round(np.linspace(0, args.points - 1,
                                            min(args.measured_points, args.points))).astype(int))
    exact = [exact_variances(cost, float(k)) for k in ks]
    measured = measured_variances(cost, ks[picked], args.samples)
    for name in ESTIMATORS:
      want = np.array([e[name] for e in exact])                       # [len(ks), 2]
      got, se = measured[name]                                        # [len(picked), 2]
      # A zero exact variance (measure-valued, mu, k = mu: f(mu + w) = f(mu - w)) is
      # measured as float32 rounding; floor the SE at that precision.
      z = (got - want[picked]) / np.maximum(se, 1e-6 * (np.abs(want[picked]) + 1.0))
      worst = max(worst, float(np.max(np.abs(z))))
      measured_at = {int(i): j for j, i in enumerate(picked)}
      for i, k in enumerate(ks):
        row = {"cost": cost, "k": float(k), "estimator": name,
               "exact_variance": {"mu": want[i, 0], "sigma": want[i, 1]},
               "exact_gradient": {"mu": exact[i]["exact_gradient"][0],
                                  "sigma": exact[i]["exact_gradient"][1]}}
        if i in measured_at:
          j = measured_at[i]
          row.update({"measured_variance": {"mu": got[j, 0], "sigma": got[j, 1]},
                      "stderr": {"mu": se[j, 0], "sigma": se[j, 1]},
                      "z": {"mu": z[j, 0], "sigma": z[j, 1]}})
        rows.append(row)
      for param in range(2):
        ax = axes[param, column]
        line, = ax.plot(ks, want[:, param], label=f"{name} (quadrature)")
        ax.plot(ks[picked], got[:, param], "o", ms=3, color=line.get_color(),
                label=f"{name} (measured, M={args.samples})")
    print(f"{cost:12} max |z| so far {worst:.2f}", flush=True)
    for param, label in enumerate(("mu", "sigma")):
      ax = axes[param, column]
      ax.set_yscale("log")
      if cost in LOG_K_TICKS:
        ax.set_xscale("log")
        ax.set_xticks(LOG_K_TICKS[cost], [f"{t:g}" for t in LOG_K_TICKS[cost]])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      # The notebook's axes; what lies outside them (the score function's sigma variance
      # above 1e3 at k = -3, the coupled estimator's exact zero at k = mu) is off the plot
      # there too.
      ax.set_ylim(*Y_LIMITS[cost][param])
      ax.set_xlim(ks[0], ks[-1])
      ax.set(xlabel="k", ylabel=f"variance of the estimator for {label}",
             title=TITLES[cost])
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("Mohamed et al. (2020), Figures 2 and 3: mu = sigma = 1, one-sample estimators")
  fig.tight_layout()
  cells = sum(2 for row in rows if "z" in row)
  path = common.write("mohamed_figures", {"samples": args.samples, "points": args.points,
                                          "measured_points": args.measured_points,
                                          "k_range": K_RANGE, "mu": MU, "sigma": SIGMA,
                                          "measured_cells": cells,
                                          "max_abs_z": worst, "rows": rows}, args.out)
  fig.savefig(path.with_suffix(".png"))
  print(f"max |measured - exact| / SE over {cells} measured cells: {worst:.2f}")
  print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
  main()
