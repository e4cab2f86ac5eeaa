"""Exact bias and variance of REINFORCE, RLOO, GRPO and relatives on an enumerable policy.

A tabular autoregressive policy over two tokens plus EOS, at most 4 tokens long (15 states,
45 logits, 31 sequences, `reinforce_jax.sequence.tabular`), with a reward that depends on
content and length. The exact gradients of `E[R]` and of `E[R] - beta KL(pi || pi_ref)` are
sums over the 31 sequences. For every advantage estimator x aggregation (and, against the KL
objective, every KL estimator used as a loss term or as a reward) this measures one group's
gradient estimate at G = 2, 4, 16:

* exactly, at G = 2 and 4, by enumerating all 31^G ordered groups (961 and 923521): the
  relative bias `||E g_hat - c g|| / ||c g||` and the cosine of `E g_hat` to `g`;
  and its direction error `tan angle(E g_hat, g)`, the part of the bias that no learning rate
  removes;
* by Monte Carlo with fixed keys at every G (`--groups` groups per G, shared by every cell):
  the bias in standard errors (max over the 45 components of `|mean - c g| / se`, and the
  mean of `z^2`, about 1 without bias), the relative bias, the cosine, and the relative
  standard deviation `sqrt(tr Cov[g_hat]) / ||c g||` of one group's estimate.

Then completions drawn from a stale policy (`logits + 0.5 N(0, 1)`), the gradient wanted at
`logits`: no correction, each sequence's exact weight `pi(y) / pi_old(y)`, PPO's per-token
and GSPO's per-sequence ratios, clipped or not (exact at G = 2, 4). And the same 16 cells
against `E[R]` for a batch of two prompts (each its own table; the
second pays a quarter of the first's rewards), exact at G = 2 (31^4 batches): GRPO's
per-prompt std now reweights prompts.

`c` is the scale theory expects: `(G - 1) / G` for `"dr_grpo"` advantages, `1 / L` for the
`"constant"` aggregation, 1 otherwise; a cell is unbiased when `E g_hat = c g` (a known scale
only rescales the learning rate), biased when no constant makes it so.

    python benchmarks/sequence_audit.py [--groups 20000]

writes benchmarks/results/sequence_audit-<device>.json and .png (`--replot JSON` redraws).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import common
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from reinforce_jax.sequence import tabular
from reinforce_jax.sequence.losses import AGGREGATIONS, ESTIMATORS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GROUP_SIZES = (2, 4, 16)
OFF_POLICY_NOISE = 0.5
EXACT_GROUP_SIZES = (2, 4)
BETA = 0.5
KL_FORMS = tuple((k, a) for k in ("k1", "k2", "k3") for a in ("reward", "loss"))

# What theory promises, before any enumeration (see reinforce_jax/sequence/losses.py).
EXPECTED_ADVANTAGE = {
    "none": "unbiased",
    "rloo": "unbiased",
    "dr_grpo": "unbiased for (G-1)/G x",
    "grpo": "biased: the std divisor depends on r_i",
}
EXPECTED_AGGREGATION = {
    "sequence_sum": "unbiased",
    "constant": "unbiased for 1/L x",
    "sequence_mean": "biased: 1/|y_i| weight",
    "token_mean": "biased: 1/sum_j |y_j| weight",
}
EXPECTED_KL = {
    ("k1", "reward"): "unbiased",
    ("k1", "loss"): "biased: mean gradient 0",
    ("k2", "reward"): "biased",
    ("k2", "loss"): "biased: per-token KL, prefixes fixed",
    ("k3", "reward"): "biased",
    ("k3", "loss"): "biased: forward per-token KL",
}


def problem():
  """The table, the policy and reference logits, rewards, and the two exact gradients."""
  table, num_states = tabular.enumerate_sequences(vocab_size=3, max_length=4)
  logits = jax.random.normal(jax.random.key(0), (num_states, 3))
  ref_logits = jax.random.normal(jax.random.key(1), (num_states, 3))
  rewards = tabular.content_and_length_reward(table)
  grad_reward = jax.grad(tabular.objective)(logits, table, rewards)
  grad_kl = jax.grad(tabular.objective)(logits, table, rewards, beta=BETA,
                                        ref_logits=ref_logits)
  return table, logits, ref_logits, rewards, grad_reward, grad_kl


def cells():
  """Every audited configuration: 16 against E[R], 6 KL forms x {none, rloo} + GRPO's own."""
  out = [tabular.EstimatorConfig(e, a) for e in ESTIMATORS for a in AGGREGATIONS]
  out += [tabular.EstimatorConfig(e, "sequence_sum", k, how)
          for e in ("none", "rloo") for k, how in KL_FORMS]
  # GRPO as DeepSeekMath published it: std-normalised, 1/|y| per sequence, k3 in the loss.
  out.append(tabular.EstimatorConfig("grpo", "sequence_mean", "k3", "loss"))
  return out


