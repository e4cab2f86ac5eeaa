"""Bayesian logistic regression on scikit-learn's breast-cancer data (Mohamed et al. 2020, sec. 8).

Prior `w ~ N(0, I)` over 30 standardised features and a bias, likelihood
`y_i ~ Bernoulli(sigmoid(x_i . w))` on all 569 points, and a diagonal Gaussian
`q(w) = N(mu, diag(sigma^2))` (`monte_carlo.multi_normal`, params
`[mu, log_sigma]`) trained to maximise the ELBO `E_q[log p(y | X, w)] - KL(q || p)`:
the expectation's gradient by an estimator x control variate, the KL's in
closed form, Adam (`--lr`), `--samples` samples per step. Estimators: score
function, pathwise, measure-valued (with coupling); control variates: none,
the delta method (second-order Taylor expansion at mu, coefficient estimated
from 20 fresh samples) and a moving-average baseline (a constant: it changes
only the score function). Every `--eval-every` steps: the ELBO (1000 samples,
fixed key) and the variance of the gradient estimate for mu, averaged over
coordinates, from `--samples` per-sample Jacobians. All through
`reinforce_jax.estimators.monte_carlo`, optax 0.2.4's API.

Needs scikit-learn (`pip install -e '.[examples]'`); nothing is downloaded.

    python benchmarks/bayes_logistic_regression.py [--steps 1000]

References:
  Mohamed, S., Rosca, M., Figurnov, M. and Mnih, A. (2020). Monte Carlo gradient
    estimation in machine learning. JMLR 21(132), section 8.3.
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

from reinforce_jax import monte_carlo as mc

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ESTIMATORS = {"score_function": mc.score_function_jacobians,
              "pathwise": mc.pathwise_jacobians,
              "measure_valued": mc.measure_valued_jacobians}
CONTROL_VARIATES = ("none", "delta", "moving_avg")


def data():
  from sklearn.datasets import load_breast_cancer

  raw = load_breast_cancer()
  x = (raw.data - raw.data.mean(0)) / raw.data.std(0)
  x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  return jnp.asarray(x, jnp.float32), jnp.asarray(raw.target, jnp.float32)


def make_run(estimator: str, control: str, x, y, samples: int, lr: float, eval_every: int):
  def log_likelihood(w):
    logits = x @ w
    return jnp.sum(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits))

  def kl(params):  # KL(N(mu, sigma^2) || N(0, 1)), summed over coordinates
    mu, log_sigma = params
    return 0.5 * jnp.sum(mu**2 + jnp.exp(2 * log_sigma) - 1.0 - 2 * log_sigma)

  grad_estimator = ESTIMATORS[estimator]
  optimizer = optax.adam(lr)

  def jacobians(params, key, cv_state):
    if control == "none":
      return grad_estimator(log_likelihood, params, mc.multi_normal, key, samples), cv_state
    make_cv = mc.control_delta_method if control == "delta" else mc.moving_avg_baseline
    return mc.control_variates_jacobians(
        log_likelihood, make_cv, grad_estimator, params, mc.multi_normal, key, samples,
        control_variate_state=cv_state, estimate_cv_coeffs=control == "delta",
        estimate_cv_coeffs_num_samples=20)

  def step(carry, key):
    params, opt_state, cv_state = carry
    jac, cv_state = jacobians(params, key, cv_state)
    grads_kl = jax.grad(kl)(params)
    # Maximise the ELBO: descend on its negation.
    grads = [-(j.mean(0)) + g for j, g in zip(jac, grads_kl, strict=True)]
    updates, opt_state = optimizer.update(grads, opt_state, params)
    variance = jnp.mean(jnp.var(jac[0], axis=0) / samples)
    return (optax.apply_updates(params, updates), opt_state, cv_state), variance

  def elbo(params):
    w = mc.multi_normal(*params).sample((1000,), seed=jax.random.key(123))
    return jnp.mean(jax.vmap(log_likelihood)(w)) - kl(params)

  @jax.jit
  def chunk(carry, key):
    carry, variances = jax.lax.scan(step, carry, jax.random.split(key, eval_every))
    return carry, variances[-1], elbo(carry[0])

  dim = x.shape[1]
  params = [jnp.zeros(dim), jnp.full(dim, -2.0)]
  cv_state = (jnp.float32(0.0), 0) if control == "moving_avg" else None
  return chunk, (params, optimizer.init(params), cv_state)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--samples", type=int, default=50)
  parser.add_argument("--lr", type=float, default=1e-2)
  parser.add_argument("--eval-every", type=int, default=50)
  parser.add_argument("--out")
  args = parser.parse_args()
  x, y = data()
  results = {}
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
  for estimator in ESTIMATORS:
    for control in CONTROL_VARIATES:
      name = f"{estimator}+{control}"
      chunk, carry = make_run(estimator, control, x, y, args.samples, args.lr, args.eval_every)
      history = {"step": [], "elbo": [], "variance_mu": []}
      start = time.perf_counter()
      for i in range(args.steps // args.eval_every):
        carry, variance, value = chunk(carry, jax.random.key(i))
        history["step"].append((i + 1) * args.eval_every)
        history["elbo"].append(float(value))
        history["variance_mu"].append(float(variance))
      history["seconds"] = time.perf_counter() - start
      results[name] = history
      print(f"{name:30} final ELBO {history['elbo'][-1]:9.2f}  median variance (mu) "
            f"{np.median(history['variance_mu']):10.4g}  ({history['seconds']:.1f} s)",
            flush=True)
      style = {"none": "-", "delta": "--", "moving_avg": ":"}[control]
      color = {"score_function": "C0", "pathwise": "C1", "measure_valued": "C2"}[estimator]
      left.plot(history["step"], history["elbo"], style, color=color, label=name)
      right.semilogy(history["step"], history["variance_mu"], style, color=color, label=name)
  left.set(xlabel="step", ylabel="ELBO (nats)", title="Bayesian logistic regression, breast cancer")
  left.set_ylim(bottom=min(r["elbo"][-1] for r in results.values()) - 100)
  right.set(xlabel="step", ylabel="variance of the gradient for mu (mean over coordinates)",
            title=f"{args.samples} samples per step")
  for ax in (left, right):
    ax.grid(alpha=0.3)
  right.legend(fontsize=7)
  fig.tight_layout()
  path = common.write("bayes_logistic_regression", {"steps": args.steps,
                                                    "samples": args.samples, "lr": args.lr,
                                                    "results": results}, args.out)
  fig.savefig(path.with_suffix(".png"))
  print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
  main()
