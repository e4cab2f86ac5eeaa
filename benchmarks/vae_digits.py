"""A discrete latent-variable VAE on scikit-learn's bundled 8x8 digits.

Binary latents z in {0, 1}^16 with a Bernoulli(0.5) prior, a Bernoulli encoder
q(z | x) and a Bernoulli decoder p(x | z) over the 64 binarised pixels, each a
one-hidden-layer MLP. The decoder is trained by the pathwise gradient; the
encoder's gradient through the discrete sample is what the estimators differ in:

  * score_function: `reinforce_loss(log q(z|x), log p(x,z) - log q(z|x))`, 1 sample;
  * rloo: the same with K samples and the leave-one-out baseline;
  * vimco: K samples, the multi-sample bound `log mean_k w_k` (`vimco_objective`);
  * gumbel_softmax: a relaxed (binary concrete) z at temperature 0.5, pathwise;
  * arm, disarm: `rj.grad_estimate(..., estimator="arm" / "disarm")` per data
    point, 2 antithetic pairs (4 decoder evaluations);
  * rebar: `estimator="rebar"` with its default control variate (eta = 1,
    temperature 0.5, not trained), 1 sample: f(b), c(z) and c(z~) are 3
    decoder evaluations, so it sees 4/3 x the data points;
  * relax: `rj.relax_gradients` with `relax_control_variate` (REBAR's term
    plus an MLP of z, shared across data points) trained by its own Adam to
    minimise the encoder gradient's variance; 1 sample, 4/3 x the data points;
  * unordered_set: `estimator="unordered_set"` with k = K = 4 distinct joint
    configurations of the 16 latents per data point (4 decoder evaluations),
    drawn without replacement from q(z | x) by stochastic beam search, with the
    built-in baseline.

For arm, disarm, rebar and relax the learning signal is `log p(x, z) - log q(z | x)`
with `log q` held fixed (its score has mean zero), the estimator's gradient
with respect to the encoder's logits is chained to the encoder's weights, and
the decoder is trained by the pathwise gradient at the same samples. For
unordered_set the k samples are not i.i.d., so their plain mean is not an
unbiased estimate of `E_q[grad log p(x, z)]`: the decoder's pathwise gradient
(and the reported objective) is the weighted sum `sum_s p(s) R(S, s) g(s)` over
the members, `p(s) R(S, s)` being the probability that `s` was drawn first
given the unordered set S (Kool et al. 2020): a single sample Rao-Blackwellised
over the set, unbiased for `E g` for any `g`.
All get the same number of decoder evaluations per data point (K = 4; the
single-sample score function sees 4x the data points instead), the same Adam
optimizer and steps. Reported: the ELBO on held-out digits (100 samples per
point) and the variance of the encoder's gradient over repeated draws on a fixed
batch. Needs scikit-learn (`pip install -e '.[examples]'`); nothing is
downloaded: the digits ship with scikit-learn.

    python benchmarks/vae_digits.py [--steps 3000] [--methods arm,disarm] [--merge]

`--merge` keeps the other methods' results already in the output JSON and
plots them all.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import common
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import reinforce_jax as rj
from reinforce_jax.estimators import unordered_set

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LATENTS, HIDDEN, K, TEMPERATURE = 16, 128, 4, 0.5
METHODS = ("score_function", "rloo", "vimco", "gumbel_softmax", "arm", "disarm", "rebar",
           "relax", "unordered_set")
# Data points per step relative to --batch, so every method makes K decoder evaluations
# per data point of the base batch.
BATCH_FACTOR = {"score_function": K, "rebar": K / 3, "relax": K / 3}
CV_HIDDEN = 32


class VAE(nn.Module):
  def __call__(self, x):  # only used to create the parameters
    return self.encode(x), self.decode(jnp.zeros(x.shape[:-1] + (LATENTS,)))

  def setup(self):
    self.enc_hidden, self.enc_out = nn.Dense(HIDDEN), nn.Dense(LATENTS)
    self.dec_hidden, self.dec_out = nn.Dense(HIDDEN), nn.Dense(64)

  def encode(self, x):
    return self.enc_out(nn.tanh(self.enc_hidden(x)))

  def decode(self, z):
    return self.dec_out(nn.tanh(self.dec_hidden(z)))


def bernoulli_log_prob(logits, values):
  return jnp.sum(values * jax.nn.log_sigmoid(logits) + (1 - values) * jax.nn.log_sigmoid(
      -logits), axis=-1)


def log_joint(model, params, x, z):
  prior = LATENTS * np.log(0.5)
  return bernoulli_log_prob(model.apply(params, z, method=VAE.decode), x) + prior


def sample_z(key, logits, k):
  u = jax.random.uniform(key, (k,) + logits.shape)
  return jax.lax.stop_gradient((u < jax.nn.sigmoid(logits)).astype(jnp.float32))


def _bernoulli_latents(logits):
  return distrax.Bernoulli(logits=logits)


def discrete_estimator_loss(model, params, x, key, method):
  """`-ELBO` surrogate whose encoder gradient is `method`'s (ARM, DisARM, REBAR, unordered set)."""
  logits = model.apply(params, x, method=VAE.encode)  # [B, L]
  frozen = jax.lax.stop_gradient(logits)
  num_samples = {"arm": K // 2, "disarm": K // 2, "rebar": 1, "unordered_set": K}[method]

  def per_point(x_i, logits_i, key_i):
    def f(z):  # relaxed z in [0, 1]^L for REBAR's control variate, exact samples otherwise
      z = z.astype(jnp.float32)
      log_q = jax.lax.stop_gradient(bernoulli_log_prob(logits_i, z))
      return log_joint(model, params, x_i, z) - log_q

    if method == "unordered_set":
      # k distinct z; `expectation` (stop-gradient p(s) R(S, s), summing to 1) makes the
      # weighted sum of f, hence of its decoder gradient, unbiased.
      g, values, expectation = unordered_set.unordered_set_gradient(
          f, _bernoulli_latents, logits_i, key_i, num_samples)
      return g, jnp.sum(expectation * values)
    g, stats = rj.grad_estimate(f, _bernoulli_latents, logits_i, key_i, num_samples=num_samples,
                                estimator=method, return_stats=True)
    return g, jnp.mean(stats.values)

  grads, values = jax.vmap(per_point)(x, frozen, jax.random.split(key, x.shape[0]))
  # Decoder: pathwise at the samples; encoder: the estimator's gradient through the logits.
  return -jnp.mean(values) - jnp.mean(jnp.sum(jax.lax.stop_gradient(grads) * logits, -1))


def relax_loss(model, params, x, key, phi):
  """`(-ELBO surrogate, gradient of the encoder gradient's variance w.r.t. phi)`."""
  logits = model.apply(params, x, method=VAE.encode)
  frozen = jax.lax.stop_gradient(logits)

  def per_point(x_i, logits_i, key_i):
    def f(z):
      z = z.astype(jnp.float32)
      return log_joint(model, params, x_i, z) - jax.lax.stop_gradient(
          bernoulli_log_prob(logits_i, z))

    cv = rj.relax_control_variate(f, hidden=CV_HIDDEN)
    g, cv_g, stats = rj.relax_gradients(f, _bernoulli_latents, logits_i, phi, key_i,
                                        num_samples=1, control_variate=cv, return_stats=True)
    return g, cv_g, jnp.mean(stats.values)

  grads, cv_grads, values = jax.vmap(per_point)(x, frozen, jax.random.split(key, x.shape[0]))
  surrogate = -jnp.mean(values) - jnp.mean(jnp.sum(jax.lax.stop_gradient(grads) * logits, -1))
  return surrogate, jax.tree.map(lambda g: jnp.mean(g, 0), jax.lax.stop_gradient(cv_grads))


def init_cv_params(method):
  if method != "relax":
    return jnp.zeros(())  # a placeholder the other methods carry and never change
  return rj.relax_control_variate(lambda z: 0.0, hidden=CV_HIDDEN).init(
      jax.random.key(1), (LATENTS,))


def make_loss(model, method):
  """`loss(params, x, key, phi) -> (surrogate, cv_grads)`; only RELAX uses phi."""
  def with_cv(params, x, key, phi):
    if method == "relax":
      return relax_loss(model, params, x, key, phi)
    return loss(params, x, key), jax.tree.map(jnp.zeros_like, phi)

  def loss(params, x, key):
    if method in ("arm", "disarm", "rebar", "unordered_set"):
      return discrete_estimator_loss(model, params, x, key, method)
    logits = model.apply(params, x, method=VAE.encode)  # [B, L]
    if method == "gumbel_softmax":
      u = jax.random.uniform(key, (K,) + logits.shape, minval=1e-6, maxval=1 - 1e-6)
      z = jax.nn.sigmoid((logits + jnp.log(u) - jnp.log1p(-u)) / TEMPERATURE)
      recon = bernoulli_log_prob(model.apply(params, z, method=VAE.decode), x).mean(0)
      q = jax.nn.sigmoid(logits)
      kl = jnp.sum(q * (jnp.log(q + 1e-8) - np.log(0.5)) +
                   (1 - q) * (jnp.log(1 - q + 1e-8) - np.log(0.5)), axis=-1)
      return -jnp.mean(recon - kl)
    k = 1 if method == "score_function" else K
    z = sample_z(key, logits, k)  # [k, B, L]
    log_q = bernoulli_log_prob(logits, z)
    log_w = log_joint(model, params, x, z) - log_q  # [k, B]
    if method == "vimco":
      return -rj.vimco_objective(log_w, log_q)
    baseline = rj.baselines.leave_one_out(log_w, axis=0) if method == "rloo" else None
    # Decoder: pathwise through log p(x, z); encoder: the score function on log q.
    return -jnp.mean(log_w) + rj.reinforce_loss(log_q, log_w, baseline)
  return with_cv


def elbo(model, params, x, key, samples=100):
  logits = model.apply(params, x, method=VAE.encode)
  z = sample_z(key, logits, samples)
  return jnp.mean(log_joint(model, params, x, z) - bernoulli_log_prob(logits, z))


def main():
  from sklearn.datasets import load_digits

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--eval-every", type=int, default=100)
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--out")
  parser.add_argument("--merge", action="store_true",
                      help="keep the other methods' results in the output JSON")
  args = parser.parse_args()
  data = (load_digits().data / 16.0 > 0.5).astype(np.float32)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(data))
  train, test = jnp.asarray(data[order[:1500]]), jnp.asarray(data[order[1500:]])
  model = VAE()
  optimizer = optax.adam(1e-3)
  cv_optimizer = optax.adam(1e-3)  # RELAX's control variate: minimises the variance
  fixed_batch = train[: args.batch]
  results, curves = {}, {}
  for method in args.methods.split(","):
    loss = make_loss(model, method)
    # Same decoder evaluations per step: the 1-sample estimator sees K x the data points.
    batch = int(round(args.batch * BATCH_FACTOR.get(method, 1)))
    encoder_grad = jax.jit(lambda p, key, phi, loss=loss: jnp.concatenate([
        g.ravel() for g in jax.tree.leaves(jax.grad(loss, has_aux=True)(
            p, fixed_batch, key, phi)[0]["params"]["enc_out"])]))

    def chunk(carry, key, loss=loss, batch=batch):
      keys = jax.random.split(key, args.eval_every)

      def one(carry, key):
        params, opt_state, phi, cv_state = carry
        key_data, key_loss = jax.random.split(key)
        x = train[jax.random.randint(key_data, (batch,), 0, len(train))]
        grads, cv_grads = jax.grad(loss, has_aux=True)(params, x, key_loss, phi)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        cv_updates, cv_state = cv_optimizer.update(cv_grads, cv_state, phi)
        return (optax.apply_updates(params, updates), opt_state,
                optax.apply_updates(phi, cv_updates), cv_state), None

      return jax.lax.scan(one, carry, keys)[0]

    chunk = jax.jit(chunk)
    params = model.init(jax.random.key(0), train[:2])
    phi = init_cv_params(method)
    state = (params, optimizer.init(params), phi, cv_optimizer.init(phi))
    history = {"step": [], "test_elbo": [], "encoder_grad_variance": []}
    start = time.perf_counter()
    for i in range(args.steps // args.eval_every):
      state = chunk(state, jax.random.key(1000 + i))
      grads = jax.vmap(encoder_grad, in_axes=(None, 0, None))(
          state[0], jax.random.split(jax.random.key(i), 32), state[2])
      history["step"].append((i + 1) * args.eval_every)
      history["test_elbo"].append(float(elbo(model, state[0], test, jax.random.key(7))))
      history["encoder_grad_variance"].append(float(jnp.sum(jnp.var(grads, axis=0))))
    seconds = time.perf_counter() - start
    curves[method] = history
    results[method] = {"final_test_elbo": history["test_elbo"][-1],
                       "median_encoder_grad_variance": float(np.median(
                           history["encoder_grad_variance"])), "seconds": seconds}
    print(f"{method:15} test ELBO {history['test_elbo'][-1]:8.2f}  encoder-gradient variance "
          f"{results[method]['median_encoder_grad_variance']:10.4g}  ({seconds:.1f} s)",
          flush=True)
  if args.merge:
    previous = pathlib.Path(args.out) if args.out else (
        common.RESULTS / f"vae_digits-{common.device_tag()}.json")
    if previous.exists():
      old = json.loads(previous.read_text())
      if old.get("steps") != args.steps:
        raise SystemExit(f"--merge: {previous} has steps={old.get('steps')}, not {args.steps}")
      results = {**{m: r for m, r in old["results"].items() if m not in results}, **results}
      curves = {**{m: c for m, c in old["curves"].items() if m not in curves}, **curves}
      order = [m for m in METHODS if m in results] + [m for m in results if m not in METHODS]
      results, curves = {m: results[m] for m in order}, {m: curves[m] for m in order}
  path = common.write("vae_digits", {"steps": args.steps, "K": K, "results": results,
                                     "curves": curves}, args.out)
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
  for method, history in curves.items():
    left.plot(history["step"], history["test_elbo"], label=method)
    right.semilogy(history["step"], history["encoder_grad_variance"], label=method)
  left.set(xlabel="train step", ylabel="held-out ELBO (nats)", title="Discrete VAE on 8x8 digits")
  right.set(xlabel="train step", ylabel="variance of the encoder gradient",
            title="Gradient variance (fixed batch, 32 draws)")
  for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path.with_suffix(".png"))
  print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
  main()
