"""The Bernoulli toy of REBAR and RELAX: minimise E_{b ~ Bernoulli(sigmoid(theta))}[(b - t)^2].

For t < 1/2 the minimum is at p = sigmoid(theta) -> 0; the gradient
`p (1 - p) (1 - 2 t)` is tiny next to f's values (t = 0.499: 0.002 p (1 - p)),
so a noisy estimator drifts the wrong way as often as the right one. Each
estimator gets one sample (one or two evaluations of f) per step, Adam with
learning rate `--lr` from theta = 0; it "found the optimum" if p < 0.05 at the
end. Every `--eval-every` steps the variance of
a one-sample estimate at the current theta is measured over 1000 draws; the
log-variance curves are Figure 1 of RELAX (Grathwohl et al., 2018).

Estimators: the score function (no baseline), ARM, DisARM, REBAR (eta and the
temperature trained to minimise the variance, as in Tucker et al.) and RELAX
(REBAR's term plus a small MLP, trained the same way), both through
`rj.relax_gradients` with their own Adam optimizer.

    python benchmarks/bernoulli_toy.py [--steps 10000]

References:
  Tucker, G. et al. (2017). REBAR. NeurIPS. Grathwohl, W. et al. (2018).
    Backpropagation through the void (RELAX). ICLR. Yin, M. and Zhou, M. (2019). ARM.
    ICLR. Dong, Z., Mnih, A. and Tucker, G. (2020). DisARM. NeurIPS.
"""

from __future__ import annotations

import argparse
import time

import common
import distrax
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import reinforce_jax as rj

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ("score_function", "arm", "disarm", "rebar", "relax")


def bernoulli(theta):
  return distrax.Bernoulli(logits=theta)


def run(method: str, target: float, steps: int, eval_every: int, lr: float, seed: int = 0):
  def f(b):
    return (jnp.asarray(b).astype(jnp.float32) - target) ** 2

  if method == "rebar":
    cv = rj.rebar_control_variate(f)
  elif method == "relax":
    cv = rj.relax_control_variate(f, hidden=10)
  else:
    cv = None
  optimizer, cv_optimizer = optax.adam(lr), optax.adam(lr)
  theta = jnp.float32(0.0)
  phi = cv.init(jax.random.key(seed + 1), ()) if cv else jnp.zeros(())
  state = (theta, optimizer.init(theta), phi, cv_optimizer.init(phi))

  def gradients(theta, phi, key):
    if cv is None:
      g = rj.grad_estimate(f, bernoulli, theta, key, num_samples=1, estimator=method)
      return g, jax.tree.map(jnp.zeros_like, phi)
    return rj.relax_gradients(f, bernoulli, theta, phi, key, num_samples=1, control_variate=cv)

  def step(state, key):
    theta, opt_state, phi, cv_state = state
    g, cv_g = gradients(theta, phi, key)
    updates, opt_state = optimizer.update(g, opt_state, theta)  # descends: minimises E f
    cv_updates, cv_state = cv_optimizer.update(cv_g, cv_state, phi)
    return (optax.apply_updates(theta, updates), opt_state,
            optax.apply_updates(phi, cv_updates), cv_state), None

  @jax.jit
  def chunk(state, key):
    state = jax.lax.scan(step, state, jax.random.split(key, eval_every))[0]
    theta, _, phi, _ = state
    draws = jax.vmap(lambda k: gradients(theta, phi, k)[0])(
        jax.random.split(jax.random.fold_in(key, 1), 1000))
    return state, jnp.var(draws)

  history = {"step": [], "p": [], "variance": []}
  key = jax.random.key(seed)
  start = time.perf_counter()
  for i in range(steps // eval_every):
    state, variance = chunk(state, jax.random.fold_in(key, i))
    history["step"].append((i + 1) * eval_every)
    history["p"].append(float(jax.nn.sigmoid(state[0])))
    history["variance"].append(float(variance))
  history["seconds"] = time.perf_counter() - start
  return history


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=10000)
  parser.add_argument("--eval-every", type=int, default=200)
  parser.add_argument("--lr", type=float, default=0.01)
  parser.add_argument("--out")
  args = parser.parse_args()
  results = {}
  fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=100)
  for column, target in enumerate((0.45, 0.499)):
    results[str(target)] = {}
    for method in METHODS:
      history = run(method, target, args.steps, args.eval_every, args.lr)
      results[str(target)][method] = history
      final_p = history["p"][-1]
      history["found_optimum"] = final_p < 0.05
      print(f"t = {target:5}  {method:15} final p = {final_p:.4f} "
            f"({'at the optimum' if final_p < 0.05 else 'not there'})  median log10 variance "
            f"{np.log10(np.median(history['variance'])):6.2f}  ({history['seconds']:.1f} s)",
            flush=True)
      axes[0, column].semilogy(history["step"], history["variance"], label=method)
      axes[1, column].plot(history["step"], history["p"], label=method)
    axes[0, column].set(title=f"t = {target}: variance of a one-sample estimate",
                        xlabel="step", ylabel="variance")
    axes[1, column].set(title=f"t = {target}: p = sigmoid(theta) (optimum 0)", xlabel="step",
                        ylabel="p")
  for ax in axes.ravel():
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  path = common.write("bernoulli_toy", {"steps": args.steps, "lr": args.lr,
                                        "results": results}, args.out)
  fig.savefig(path.with_suffix(".png"))
  print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
  main()
