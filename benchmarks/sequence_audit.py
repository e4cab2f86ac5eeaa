"""Exact bias of every sequence policy-gradient variant the library ships, on an enumerable policy.

A tabular autoregressive policy over two tokens plus EOS, at most 4 tokens long (15 states,
45 logits, 31 sequences, `reinforce_jax.sequence.tabular`), with a reward that depends on
content and length. The exact gradients of `E[R]`, of `E[R] - beta KL(pi || pi_ref)` and of
DAPO's length-shaped `E[R + R_length]` are sums over the 31 sequences. Each cell is a loss
built from the library's parts (`advantages`, `importance`, `aggregation`, `regularizers`,
`presets`, `off_policy`, `shaping`), a pure function of the batch (`tabular.Batch`), so the
audit measures exactly what ships. For each cell, one group's gradient estimate at
G = 2, 4, 16:

* exactly, at G = 2 and 4, by enumerating all 31^G ordered groups (961 and 923521): the
  relative bias `||E g_hat - c g|| / ||c g||` and the cosine of `E g_hat` to `g`, and its
  direction error `tan angle(E g_hat, g)`, the part of the bias that no learning rate removes;
* by Monte Carlo with fixed keys at every G (`--groups` groups per G, shared by every cell):
  the bias in standard errors (max over the 45 components of `|mean - c g| / se`), the
  relative bias, the cosine, and the relative standard deviation `sqrt(tr Cov[g_hat]) /
  ||c g||` of one group's estimate.

Sections: advantages, aggregation rows, shaping (dynamic sampling, overlong shaping and
filtering, top-entropy tokens, Clip-Cov, KL-Cov), TRL's loss types and tunix's loss modes, the
ratio surrogates at the on-policy point (ratio 1, gradient through it), the KL forms; then
completions drawn from a stale policy (`logits + 0.5 N(0, 1)`), the gradient wanted at
`logits`: ratio surrogates, TRL/tunix presets, sampler corrections (TIS, MIS, IcePop,
DeepSeek-V3.2's off-policy mask) and the KL (unbiased KL against k3); and a batch of two
prompts (each its own table, the second paying a quarter of the first's rewards), exact at
G = 2 (31^4 batches).

Every section runs in two settings that differ in how much lengths vary: `base` (logits
N(0, 1): E|y| = 2.4, std 1.3) and `long` (EOS logit - 3: E|y| = 3.9, std 0.6, 87% truncated).

`c` is the scale theory expects (`(G - 1) / G` for a group-mean baseline, `1 / L` for the
`"constant"` aggregation, `1 / (1 - q_G)` for dynamic sampling, with `q_G` the probability
that a group's rewards are all equal, 1 otherwise); a cell is unbiased when `E g_hat = c g`
(a known scale only rescales the learning rate), biased when no constant makes it so.

    python benchmarks/sequence_audit.py [--groups 20000]

writes benchmarks/results/sequence_audit-<device>.json, .png (the original estimators: bias,
direction error, std) and sequence_audit-table-<device>.png (every cell, both settings);
`--replot JSON` redraws both.

    python benchmarks/sequence_audit.py --cells PATTERN --merge JSON

measures only the cells whose names contain PATTERN or match it as a regular expression (in
every section), with the JSON's number of groups and the same fixed keys, so the new numbers
are comparable with the rest; their entries replace the old ones in the JSON (or in `--out`),
everything else is kept, and the JSON's `remeasured` list records which cells were measured
again, when and with what. Redraw the figures afterwards with `--replot`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import pathlib
import re
import time
from collections.abc import Callable

import common
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from reinforce_jax.sequence import advantages as adv_lib
from reinforce_jax.sequence import (
  aggregation,
  importance,
  off_policy,
  presets,
  regularizers,
  shaping,
  tabular,
)
from reinforce_jax.sequence.losses import AGGREGATIONS, ESTIMATORS, policy_gradient_loss

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GROUP_SIZES = (2, 4, 16)
EXACT_GROUP_SIZES = (2, 4)
OFF_POLICY_NOISE = 0.5
BETA = 0.5
KL_FORMS = tuple((k, a) for k in ("k1", "k2", "k3") for a in ("reward", "loss"))
# Setting -> EOS logit offset: how much completion lengths vary.
SETTINGS = {"base": 0.0, "long": -3.0}
OVERLONG = {"max_length": 4, "cache_length": 2}  # DAPO's L_max, L_cache on 4-token sequences
UNBIASED_TOL = 1e-4  # exact relative bias below this: unbiased (float32 sums are ~1e-6)
KEY = jax.random.key(11)  # Clip-Cov's key (its draw is averaged exactly, see `_clip_cov`)

# What theory promises for the original cells (see reinforce_jax/sequence/losses.py).
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


# --- the problem ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
  """One setting: `[B, states, V]` logits (B prompts), `[B, S]` rewards, exact gradients."""

  table: tabular.SequenceTable
  logits: jax.Array
  ref_logits: jax.Array
  old_logits: jax.Array
  rewards: jax.Array
  truths: dict  # target name -> [B, states, V] exact gradient of the mean over prompts
  equal_mass: dict  # G -> [B] probability that a group's G rewards are all equal


def _equal_mass(logits, table, rewards, g) -> np.ndarray:
  """`q_G` per prompt: sum over reward values v of P(R = v)^G."""
  out = []
  for lg, r in zip(logits, rewards, strict=True):
    p = np.exp(np.asarray(tabular.sequence_log_probs(lg, table), np.float64))
    values = np.asarray(r)
    out.append(sum(p[values == v].sum() ** g for v in np.unique(values)))
  return np.asarray(out)


def problem(setting: str = "base", prompts: int = 1) -> Problem:
  """The table, policy/reference/stale logits, rewards and exact gradients of a setting.

  Prompt 0: logits N(0, 1) (key 0), rewards R; prompt 1 (with `prompts=2`): logits key 3,
  rewards R / 4. The EOS logit is shifted by `SETTINGS[setting]` at every state.
  """
  table, num_states = tabular.enumerate_sequences(vocab_size=3, max_length=4)
  keys = (0, 3)[:prompts]
  logits = jnp.stack([jax.random.normal(jax.random.key(k), (num_states, 3)) for k in keys])
  logits = logits.at[:, :, 0].add(SETTINGS[setting])
  ref = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (num_states, 3)), logits.shape)
  old = logits + OFF_POLICY_NOISE * jax.random.normal(jax.random.key(4), logits.shape[1:])
  base = tabular.content_and_length_reward(table)
  rewards = jnp.stack([base, 0.25 * base][:prompts])
  shaped = rewards + shaping.overlong_penalty(table.lengths, **OVERLONG)[None]

  def mean_grad(r, beta=0.0):
    def total(theta):
      values = [tabular.objective(theta[b], table, r[b], beta=beta,
                                  ref_logits=ref[b] if beta else None) for b in range(prompts)]
      return jnp.mean(jnp.stack(values))
    return jax.grad(total)(logits)

  truths = {"reward": mean_grad(rewards), "kl": mean_grad(rewards, BETA),
            "shaped": mean_grad(shaped)}
  equal = {g: _equal_mass(logits, table, rewards, g) for g in GROUP_SIZES}
  return Problem(table, logits, ref, old, rewards, truths, equal)


def length_stats(prob: Problem) -> dict:
  p = np.exp(np.asarray(tabular.sequence_log_probs(prob.logits[0], prob.table), np.float64))
  lengths = np.asarray(prob.table.lengths, np.float64)
  mean = float(p @ lengths)
  return {"mean_length": mean,
          "length_std": float(np.sqrt(p @ (lengths - mean) ** 2)),
          "truncated": float(p[~np.asarray(prob.table.terminated)].sum())}


# --- the cells ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
  """One audited estimator.

  `loss`: an `EstimatorConfig` (with `beta`) or a `tabular.LossFn`. `theory`: what theory
  says, starting "unbiased" or "biased". `scale`: `c(G, prob)` for a cell unbiased for a
  known scale (`scale_label` names it). `target`: which exact gradient (`"reward"`, `"kl"`,
  `"shaped"`). `accept`: groups kept (dynamic sampling), or None. `legacy`: one of the
  original cells (drawn in the three-panel figure too).
  """

  name: str
  section: str
  loss: object
  theory: str
  scale: Callable[[int, Problem], float] = lambda g, prob: 1.0
  scale_label: str = "1"
  target: str = "reward"
  accept: Callable | None = None
  legacy: bool = False


def _group_mean_scale(g, prob):
  return (g - 1) / g


def _constant_scale(g, prob):
  return 1 / prob.table.tokens.shape[1]


def _legacy_scale(config):
  def scale(g, prob):
    c = 1.0
    if config.estimator == "dr_grpo":
      c *= (g - 1) / g
    if config.aggregation == "constant":
      c /= prob.table.tokens.shape[1]
    return c
  return scale


def _legacy_label(config) -> str:
  parts = []
  if config.estimator == "dr_grpo":
    parts.append("(G-1)/G")
  if config.aggregation == "constant":
    parts.append("1/L")
  return " x ".join(parts) or "1"


def _expected(config) -> str:
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


def name(config) -> str:
  kl = "" if config.kl is None else f" + {config.kl} as {config.kl_as}"
  ratio = ""
  if config.ratio_level is not None:
    ratio = f", {config.ratio_level} ratio"
    ratio += "" if config.clip_eps is None else f" clipped at {config.clip_eps:g}"
  return f"{config.estimator} / {config.aggregation}{kl}{ratio}"


def _legacy(config, section, theory=None) -> Cell:
  return Cell(name(config), section, config, theory or _expected(config),
              _legacy_scale(config), _legacy_label(config),
              "reward" if config.kl is None else "kl", legacy=True)


def _rloo(rewards):
  return adv_lib.relative_advantages(rewards, baseline="loo", scale="none").reshape(-1)


def _pg(batch, adv, mode="sequence_sum", **kw):
  kw.setdefault("mask", batch.mask)
  mask = kw.pop("mask")
  return policy_gradient_loss(batch.log_probs, adv, mask, aggregation=mode, **kw)


def _with_advantages(advantages: Callable, mode="sequence_sum", rows="batch"):
  def loss(batch):
    return _pg(batch, advantages(batch.rewards).reshape(-1), mode, rows=rows)
  return loss


def _dynamic(advantages: Callable):
  def loss(batch):
    keep = shaping.dynamic_sampling_mask(batch.rewards).keep
    weights = jnp.broadcast_to(jnp.repeat(keep, batch.rewards.shape[1])[:, None],
                               batch.mask.shape).astype(batch.log_probs.dtype)
    return _pg(batch, advantages(batch.rewards).reshape(-1), weights=weights)
  return loss


def _keep(rewards):
  return shaping.dynamic_sampling_mask(rewards).keep


def _dynamic_scale(g, prob):
  return float(1 / (1 - prob.equal_mass[g][0]))


def _overlong(batch):
  lengths = jnp.sum(batch.mask, axis=1)
  shaped = batch.rewards + shaping.overlong_penalty(lengths, **OVERLONG).reshape(
      batch.rewards.shape)
  return _pg(batch, _rloo(shaped))


def _truncated(rows):
  def loss(batch):
    kept, _ = shaping.truncated_completion_mask(batch.tokens, batch.mask, eos_id=0)
    return _pg(batch, _rloo(batch.rewards), mask=kept, rows=rows)
  return loss


def _top_entropy(batch):
  kept = shaping.top_entropy_mask(batch.entropy, batch.mask, fraction=0.2)
  return _pg(batch, _rloo(batch.rewards), mask=kept)


def _clip_cov(batch):
  """Clip-Cov (paper defaults), its uniform draw of the clipped tokens averaged exactly.

  `clip_cov` draws `k = min(max(floor(r n), 1), #candidates)` of the candidates uniformly;
  each candidate is dropped with probability `k / #candidates`. With `fraction=1` the budget
  covers every candidate, so that call's dropped tokens are exactly the candidates.
  """
  adv = _rloo(batch.rewards)
  every = shaping.clip_cov(KEY, batch.log_probs, adv, batch.mask, fraction=1.0)
  drawn = shaping.clip_cov(KEY, batch.log_probs, adv, batch.mask)
  candidates = batch.mask & ~every.mask
  tokens = jnp.sum(batch.mask)
  chosen = jnp.round(drawn.metrics["fraction_clipped"] * tokens)
  dropped = chosen / jnp.maximum(every.metrics["num_candidates"], 1)
  weights = jnp.where(candidates, 1 - dropped, 1.0).astype(batch.log_probs.dtype)
  return _pg(batch, adv, weights=weights)


def _kl_cov(batch):
  adv = _rloo(batch.rewards)
  old = batch.log_probs if batch.old_log_probs is None else batch.old_log_probs
  penalty, _ = shaping.kl_cov(batch.log_probs, old, adv, batch.mask)
  return _pg(batch, adv) + aggregation.aggregate(penalty, batch.mask, mode="sequence_sum")


def _trl(loss_type, scale_rewards="none", rloo=False, **kw):
  """TRL's loss with TRL's advantages (or RLOO's, to isolate a KL term)."""
  fn = presets.trl_loss(loss_type, **kw)

  def loss(batch):
    adv = _rloo(batch.rewards) if rloo else presets.trl_advantages(
        batch.rewards, scale_rewards=scale_rewards).reshape(-1)
    return fn(batch.log_probs, batch.old_log_probs, batch.ref_log_probs, adv, batch.mask)[0]
  return loss


def _trl_cell(loss_type, section, theory, label=None, **kw) -> Cell:
  """A TRL loss type with TRL's mean-baseline advantages (`scale_rewards="none"`), so that
  the expected scale is `(G - 1) / G` (times `1 / L` for `"dr_grpo"`); CISPO with its
  recommended cap `epsilon_high=5` (TRL's default would cap the weight at `epsilon`)."""
  if loss_type == "cispo":
    kw.setdefault("epsilon_high", 5.0)
  if loss_type == "dr_grpo":
    scale = dict(scale=lambda g, p: _group_mean_scale(g, p) * _constant_scale(g, p),
                 scale_label="(G-1)/(G L)")
  else:
    scale = dict(scale=_group_mean_scale, scale_label="(G-1)/G")
  default = f"TRL {loss_type}" + (" (eps_high 5)" if loss_type == "cispo" else "")
  return Cell(label or default, section, _trl(loss_type, **kw), theory, **scale)


def _tunix(mode, algo="grpo", estimator="rloo", with_ref=False, **kw):
  fn = presets.tunix_loss(mode, algo, **kw)

  def loss(batch):
    adv = presets.tunix_advantages(batch.rewards, advantage_estimator=estimator).reshape(-1)
    ref = batch.ref_log_probs if with_ref else None
    return fn(batch.log_probs, batch.old_log_probs, ref, adv, batch.mask)[0]
  return loss


def _ratio_loss(kind: str, mode="sequence_sum", **kw):
  """A ratio surrogate against `batch.old_log_probs` (on-policy: ratio 1), RLOO advantages."""
  level = kw.pop("level", "token")

  def loss(batch):
    adv = _rloo(batch.rewards)
    lp, old, mask = batch.log_probs, batch.old_log_probs, batch.mask
    if kind == "ppo":
      ratio = importance.log_ratio(lp, old, mask, level=level)
      objective = importance.ppo_objective(ratio, adv, mask, **kw)
    elif kind == "cispo":
      ratio = importance.log_ratio(lp, old, mask)
      objective = importance.cispo_objective(lp, ratio, adv, mask, **kw)
    elif kind == "sapo":
      objective = importance.sapo_objective(importance.log_ratio(lp, old, mask), adv, mask)
    elif kind == "vespo":
      objective = importance.vespo_objective(lp, importance.log_ratio(lp, old, mask), adv, mask)
    else:  # gmpo
      objective = importance.gmpo_objective(lp, old, adv, mask, **kw)
    return -aggregation.aggregate(objective, mask, mode=mode)
  return loss


def _exact_weight(batch, adv, mask=None):
  """RLOO-style surrogate with each sequence's exact weight pi(y) / pi_sampler(y)."""
  mask = batch.mask if mask is None else mask
  if batch.old_log_probs is None:
    return _pg(batch, adv, mask=mask)
  correction = off_policy.importance_correction(batch.log_probs, batch.old_log_probs,
                                                batch.mask, mode="truncate", level="sequence")
  return _pg(batch, adv, mask=mask, weights=correction.weights)


def _sampler_correction(make):
  """A sampler correction's weights (pi_old = the current policy, mu = the sampler)."""
  def loss(batch):
    correction = make(jax.lax.stop_gradient(batch.log_probs), batch.old_log_probs,
                      batch.mask)
    return _pg(batch, _rloo(batch.rewards), weights=correction.weights)
  return loss


def _off_policy_mask(threshold):
  def loss(batch):
    adv = _rloo(batch.rewards)
    keep = off_policy.off_policy_sequence_mask(batch.log_probs, batch.old_log_probs, adv,
                                               batch.mask, threshold=threshold)
    return _exact_weight(batch, adv, mask=keep.mask)
  return loss


def _kl_term(kind):
  """Exact-weight RLOO surrogate + beta * sequence_sum(per-token KL) (k3 or unbiased KL)."""
  def loss(batch):
    old = batch.log_probs if batch.old_log_probs is None else batch.old_log_probs
    if kind == "unbiased":
      kl = off_policy.unbiased_kl(batch.log_probs, old, batch.ref_log_probs, batch.mask)
    else:
      kl = regularizers.kl_penalty(batch.log_probs, batch.ref_log_probs, batch.mask,
                                   estimator="k3")
    return _exact_weight(batch, _rloo(batch.rewards)) + BETA * aggregation.aggregate(
        kl, batch.mask, mode="sequence_sum")
  return loss


def _grpo(ddof=0, scale="group"):
  return lambda r: adv_lib.relative_advantages(r, baseline="mean", scale=scale, ddof=ddof)


def _rpp(baseline):
  return lambda r: adv_lib.reinforce_pp_advantages(r, baseline=baseline)


def _remax(batch):
  return _pg(batch, shaping.remax_advantages(batch.rewards, batch.greedy_rewards).reshape(-1))


KL_SECTION = "KL (vs grad(E[R] - beta KL))"
LENGTH_BIAS = "biased: 1/|y_i| weight"
TOKEN_BIAS = "biased: 1/sum_j |y_j| weight"
STD_BIAS = "biased: the std divisor depends on r_i"
EXACT_WEIGHT = tabular.EstimatorConfig("rloo", "sequence_sum", ratio_level="full")


def one_prompt_cells() -> list[Cell]:
  """Every on-policy cell against one prompt's exact gradient."""
  out = [_legacy(tabular.EstimatorConfig(e, a), "estimator x aggregation")
         for e in ESTIMATORS for a in AGGREGATIONS]
  adv = "advantages"
  out += [
      Cell("grpo, ddof=1 (TRL, tunix)", adv, _with_advantages(_grpo(1)),
           STD_BIAS + "; sqrt((G-1)/G) x ddof=0"),
      Cell("grpo, scale=batch", adv, _with_advantages(_grpo(0, "batch")),
           STD_BIAS + "; = group std for one prompt"),
      Cell("reinforce++ (batch baseline)", adv, _with_advantages(_rpp("batch")),
           "biased: batch std; = grpo for one prompt"),
      Cell("reinforce++-baseline (group)", adv, _with_advantages(_rpp("group")),
           "biased: batch std; = grpo for one prompt"),
      Cell("remax (greedy baseline)", adv, _remax, "unbiased: a constant baseline"),
      Cell("dynamic sampling + rloo", "shaping", _dynamic(_rloo),
           "unbiased for 1/(1 - q_G): dropped groups had zero gradient",
           _dynamic_scale, "1/(1-q_G)", accept=_keep),
      Cell("dynamic sampling + grpo", "shaping", _dynamic(_grpo()), STD_BIAS, accept=_keep),
      Cell("dynamic sampling + none", "shaping",
           _dynamic(lambda r: adv_lib.relative_advantages(r, baseline="none", scale="none")),
           "biased: equal-reward groups carried r * grad log pi", accept=_keep),
      Cell("overlong shaping + rloo (vs shaped R)", "shaping", _overlong,
           "unbiased for E[R + R_length]: changes the objective", target="shaped"),
      Cell("overlong shaping + rloo (vs R)", "shaping", _overlong,
           "biased: a different objective"),
      Cell("overlong filtering + rloo, rows=batch", "shaping", _truncated("batch"),
           "biased: truncated completions dropped"),
      Cell("overlong filtering + rloo, rows=nonempty", "shaping", _truncated("nonempty"),
           "biased: and 1/#kept rows"),
      Cell("top-entropy 20% tokens + rloo", "shaping", _top_entropy,
           "biased: low-entropy tokens dropped"),
      Cell("Clip-Cov (r=2e-4, band (1, 5)) + rloo", "shaping", _clip_cov,
           "biased: high-covariance tokens dropped"),
      Cell("KL-Cov (r=2e-4, coef 1) + rloo", "shaping", _kl_cov,
           "unbiased: at ratio 1 the penalty's gradient is 0 (|x|'(0) taken as 0)"),
      Cell("rloo / sequence_sum, rows=nonempty", "aggregation rows",
           _with_advantages(_rloo, rows="nonempty"), "unbiased: no empty rows here"),
      Cell("rloo / sequence_mean, rows=nonempty", "aggregation rows",
           _with_advantages(_rloo, "sequence_mean", "nonempty"), LENGTH_BIAS),
      Cell("rloo / constant, rows=nonempty", "aggregation rows",
           _with_advantages(_rloo, "constant", "nonempty"), "unbiased for 1/L",
           _constant_scale, "1/L"),
  ]
  trl_theory = {"grpo": LENGTH_BIAS, "sapo": LENGTH_BIAS, "bnpo": TOKEN_BIAS,
                "dapo": TOKEN_BIAS, "cispo": TOKEN_BIAS, "vespo": TOKEN_BIAS,
                "dr_grpo": "unbiased for (G-1)/(G L)", "luspo": "unbiased for (G-1)/G"}
  for loss_type in presets.TRL_LOSS_TYPES:
    out.append(_trl_cell(loss_type, "TRL presets", trl_theory[loss_type]))
  out += [
      _trl_cell("grpo", "TRL presets", LENGTH_BIAS, "TRL grpo, sequence ratio (GSPO)",
                importance_sampling_level="sequence"),
      _trl_cell("luspo", "TRL presets", "unbiased for (G-1)/G",
                "TRL luspo, sequence ratio (LUSPO)", importance_sampling_level="sequence"),
      Cell("TRL defaults: dapo, scale_rewards=group", "TRL presets",
           _trl("dapo", scale_rewards="group"), STD_BIAS + "; " + TOKEN_BIAS),
  ]
  tunix_theory = {"token-mean": (TOKEN_BIAS,), "sequence-mean-token-mean": (LENGTH_BIAS,),
                  "sequence-mean-token-scale": ("unbiased for 1/L", _constant_scale, "1/L"),
                  "seq-mean-token-sum": ("unbiased",),
                  "sequence-mean-token-sum-norm": ("unbiased",)}
  for mode in presets.TUNIX_LOSS_AGG_MODES:
    out.append(Cell(f"tunix {mode} (rloo)", "tunix presets", _tunix(mode),
                    *tunix_theory[mode]))
  out += [
      Cell("tunix gspo-token, seq-mean-token-sum (rloo)", "tunix presets",
           _tunix("seq-mean-token-sum", "gspo-token"), "unbiased"),
      Cell("tunix defaults: grpo, sequence-mean-token-mean", "tunix presets",
           _tunix("sequence-mean-token-mean", estimator="grpo"), STD_BIAS + "; " + LENGTH_BIAS),
  ]
  out += ratio_cells("ratio surrogates, on-policy")
  out += [_legacy(tabular.EstimatorConfig(e, "sequence_sum", k, how), KL_SECTION)
          for e in ("none", "rloo") for k, how in KL_FORMS]
  # GRPO as DeepSeekMath published it: std-normalised, 1/|y| per sequence, k3 in the loss.
  out.append(_legacy(tabular.EstimatorConfig("grpo", "sequence_mean", "k3", "loss"), KL_SECTION))
  out += [
      Cell("rloo + unbiased KL as loss", KL_SECTION, _kl_term("unbiased"),
           "biased: per-token KL, prefixes fixed (= k2 on-policy)", target="kl"),
      Cell("TRL luspo (rloo), beta, bias-corrected k3", KL_SECTION,
           _trl("luspo", rloo=True, beta=BETA),
           "biased: per-token KL, prefixes fixed", target="kl"),
      Cell("TRL luspo (rloo), beta, plain k3", KL_SECTION,
           _trl("luspo", rloo=True, beta=BETA, use_bias_correction_kl=False),
           "biased: forward per-token KL", target="kl"),
  ]
  for mode in regularizers.KL_NAMES:
    out.append(Cell(f"tunix seq-mean-token-sum, {mode}", KL_SECTION,
                    _tunix("seq-mean-token-sum", with_ref=True, beta=BETA, kl_loss_mode=mode),
                    EXPECTED_KL[(regularizers.KL_NAMES[mode], "loss")], target="kl"))
  return out


def ratio_cells(section: str) -> list[Cell]:
  """Ratio surrogates (RLOO advantages): exact on-policy unless the aggregation is not."""
  on = section.endswith("on-policy")
  ok = "unbiased: ratio 1, gradient A grad log pi" if on else "biased: not pi(y)/pi_old(y)"
  gspo = dict(level="sequence", eps_low=3e-4, eps_high=4e-4)
  return [
      Cell("PPO token ratio, clip 0.2", section, _ratio_loss("ppo", eps_low=0.2), ok),
      Cell("PPO clip-higher (0.2, 0.28)", section,
           _ratio_loss("ppo", eps_low=0.2, eps_high=0.28), ok),
      Cell("PPO two-sided, delta 4", section, _ratio_loss("ppo", eps_low=0.2, delta=4.0), ok),
      Cell("PPO dual clip, c 3", section, _ratio_loss("ppo", eps_low=0.2, dual_clip=3.0), ok),
      Cell("CISPO (cap 5)", section, _ratio_loss("cispo", high=5.0), ok),
      Cell("SAPO", section, _ratio_loss("sapo"), ok),
      Cell("VESPO", section, _ratio_loss("vespo"), ok),
      Cell("GMPO (eps 0.4, sequence_mean)", section,
           _ratio_loss("gmpo", "sequence_mean", eps_low=0.4), LENGTH_BIAS),
      Cell("GSPO (3e-4, 4e-4, sequence_mean)", section,
           _ratio_loss("ppo", "sequence_mean", **gspo), LENGTH_BIAS),
      Cell("LUSPO (GSPO, sequence_sum)", section, _ratio_loss("ppo", **gspo), ok),
  ]


def stale_cells() -> list[Cell]:
  """Completions from the stale policy; the gradient wanted at the current one."""
  section = "stale: ratio surrogates"
  out = []
  for a in ("sequence_sum", "sequence_mean"):
    for r, c in ((None, None), ("full", None), ("token", None), ("token", 0.2),
                 ("sequence", None), ("sequence", 0.2)):
      config = tabular.EstimatorConfig("rloo", a, ratio_level=r, clip_eps=c)
      theory = "biased: no importance weight" if r is None and a == "sequence_sum" else None
      out.append(_legacy(config, section, theory))
  out += ratio_cells(section)[1:]
  fix = "stale: sampler corrections"
  out += [
      Cell("TIS token, cap 2", fix, _sampler_correction(
          lambda lp, mu, m: off_policy.truncated_importance_sampling(lp, mu, m, cap=2.0)),
           "biased: per-token ratios"),
      Cell("TIS sequence, cap 2", fix, _sampler_correction(
          lambda lp, mu, m: off_policy.truncated_importance_sampling(
              lp, mu, m, cap=2.0, level="sequence")), "biased: truncation"),
      Cell("TIS sequence, no cap (exact weight)", fix, _sampler_correction(
          lambda lp, mu, m: off_policy.importance_correction(
              lp, mu, m, mode="truncate", level="sequence")), "unbiased"),
      Cell("MIS token, cap 2", fix, _sampler_correction(
          lambda lp, mu, m: off_policy.masked_importance_sampling(lp, mu, m, cap=2.0)),
           "biased: per-token ratios, masking"),
      Cell("MIS sequence, cap 2", fix, _sampler_correction(
          lambda lp, mu, m: off_policy.masked_importance_sampling(
              lp, mu, m, cap=2.0, level="sequence")), "biased: masking"),
      Cell("IcePop token (0.5, 5)", fix, _sampler_correction(off_policy.icepop),
           "biased: per-token ratios, masking"),
      Cell("exact weight + off-policy mask 0.5 (DeepSeek-V3.2)", fix, _off_policy_mask(0.5),
           "unbiased here: no sequence's mean log(mu/pi) reaches 0.5 (max 0.18, 0.26)"),
      Cell("exact weight + off-policy mask 0.1", fix, _off_policy_mask(0.1),
           "biased: drops negative far-off samples"),
  ]
  presets_section = "stale: presets"
  for loss_type in ("grpo", "dapo", "dr_grpo", "luspo", "cispo", "sapo", "vespo"):
    out.append(_trl_cell(loss_type, presets_section, "biased: clipped token ratios"
                         if loss_type in ("dr_grpo", "luspo") else "biased"))
  out += [
      Cell("tunix sequence-mean-token-mean", presets_section,
           _tunix("sequence-mean-token-mean"), "biased"),
      Cell("tunix gspo-token, seq-mean-token-sum", presets_section,
           _tunix("seq-mean-token-sum", "gspo-token"), "biased"),
  ]
  kl = "stale: KL (vs grad(E[R] - beta KL))"
  out += [
      Cell("exact weight, k1 as reward", kl, tabular.EstimatorConfig(
          "rloo", "sequence_sum", "k1", "reward", ratio_level="full"), "unbiased",
           target="kl"),
      Cell("exact weight + k3 as loss", kl, _kl_term("k3"), "biased: forward KL, stale",
           target="kl"),
      Cell("exact weight + unbiased KL as loss", kl, _kl_term("unbiased"),
           "biased: per-token KL, prefixes fixed", target="kl"),
  ]
  return out


def two_prompt_cells() -> list[Cell]:
  section = "two prompts (exact at G = 2)"
  out = [_legacy(tabular.EstimatorConfig(e, a), section)
         for e in ESTIMATORS for a in AGGREGATIONS]
  out += [
      Cell("grpo, ddof=1", section, _with_advantages(_grpo(1)), STD_BIAS),
      Cell("grpo baseline, scale=batch", section, _with_advantages(_grpo(0, "batch")),
           "biased: batch std; one scale for both prompts"),
      Cell("reinforce++ (batch baseline)", section, _with_advantages(_rpp("batch")),
           "biased: batch std"),
      Cell("reinforce++-baseline (group)", section, _with_advantages(_rpp("group")),
           "biased: batch std"),
      Cell("remax (greedy baseline)", section, _remax, "unbiased"),
      Cell("dynamic sampling + rloo (each group redrawn)", section, _dynamic(_rloo),
           "biased: prompt b weighted 1/(1 - q_b)", accept=_keep),
  ]
  return out


# --- measuring ------------------------------------------------------------------------------


def _cos(a, b) -> float:
  return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _direction_error(mean, truth) -> float:
  """`tan` of the angle between `mean` and `truth`: the bias no learning rate removes.

  `||mean - p|| / ||p||` with `p` the projection of `mean` on `truth`; 0 when `mean` is any
  positive multiple of `truth`.
  """
  along = np.sum(mean * truth) / np.sum(truth * truth) * truth
  return float(np.linalg.norm(mean - along) / np.linalg.norm(along))


def _measure(est, truth, c, exact=None) -> dict:
  """Bias and spread of `est` ([K, D] estimates) against `c * truth`."""
  num_groups = est.shape[0]
  target = c * truth
  mean = est.mean(0)
  se = est.std(0, ddof=1) / np.sqrt(num_groups)
  se = np.where(se > 0, se, np.inf)
  z = (mean - target) / se
  per_draw_cos = np.sum(est * truth, 1) / (
      np.linalg.norm(est, axis=1) * np.linalg.norm(truth) + 1e-30)
  result = {
      "scale": c,
      "mc_groups": int(num_groups),
      "mc_max_abs_z": float(np.max(np.abs(z))),
      "mc_mean_z2": float(np.mean(z**2)),
      "mc_relative_bias": float(np.linalg.norm(mean - target) / np.linalg.norm(target)),
      "mc_noise_floor": float(np.linalg.norm(np.where(np.isfinite(se), se, 0))
                              / np.linalg.norm(target)),
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


def bias(result: dict, kind: str = "relative_bias") -> float:
  """The exact value where enumerated, else the Monte Carlo one."""
  return result.get(f"exact_{kind}", result[f"mc_{kind}"])


def _samples(prob: Problem, num_groups: int, stale: bool) -> dict:
  sampler = prob.old_logits if stale else prob.logits
  out = {}
  for g in GROUP_SIZES:
    keys = jax.random.split(jax.random.fold_in(jax.random.key(2), g), sampler.shape[0])
    out[g] = jnp.stack([tabular.sample(k, lg, prob.table, (num_groups, g))
                        for k, lg in zip(keys, sampler, strict=True)], axis=1)  # [K, B, G]
  return out


def measure_cell(cell: Cell, prob: Problem, samples: dict, exact_sizes, stale: bool) -> dict:
  truth = np.asarray(prob.truths[cell.target], np.float64).ravel()
  kw = dict(beta=BETA, ref_logits=prob.ref_logits,
            old_logits=prob.old_logits if stale else None)
  by_g = {}
  for g in GROUP_SIZES:
    idx = samples[g]
    if cell.accept is not None:
      kept = np.asarray(jax.vmap(lambda i: jnp.all(cell.accept(
          jax.vmap(lambda r, j: r[j])(prob.rewards, i))))(idx))
      idx = idx[kept]
    est = tabular.batch_gradients(prob.logits, prob.table, prob.rewards, idx, cell.loss, **kw)
    exact = None
    if g in exact_sizes:
      exact = np.asarray(tabular.exact_batch_expectation(
          prob.logits, prob.table, prob.rewards, g, cell.loss, accept=cell.accept, **kw),
          np.float64).ravel()
    by_g[str(g)] = _measure(np.asarray(est, np.float64).reshape(idx.shape[0], -1), truth,
                            cell.scale(g, prob), exact)
  return by_g


def classify(row: dict) -> str:
  """`unbiased`, `known scale` or `biased`, from the exact enumerations of every setting."""
  worst = max(r["exact_relative_bias"] for s in row["by_setting"].values()
              for r in s.values() if "exact_relative_bias" in r)
  if worst > UNBIASED_TOL:
    return "biased"
  return "unbiased" if row["scale_label"] == "1" else "known scale"


def run_section(cells, prompts: int, stale: bool, exact_sizes, num_groups: int) -> list[dict]:
  rows = [{"cell": c.name, "section": c.section, "expected": c.theory,
           "scale_label": c.scale_label, "target": c.target, "legacy": c.legacy,
           "by_setting": {}, "seconds": 0.0} for c in cells]
  for setting in SETTINGS:
    prob = problem(setting, prompts)
    samples = _samples(prob, num_groups, stale)
    for cell, row in zip(cells, rows, strict=True):
      start = time.perf_counter()
      row["by_setting"][setting] = measure_cell(cell, prob, samples, exact_sizes, stale)
      row["seconds"] += time.perf_counter() - start
      summary = " ".join(f"G={g}: {bias(r):.3g}"
                         for g, r in row["by_setting"][setting].items())
      print(f"[{setting}] {cell.name:<52} {summary}  [{time.perf_counter() - start:.1f}s]",
            flush=True)
  for row in rows:
    row["by_group_size"] = row["by_setting"]["base"]
    annotate(row)
  return rows


def annotate(row: dict) -> None:
  """Adds the measured classification and whether theory predicted it."""
  row["classification"] = classify(row)
  row["agrees_with_theory"] = (row["expected"].startswith("unbiased")
                               == (row["classification"] != "biased"))


# --- re-measuring some cells into an earlier run -------------------------------------------


# JSON key -> (the cells, prompts, stale sampler, exact group sizes), as `main` runs them.
SECTIONS = {
    "cells": (one_prompt_cells, 1, False, EXACT_GROUP_SIZES),
    "off_policy": (stale_cells, 1, True, EXACT_GROUP_SIZES),
    "two_prompts": (two_prompt_cells, 2, False, (2,)),
}


def section_rows(result: dict, key: str) -> list[dict]:
  """The rows of one section of a result (`key` in `SECTIONS`)."""
  return result["cells"] if key == "cells" else result[key]["cells"]


def matches(pattern: str, cell_name: str) -> bool:
  """Whether `pattern` is a substring of `cell_name` or a regular expression found in it."""
  if pattern in cell_name:
    return True
  try:
    return re.search(pattern, cell_name) is not None
  except re.error:
    return False


def _check_comparable(result: dict, groups: int | None) -> None:
  """Raises ValueError unless this script measures with the settings `result` was run with."""
  ours = {"group_sizes": list(GROUP_SIZES), "exact_group_sizes": list(EXACT_GROUP_SIZES),
          "beta": BETA}
  for field, value in ours.items():
    if result.get(field) != value:
      raise ValueError(f"--merge: the JSON has {field}={result.get(field)}, this script "
                       f"measures with {value}; rerun the whole audit instead")
  offsets = {s: v.get("eos_offset") for s, v in result.get("settings", {}).items()}
  if offsets != SETTINGS:
    raise ValueError(f"--merge: the JSON's settings (EOS offsets {offsets}) are not this "
                     f"script's {SETTINGS}; rerun the whole audit instead")
  if groups is not None and groups != result["num_groups"]:
    raise ValueError(f"--groups: {groups}, but the JSON was measured with "
                     f"{result['num_groups']} groups; leave --groups out to reuse them")


def remeasure(result: dict, pattern: str, groups: int | None = None,
              run: Callable = run_section) -> dict:
  """`result` with the cells whose names match `pattern` measured again.

  Each section's matching cells are measured with `result`'s number of groups and this
  script's fixed keys (the same samples as the run that wrote `result`); their rows replace
  the rows of the same name (a cell new to `result` is appended to its section) and
  `result["remeasured"]` gains a record of which cells, when, and on what.

  Args:
    result: a full run's JSON, as `main` writes it.
    pattern: a substring of the cell names, or a regular expression (`matches`).
    groups: Monte Carlo groups per G, or None for `result["num_groups"]`.
    run: measures a list of cells (`run_section`'s signature).

  Returns:
    A new result; `result` is left as it was.

  Raises:
    ValueError: if `pattern` matches no cell, or `result` was measured with other settings.
  """
  _check_comparable(result, groups)
  chosen = {key: [c for c in make() if matches(pattern, c.name)]
            for key, (make, *_) in SECTIONS.items()}
  if not any(chosen.values()):
    raise ValueError(f"--cells: {pattern!r} matches no cell name; the names are the "
                     "'cell' fields of the JSON (a substring or a regular expression)")
  merged = copy.deepcopy(result)
  start = time.perf_counter()
  measured = []
  for key, cells in chosen.items():
    if not cells:
      continue
    _, prompts, stale, exact = SECTIONS[key]
    rows = section_rows(merged, key)
    for row in run(cells, prompts, stale, exact, result["num_groups"]):
      where = [i for i, r in enumerate(rows) if r["cell"] == row["cell"]]
      if where:
        rows[where[0]] = row
      else:
        rows.append(row)
      measured.append({"section": key, "cell": row["cell"], "new": not where})
  env = common.environment()
  merged.setdefault("remeasured", []).append({
      "date": env["date"], "cells": pattern, "num_groups": result["num_groups"],
      "seconds": time.perf_counter() - start, "measured": measured,
      "device": env["device"], "versions": env["versions"]})
  return merged


# --- figures --------------------------------------------------------------------------------


FIGURE_TWO_PROMPTS = ("rloo / sequence_sum", "rloo / token_mean", "rloo / sequence_mean",
                      "grpo / sequence_sum", "grpo / sequence_mean", "dr_grpo / constant")
CLASS_COLOURS = {"unbiased": "#1a7f37", "known scale": "#0550ae", "biased": "#b31d28"}


def plot(rows: list[dict], figure: pathlib.Path, two_prompt_rows=(), off_policy_rows=()) -> None:
  """The original estimators: relative bias, direction error and std at G = 2, 4, 16 (base)."""
  rows = [r for r in rows if r.get("legacy", True)]
  shown = [r for r in two_prompt_rows if r["cell"] in FIGURE_TWO_PROMPTS and r.get("legacy", 1)]
  rows = list(rows) + [{**r, "cell": "2 prompts: " + r["cell"]} for r in shown]
  rows += [{**r, "cell": "stale: " + r["cell"]} for r in off_policy_rows
           if r.get("legacy", True) and " / sequence_sum" in r["cell"]]
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


def plot_table(sections: list[tuple[str, list[dict]]], figure: pathlib.Path,
               columns: int = 2) -> None:
  """Every cell: relative bias at each G and setting, and the measured classification."""
  entries = []  # (label, row), row None for a section header
  for title, rows in sections:
    current = None
    for r in rows:
      if r["section"] != current:
        current = r["section"]
        entries.append((f"{title}: {current}" if title else current, None))
      entries.append((r["cell"], r))
  per = -(-len(entries) // columns)
  panels = [entries[c * per:(c + 1) * per] for c in range(columns)]
  for c in range(1, columns):
    if panels[c] and panels[c][0][1] is not None:  # a section carried over: repeat its header
      header = next(label for label, r in reversed(entries[:c * per]) if r is None)
      panels[c].insert(0, (header.removesuffix(" (cont.)") + " (cont.)", None))
  per = max(len(p) for p in panels)
  settings = list(SETTINGS)
  sizes = [str(g) for g in GROUP_SIZES]
  keys = [(s, g) for s in settings for g in sizes]
  norm = matplotlib.colors.LogNorm(1e-3, 1.0)
  cmap = plt.get_cmap("Reds")
  height = 0.19 * per + 1.2
  fig, axes = plt.subplots(1, columns, figsize=(8.6 * columns, height))
  for ax, part in zip(np.atleast_1d(axes), panels, strict=True):
    ax.set_xlim(-0.5, len(keys) + 1.6)
    ax.set_ylim(per - 0.5, -1.5)
    ax.axis("off")
    for j, (s, g) in enumerate(keys):
      ax.text(j, -1, f"G={g}\n{s}", ha="center", va="center", fontsize=6.5)
    ax.text(len(keys) + 0.6, -1, "measured", ha="center", va="center", fontsize=6.5)
    for i, (label, r) in enumerate(part):
      if r is None:
        ax.text(-0.6, i, label, ha="right", va="center", fontsize=7, fontweight="bold")
        continue
      ax.text(-0.6, i, label, ha="right", va="center", fontsize=6.5,
              color=CLASS_COLOURS[r["classification"]])
      for j, (s, g) in enumerate(keys):
        result = r["by_setting"].get(s, {}).get(g)
        if result is None:
          continue
        value = bias(result)
        exact = "exact_relative_bias" in result
        ax.add_patch(matplotlib.patches.Rectangle(
            (j - 0.5, i - 0.5), 1, 1, color=cmap(norm(np.clip(value, 1e-3, 1.0)))))
        text = "0" if exact and value < UNBIASED_TOL else f"{value:.2g}"
        ax.text(j, i, text, ha="center", va="center", fontsize=6,
                fontstyle="normal" if exact else "italic",
                color="white" if value > 0.4 else "black")
      label = r["classification"] + ("" if r["scale_label"] == "1" or
                                     r["classification"] == "biased"
                                     else f" {r['scale_label']}")
      ax.text(len(keys) + 0.6, i, label, ha="center", va="center", fontsize=6,
              color=CLASS_COLOURS[r["classification"]])
  fig.suptitle(
      "Relative bias ||E ĝ − c∇|| / ||c∇|| of every sequence estimator on an enumerable "
      "policy\n(2 tokens + EOS, ≤ 4 tokens; c: the scale theory expects). Upright: exact "
      "(all 31^G groups), italic: Monte Carlo (noise floor ~0.005). Settings: base "
      "(E|y| 2.4 ± 1.3),\nlong (EOS logit − 3: E|y| 3.9 ± 0.6). Measured, from the exact "
      "columns: unbiased (green), unbiased for a known scale c (blue), biased (red).",
      fontsize=9)
  fig.subplots_adjust(left=0.2, right=0.995, top=1 - 1.05 / height, bottom=0.005,
                      wspace=0.75)
  fig.savefig(figure, dpi=110)
  plt.close(fig)


def _table_sections(result: dict) -> list[tuple[str, list[dict]]]:
  return [("", result["cells"]), ("", result["off_policy"]["cells"]),
          ("", result["two_prompts"]["cells"])]


def _figures(result: dict, path: pathlib.Path) -> None:
  plot(result["cells"], path.with_suffix(".png"), result["two_prompts"]["cells"],
       result["off_policy"]["cells"])
  table = path.with_name(path.name.replace("sequence_audit-", "sequence_audit-table-"))
  plot_table(_table_sections(result), table.with_suffix(".png"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--groups", type=int, default=None,
                      help="Monte Carlo groups per group size (fixed keys); default 20000, "
                           "with --merge the JSON's")
  parser.add_argument("--out", default=None)
  parser.add_argument("--replot", default=None, help="redraw the figures of this JSON")
  parser.add_argument("--cells", default=None,
                      help="measure only the cells whose names contain this substring or "
                           "match this regular expression (needs --merge)")
  parser.add_argument("--merge", default=None,
                      help="JSON of a full run: the --cells' entries replace theirs there "
                           "(or in --out); redraw its figures with --replot")
  args = parser.parse_args()
  if args.replot:
    path = pathlib.Path(args.replot)
    _figures(json.loads(path.read_text()), path)
    return
  if (args.cells is None) != (args.merge is None):
    parser.error("--cells and --merge go together: name the cells to measure again and the "
                 "JSON to merge them into")
  if args.cells is not None:
    path = pathlib.Path(args.merge)
    try:
      merged = remeasure(json.loads(path.read_text()), args.cells, args.groups)
    except ValueError as error:
      parser.error(str(error))
    out = pathlib.Path(args.out) if args.out else path
    out.write_text(json.dumps(merged, indent=2) + "\n")
    record = merged["remeasured"][-1]
    print(f"merged {len(record['measured'])} re-measured cells into {out} in "
          f"{record['seconds']:.0f}s; redraw its figures with --replot {out}")
    return
  args.groups = 20000 if args.groups is None else args.groups
  start = time.perf_counter()
  print("one prompt, on-policy:")
  rows = run_section(one_prompt_cells(), 1, False, EXACT_GROUP_SIZES, args.groups)
  print("off-policy, sampled from logits + 0.5 N(0, 1):")
  off_rows = run_section(stale_cells(), 1, True, EXACT_GROUP_SIZES, args.groups)
  print("two prompts, rewards R and R / 4:")
  batch_rows = run_section(two_prompt_cells(), 2, False, (2,), args.groups)
  settings = {}
  for s, offset in SETTINGS.items():
    settings[s] = {**length_stats(problem(s)), "eos_offset": offset,
                   "equal_reward_mass": {str(g): problem(s).equal_mass[g].tolist()
                                         for g in GROUP_SIZES}}
  result = {
      "num_groups": args.groups, "group_sizes": list(GROUP_SIZES),
      "exact_group_sizes": list(EXACT_GROUP_SIZES), "beta": BETA,
      "seconds": time.perf_counter() - start,
      "settings": settings,
      "problem": "2 tokens + EOS, at most 4 tokens (15 states, 31 sequences); "
                 "R = #1 - 0.5 #2 + 0.5 [ends with EOS]; logits ~ N(0, 1) (key 0) plus the "
                 "setting's EOS offset, reference logits ~ N(0, 1) (key 1); 'shaped' adds "
                 "DAPO's overlong penalty (L_max 4, L_cache 2); by_group_size is the base "
                 "setting, by_setting holds both",
      "cells": rows,
      "two_prompts": {
          "problem": "two prompts in one batch, each its own table (logits keys 0 and 3), "
                     "rewards R and R / 4; G completions each; exact at G = 2",
          "cells": batch_rows},
      "off_policy": {
          "problem": "completions drawn from old logits = logits + 0.5 N(0, 1) (key 4), "
                     "the gradient at logits; RLOO advantages unless a preset sets its own; "
                     "'full' and 'exact weight' weigh each sequence by pi(y) / pi_old(y); "
                     "sampler corrections take the stale policy as the sampler mu and the "
                     "current one as pi_old; exact at G = 2, 4",
          "cells": off_rows}}
  path = common.write("sequence_audit", result, args.out)
  _figures(result, path)
  print(f"wrote {path} and its figures in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
  main()