def name(config) -> str:
  kl = "" if config.kl is None else f" + {config.kl} as {config.kl_as}"
  ratio = ""
  if config.ratio_level is not None:
    ratio = f", {config.ratio_level} ratio"
    ratio += "" if config.clip_eps is None else f" clipped at {config.clip_eps:g}"
  return f"{config.estimator} / {config.aggregation}{kl}{ratio}"


def expected(config) -> str:
  if config.aggregation != "sequence_sum" and config.ratio_level is not None:
    return EXPECTED_AGGREGATION[config.aggregation]
  if config.ratio_level == "full":
    return "unbiased"
  if config.ratio_level is not None:
    return "biased: ratios other than pi(y) / pi_old(y)"
  if config.kl is not None and config.estimator in ("none", "rloo") and (
      config.aggregation == "sequence_sum"):
    return EXPECTED_KL[(config.kl, config.kl_as)]
  parts = [EXPECTED_ADVANTAGE[config.estimator], EXPECTED_AGGREGATION[config.aggregation]]
  if config.kl is not None:
    parts.append(EXPECTED_KL[(config.kl, config.kl_as)])
  biased = [p for p in parts if p.startswith("biased")]
  if biased:
    return "; ".join(biased)
  scaled = [p.removeprefix("unbiased for ") for p in parts if p.startswith("unbiased for")]
  return "unbiased for " + " ".join(scaled).replace(" x ", " ") if scaled else "unbiased"


def scale(config, group_size: int, length: int) -> float:
  """The constant theory expects E g_hat / g to be (only meaningful for unbiased cells)."""
  c = 1.0
  if config.estimator == "dr_grpo":
    c *= (group_size - 1) / group_size
  if config.aggregation == "constant":
    c /= length
  return c


def _cos(a, b) -> float:
  return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _direction_error(mean, truth) -> float:
  """`tan` of the angle between `mean` and `truth`: the bias no learning rate removes.

  `||mean - p|| / ||p||` with `p` the projection of `mean` on `truth`; 0 when `mean` is any
  positive multiple of `truth`.
  """
  along = np.sum(mean * truth) / np.sum(truth * truth) * truth
  return float(np.linalg.norm(mean - along) / np.linalg.norm(along))


def two_prompts():
  """Two prompts, each its own table: the second pays a quarter of the first's rewards.

  Per-prompt reward scales are what GRPO's std divides out (Liu et al.'s difficulty bias);
  only the exact gradient of the mean objective says whether that is a bias.
  """
  table, num_states = tabular.enumerate_sequences(vocab_size=3, max_length=4)
  logits = jnp.stack([jax.random.normal(jax.random.key(0), (num_states, 3)),
                      jax.random.normal(jax.random.key(3), (num_states, 3))])
  base = tabular.content_and_length_reward(table)
  rewards = jnp.stack([base, 0.25 * base])
  grad = jax.grad(lambda th: jnp.mean(jax.vmap(tabular.objective, (0, None, 0))(
      th, table, rewards)))(logits)
  return table, logits, rewards, grad


def _measure(est, truth, c, exact=None) -> dict:
  """Bias and spread of `est` ([K, D] estimates) against `c * truth`."""
  num_groups = est.shape[0]
  target = c * truth
  mean = est.mean(0)
  se = est.std(0, ddof=1) / np.sqrt(num_groups)
  z = (mean - target) / se
  per_draw_cos = np.sum(est * truth, 1) / (
      np.linalg.norm(est, axis=1) * np.linalg.norm(truth) + 1e-30)
  result = {
      "scale": c,
      "mc_max_abs_z": float(np.max(np.abs(z))),
      "mc_mean_z2": float(np.mean(z**2)),
      "mc_relative_bias": float(np.linalg.norm(mean - target) / np.linalg.norm(target)),
      "mc_noise_floor": float(np.linalg.norm(se) / np.linalg.norm(target)),
      "mc_cosine": _cos(mean, truth),
      "mc_direction_error": _direction_error(mean, truth),
      "mean_per_draw_cosine": float(np.mean(per_draw_cos)),
      "relative_std": float(np.sqrt(np.sum(est.var(0, ddof=1))) / np.linalg.norm(target)),
  }
  if exact is not None:
    result["exact_relative_bias"] = float(
        np.linalg.norm(exact - target) / np.linalg.norm(target))
    result["exact_cosine"] = _cos(exact, truth)
    result["exact_direction_error"] = _direction_error(exact, truth)
    result["exact_norm_ratio"] = float(np.linalg.norm(exact) / np.linalg.norm(truth))
    # The samples against the enumeration: a check on both.
    result["mc_vs_exact_max_abs_z"] = float(np.max(np.abs((mean - exact) / se)))
  return result


def _run(configs, table, logits, rewards, truths, exact_sizes, num_groups, ref_logits=None,
         old_logits=None):
  """Every config at every G; `logits` `[B, states, V]`, `truths` (reward, kl) alike.

  With `old_logits`, completions are drawn from that policy instead of `logits`'.
  """
  length = table.tokens.shape[1]
  prompts = logits.shape[0]
  sampler = logits if old_logits is None else old_logits

  def draw(g):
    keys = jax.random.split(jax.random.fold_in(jax.random.key(2), g), prompts)
    return jnp.stack([tabular.sample(k, lg, table, (num_groups, g))
                      for k, lg in zip(keys, sampler, strict=True)], axis=1)  # [K, B, G]

  samples = {g: draw(g) for g in GROUP_SIZES}
  rows = []
  for config in configs:
    truth = np.asarray(truths[0] if config.kl is None else truths[1], np.float64).ravel()
    row = {"cell": name(config), "estimator": config.estimator,
           "aggregation": config.aggregation, "kl": config.kl,
           "kl_as": config.kl_as if config.kl else None, "expected": expected(config),
           "by_group_size": {}}
    start = time.perf_counter()
    for g in GROUP_SIZES:
      est = tabular.batch_gradients(logits, table, rewards, samples[g], config, beta=BETA,
                                    ref_logits=ref_logits, old_logits=old_logits)
      exact = None
      if g in exact_sizes:
        exact = np.asarray(tabular.exact_batch_expectation(
            logits, table, rewards, g, config, beta=BETA, ref_logits=ref_logits,
            old_logits=old_logits), np.float64).ravel()
      row["by_group_size"][str(g)] = _measure(
          np.asarray(est, np.float64).reshape(num_groups, -1), truth,
          scale(config, g, length), exact)
    row["seconds"] = time.perf_counter() - start
    rows.append(row)
    summary = " ".join(
        f"G={g}: {bias(r):.3g} (z {r['mc_max_abs_z']:.1f})"
        for g, r in row["by_group_size"].items())
    print(f"{row['cell']:<40} {summary}  [{row['seconds']:.1f}s]", flush=True)
  return rows


def audit(num_groups: int) -> list[dict]:
  """One prompt: every cell, exact at G = 2, 4."""
  table, logits, ref_logits, rewards, grad_reward, grad_kl = problem()
  return _run(cells(), table, logits[None], rewards[None], (grad_reward[None], grad_kl[None]),
              EXACT_GROUP_SIZES, num_groups, ref_logits[None])


def audit_off_policy(num_groups: int) -> list[dict]:
  """Completions from a stale policy (logits + 0.5 N(0, 1), key 4), ratios against it."""
  table, logits, _, rewards, grad_reward, _ = problem()
  old = logits + OFF_POLICY_NOISE * jax.random.normal(jax.random.key(4), logits.shape)
  configs = [tabular.EstimatorConfig("rloo", a, ratio_level=r, clip_eps=c)
             for a in ("sequence_sum", "sequence_mean")
             for r, c in ((None, None), ("full", None), ("token", None), ("token", 0.2),
                          ("sequence", None), ("sequence", 0.2))]
  rows = _run(configs, table, logits[None], rewards[None], (grad_reward[None], None),
              EXACT_GROUP_SIZES, num_groups, old_logits=old[None])
  for row, config in zip(rows, configs, strict=True):
    if config.ratio_level is None:  # the on-policy estimator, fed stale samples
      row["expected"] = "biased: no importance weight"
  return rows


def audit_two_prompts(num_groups: int) -> list[dict]:
  """Two prompts in one batch: the 16 cells against E[R], exact at G = 2 (31^4 batches)."""
  table, logits, rewards, grad = two_prompts()
  configs = [tabular.EstimatorConfig(e, a) for e in ESTIMATORS for a in AGGREGATIONS]
  return _run(configs, table, logits, rewards, (grad, None), (2,), num_groups)


def bias(result: dict, kind: str = "relative_bias") -> float:
  """The exact value where enumerated, else the Monte Carlo one."""
  return result.get(f"exact_{kind}", result[f"mc_{kind}"])


# The two-prompt rows the figure shows beside the one-prompt ones.
FIGURE_TWO_PROMPTS = ("rloo / sequence_sum", "rloo / token_mean", "rloo / sequence_mean",
                      "grpo / sequence_sum", "grpo / sequence_mean", "dr_grpo / constant")


def plot(rows: list[dict], figure: pathlib.Path, two_prompt_rows=(), off_policy_rows=()) -> None:
  shown = [r for r in two_prompt_rows if r["cell"] in FIGURE_TWO_PROMPTS]
  rows = list(rows) + [{**r, "cell": "2 prompts: " + r["cell"]} for r in shown]
  rows += [{**r, "cell": "stale: " + r["cell"]} for r in off_policy_rows
           if r["aggregation"] == "sequence_sum"]
  labels = [r["cell"] for r in rows]
  sizes = [str(g) for g in GROUP_SIZES]
  rel = np.array([[bias(r["by_group_size"][g]) for g in sizes] for r in rows])
  angle = np.array([[bias(r["by_group_size"][g], "direction_error") for g in sizes]
                    for r in rows])
  std = np.array([[r["by_group_size"][g]["relative_std"] for g in sizes] for r in rows])
  fig, axes = plt.subplots(1, 3, figsize=(13, 0.3 * len(rows) + 1.8), sharey=True)
  panels = [
      (axes[0], rel, "relative bias ||E ĝ − c∇|| / ||c∇||\n(c: the scale theory expects)",
       "Reds", matplotlib.colors.LogNorm(1e-3, 1.0)),
      (axes[1], angle, "direction error tan∠(E ĝ, ∇)\n(no learning rate removes it)",
       "Oranges", matplotlib.colors.LogNorm(1e-3, 1.0)),
      (axes[2], std, "relative std of one group's estimate\nsqrt(tr Cov ĝ) / ||c∇||",
       "Blues", matplotlib.colors.LogNorm(max(std.min(), 1e-2), std.max())),
  ]
  for ax, values, title, cmap, norm in panels:
    ax.imshow(np.clip(values, norm.vmin, None), cmap=cmap, norm=norm, aspect="auto")
    for i in range(values.shape[0]):
      for j in range(values.shape[1]):
        ax.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(sizes)), [f"G={g}" for g in sizes])
    ax.set_title(title, fontsize=9)
  axes[0].set_yticks(range(len(labels)), labels, fontsize=7)
  for i, r in enumerate(rows):
    if r["expected"].startswith("unbiased"):
      axes[0].get_yticklabels()[i].set_color("darkgreen")
  fig.suptitle("Sequence score-function estimators on an enumerable policy: G = 2, 4 exact "
               "(all 31^G groups; 2 prompts: G = 2), else Monte Carlo\n"
               "green: unbiased in theory; stale: sampled from an older policy", 
               fontsize=10)
  fig.tight_layout()
  fig.savefig(figure, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--groups", type=int, default=20000,
                      help="Monte Carlo groups per group size (fixed keys)")
  parser.add_argument("--out", default=None)
  parser.add_argument("--replot", default=None, help="redraw the figure of this JSON")
  args = parser.parse_args()
  if args.replot:
    import json

    result = json.loads(pathlib.Path(args.replot).read_text())
    plot(result["cells"], pathlib.Path(args.replot).with_suffix(".png"),
         result["two_prompts"]["cells"], result["off_policy"]["cells"])
    return
  rows = audit(args.groups)
  print("two prompts, rewards R and R / 4:")
  batch_rows = audit_two_prompts(args.groups)
  print("off-policy, sampled from logits + 0.5 N(0, 1):")
  off_rows = audit_off_policy(args.groups)
  path = common.write("sequence_audit", {
      "num_groups": args.groups, "group_sizes": list(GROUP_SIZES),
      "exact_group_sizes": list(EXACT_GROUP_SIZES), "beta": BETA,
      "problem": "2 tokens + EOS, at most 4 tokens (15 states, 31 sequences); "
                 "R = #1 - 0.5 #2 + 0.5 [ends with EOS]; logits ~ N(0, 1) (key 0), "
                 "reference logits ~ N(0, 1) (key 1)",
      "cells": rows,
      "two_prompts": {
          "problem": "two prompts in one batch, each its own table (logits keys 0 and 3), "
                     "rewards R and R / 4; G completions each; exact at G = 2",
          "cells": batch_rows},
      "off_policy": {
          "problem": "completions drawn from old logits = logits + 0.5 N(0, 1) (key 4), "
                     "the gradient at logits; RLOO advantages; 'full' weighs each sequence "
                     "by pi(y) / pi_old(y), 'token' and 'sequence' are policy_gradient_loss's "
                     "ratios (PPO, GSPO), optionally clipped at 0.2; exact at G = 2, 4",
          "cells": off_rows}}, args.out)
  plot(rows, path.with_suffix(".png"), batch_rows, off_rows)
  print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
  main()
