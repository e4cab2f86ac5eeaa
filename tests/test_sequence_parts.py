"""The sequence-loss parts, each against its formula written out in numpy, and the presets.

* advantages, aggregation, importance ratios and surrogates, regularisers: closed forms on
  small hand-made inputs; gradients where the formula says where they flow.
* masked-out entries (nan, +-inf) are bitwise irrelevant to every part and preset, and the
  gradient there is exactly 0 (hypothesis, as in test_numerics_properties.py).
* `trl_loss` / `tunix_loss` equal the peers' formulas (numpy) and the documented compositions.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reinforce_jax.sequence import (
    SequenceConfig,
    advantages,
    aggregation,
    importance,
    losses,
    presets,
    regularizers,
)

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None)
POISONS = (math.nan, math.inf, -math.inf)
N, L = 4, 5

REWARDS = np.float32([[1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
RNG = np.random.default_rng(0)
LP = np.where(MASK, -RNG.exponential(1.0, (N, L)), 0).astype(np.float32)
OLD = np.where(MASK, LP + RNG.normal(0, 0.4, (N, L)), 0).astype(np.float32)
REF = np.where(MASK, LP + RNG.normal(0, 0.3, (N, L)), 0).astype(np.float32)
ADV = np.float32([1.0, -1.5, 0.5, 0.0])
ENT = np.where(MASK, RNG.uniform(0.1, 2.0, (N, L)), 0).astype(np.float32)


def close(actual, expected, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


# --- numpy references ---------------------------------------------------------------------


def np_aggregate(v, m, mode, rows="batch", max_length=None):
  v = np.where(m, v, 0.0).astype(np.float64)
  r = v.shape[0] if rows == "batch" else max(int(m.any(1).sum()), 1)
  if mode == "sequence_sum":
    return v.sum() / r
  if mode == "token_mean":
    return v.sum() / max(m.sum(), 1)
  if mode == "constant":
    return v.sum() / (r * (max_length or v.shape[1]))
  return (v.sum(1) / np.maximum(m.sum(1), 1)).sum() / r


def np_ppo(r, a, lo, hi, delta=None, c=None):
  a = a[:, None]
  capped = np.minimum(r, delta) if delta is not None else r
  o = np.minimum(capped * a, np.clip(r, 1 - lo, 1 + hi) * a)
  if c is not None:
    o = np.where(a < 0, np.maximum(o, c * a), o)
  return o


def np_seq_log_ratio(lp, old, m):
  lr = np.where(m, lp - old, 0.0)
  s = lr.sum(1, keepdims=True) / np.maximum(m.sum(1, keepdims=True), 1)
  return np.broadcast_to(s, lr.shape)


def np_trl(loss_type, lp, old, ref, a, m, level="token", beta=0.0, eps=0.2, eps_high=None,
           delta=None, bias=True, ent=None, ent_coef=0.0, max_len=None, w=None, log_is=None,
           ent_mask=None):
  """TRL 1.16 `GRPOTrainer._compute_loss`, single process, written out in numpy.

  `w` multiplies the policy term (TRL's masks and sampler ratio), `log_is` (the log sampler
  ratios) joins VESPO's sequence log ratio, `ent_mask` restricts the entropy bonus."""
  hi = eps if eps_high is None else eps_high
  lr = np.where(m, lp - old, 0.0)
  liw = lr if level == "token" else np_seq_log_ratio(lp, old, m)
  coef = np.exp(liw)
  if loss_type == "cispo":
    per = -np.minimum(coef, hi) * a[:, None] * lp
  elif loss_type == "sapo":
    tau = np.where(a[:, None] > 0, 1.0, 1.05)
    per = -(1 / (1 + np.exp(-tau * (coef - 1)))) * 4 / tau * a[:, None]
  elif loss_type == "vespo":
    slr = np.clip(lr, -20, 20).sum(1, keepdims=True)
    if log_is is not None:
      slr = slr + np.where(m, np.clip(log_is, math.log(1e-8), 20), 0).sum(1, keepdims=True)
    slr = np.clip(slr, math.log(1e-8), 20)
    k = np.where(a[:, None] >= 0, 2.0, 3.0)
    lam = np.where(a[:, None] >= 0, 3.0, 2.0)
    per = -np.exp(lam + k * slr - lam * np.exp(slr)) * a[:, None] * lp
  else:
    per = -np_ppo(coef, a, eps, hi, delta)
  if w is not None:
    per = per * w
  if beta:
    kl = np.exp(ref - lp) - (ref - lp) - 1
    per = per + beta * (kl * coef if bias else kl)
  mode = {"grpo": "sequence_mean", "sapo": "sequence_mean", "bnpo": "token_mean",
          "dapo": "token_mean", "cispo": "token_mean", "vespo": "token_mean",
          "dr_grpo": "constant", "luspo": "sequence_sum"}[loss_type]
  loss = np_aggregate(per, m, mode, max_length=max_len)
  if ent_coef:
    loss -= ent_coef * np_aggregate(ent, m if ent_mask is None else ent_mask, "token_mean")
  return loss


def np_tunix(agg, algo, lp, old, ref, a, m, eps=0.2, eps_high=None, c=None, beta=0.04,
             kl_mode="kl", w=None):
  """tunix 0.1.7 `grpo_loss_fn` + `aggregate_loss`, written out in numpy (`w`: its
  `sampler_is_weights`)."""
  hi = eps if eps_high is None else eps_high
  lr = np.clip(np.where(m, lp - old, 0.0), -20, 20)
  if algo == "gspo-token":
    lr = np.minimum(lr.sum(1, keepdims=True) / np.maximum(m.sum(1, keepdims=True), 1)
                    + 0 * lr, 10)
  r = np.exp(lr)
  adv = a[:, None]
  per = np.maximum(-adv * r, -adv * np.clip(r, 1 - eps, 1 + hi))
  if c is not None:
    per = np.where(adv < 0, np.minimum(-c * adv, per), per)
  if w is not None:
    per = per * w

  def agg_fn(x):
    mode, rows = {"token-mean": ("token_mean", "batch"),
                  "sequence-mean-token-mean": ("sequence_mean", "nonempty"),
                  "sequence-mean-token-scale": ("constant", "nonempty"),
                  "seq-mean-token-sum": ("sequence_sum", "nonempty"),
                  "sequence-mean-token-sum-norm": ("sequence_sum", "nonempty")}[agg]
    return np_aggregate(x, m, mode, rows)

  loss = agg_fn(per)
  d = lp - ref
  kl = {"kl": d, "mse_kl": 0.5 * d**2, "low_var_kl": np.exp(-d) + d - 1}[kl_mode]
  return loss + beta * agg_fn(kl)


# --- advantages ---------------------------------------------------------------------------


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("scale", advantages.SCALES)
@pytest.mark.parametrize("baseline", advantages.BASELINES)
def test_relative_advantages_closed_form(baseline, scale, ddof):
  r = REWARDS.astype(np.float64)
  g = r.shape[1]
  num = {"none": r, "mean": r - r.mean(1, keepdims=True),
         "loo": r - (r.sum(1, keepdims=True) - r) / (g - 1)}[baseline]
  eps = 1e-4
  if scale == "none":
    expected = num
  else:
    std = r.std(1, ddof=ddof, keepdims=True) if scale == "group" else r.std(ddof=ddof)
    expected = num / (std + eps)
  got = advantages.relative_advantages(jnp.asarray(REWARDS), baseline=baseline, scale=scale,
                                       ddof=ddof, eps=eps)
  close(got, expected)
  if baseline != "none":  # the group of equal rewards: exactly 0
    assert np.all(np.asarray(got)[2] == 0.0)


@pytest.mark.parametrize("name", list(advantages.ESTIMATORS))
def test_the_estimator_names_are_their_parts_bitwise(name):
  baseline, scale = advantages.ESTIMATORS[name]
  a = losses.group_advantages(jnp.asarray(REWARDS), estimator=name)
  b = advantages.relative_advantages(jnp.asarray(REWARDS), baseline=baseline, scale=scale)
  assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_group_advantages_scale_and_ddof_options():
  got = losses.group_advantages(jnp.asarray(REWARDS), estimator="dr_grpo", scale="batch",
                                ddof=1, eps=0.0)
  r = REWARDS.astype(np.float64)
  close(got, (r - r.mean(1, keepdims=True)) / r.std(ddof=1))


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("baseline", ["batch", "group"])
def test_reinforce_pp_closed_form(baseline, ddof):
  r = REWARDS.astype(np.float64)
  x = r if baseline == "batch" else r - r.mean(1, keepdims=True)
  expected = (x - x.mean()) / (x.std(ddof=ddof) + 1e-6)
  close(advantages.reinforce_pp_advantages(jnp.asarray(REWARDS), baseline=baseline,
                                           ddof=ddof), expected)


@functools.cache
def _all_advantages(ddof, eps):
  def fn(rewards):
    out = [advantages.relative_advantages(rewards, baseline=b, scale=s, ddof=ddof, eps=eps)
           for b in ("mean", "loo") for s in advantages.SCALES]
    out += [advantages.reinforce_pp_advantages(rewards, baseline=b, ddof=ddof, eps=eps)
            for b in ("batch", "group")]
    return jnp.stack(out)

  return jax.jit(fn)


@settings(PROPERTY, max_examples=15)
@given(value=st.floats(-1e6, 1e6, allow_nan=False, width=32),
       ddof=st.sampled_from([0, 1]), eps=st.sampled_from([0.0, 1e-4]))
def test_equal_rewards_are_exactly_zero_under_every_scale(value, ddof, eps):
  got = _all_advantages(ddof, eps)(jnp.full((3, 4), value, jnp.float32))
  assert np.all(np.asarray(got) == 0.0), got


def test_trl_and_tunix_advantages_use_their_ddof_and_eps():
  r = REWARDS.astype(np.float64)
  dev = r - r.mean(1, keepdims=True)
  close(presets.trl_advantages(jnp.asarray(REWARDS)), dev / (r.std(1, ddof=1,
                                                                   keepdims=True) + 1e-4))
  close(presets.trl_advantages(jnp.asarray(REWARDS), scale_rewards="batch"),
        dev / (r.std(ddof=1) + 1e-4))
  close(presets.trl_advantages(jnp.asarray(REWARDS), scale_rewards=False), dev)
  close(presets.tunix_advantages(jnp.asarray(REWARDS)),
        dev / (r.std(1, ddof=1, keepdims=True) + 1e-6))
  close(presets.tunix_advantages(jnp.asarray(REWARDS), advantage_estimator="rloo"),
        dev * 4 / 3)
  close(presets.tunix_advantages(jnp.asarray(REWARDS), advantage_estimator="drgrpo"), dev)


@pytest.mark.parametrize("call, match", [
    (lambda r: advantages.relative_advantages(r, ddof=2), "^ddof must be 0"),
    (lambda r: advantages.relative_advantages(r, scale="std"), "^scale must be one of"),
    (lambda r: advantages.relative_advantages(r[:, :1]), "needs at least 2 completions"),
    (lambda r: advantages.relative_advantages(r, eps=-1.0), "^eps must be finite"),
    (lambda r: advantages.reinforce_pp_advantages(r, baseline="mean"), "^baseline must be"),
    (lambda r: presets.trl_advantages(r, scale_rewards="std"), "^scale_rewards must be"),
    (lambda r: presets.tunix_advantages(r, advantage_estimator="gae"), "^advantage_estimator"),
])
def test_advantage_errors_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call(jnp.asarray(REWARDS))


# --- aggregation --------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [None, 8])
@pytest.mark.parametrize("rows", aggregation.ROW_COUNTS)
@pytest.mark.parametrize("mode", aggregation.MODES)
def test_aggregate_closed_form(mode, rows, max_length):
  v = RNG.normal(0, 1, (N, L)).astype(np.float32)
  got = aggregation.aggregate(jnp.asarray(v), MASK, mode=mode, rows=rows,
                              max_length=max_length)
  close(got, np_aggregate(v, MASK, mode, rows, max_length))


def test_row_count():
  assert float(aggregation.row_count(MASK)) == 4.0
  assert float(aggregation.row_count(MASK, rows="nonempty")) == 3.0
  assert float(aggregation.row_count(np.zeros((2, 3), bool), rows="nonempty")) == 1.0


def test_the_old_aggregate_is_the_part_bitwise():
  v = jnp.asarray(RNG.normal(0, 1, (N, L)).astype(np.float32))
  for mode in aggregation.MODES:
    a = losses.aggregate(v, MASK, aggregation=mode)
    b = aggregation.aggregate(v, MASK, mode=mode)
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# --- importance ratios and surrogates ------------------------------------------------------


def test_log_ratio_levels_closed_form():
  token = np.where(MASK, LP - OLD, 0.0)
  close(importance.log_ratio(LP, OLD, MASK), token)
  seq = np.where(MASK, np_seq_log_ratio(LP, OLD, MASK), 0.0)
  close(importance.log_ratio(LP, OLD, MASK, level="sequence"), seq)
  close(importance.log_ratio(LP, OLD, MASK, level="sequence_token"), seq)
  assert np.all(np.asarray(importance.log_ratio(LP, None, MASK)) == 0.0)


def test_log_ratio_gradients_by_level():
  lengths = np.maximum(MASK.sum(1), 1)
  # Unweighted, all three give 1 on real tokens (|y_n| copies of s_n, each 1 / |y_n|);
  # a weighted sum tells "sequence" (the row's mean weight) from the token-wise levels.
  for level in importance.LEVELS:
    expected = np.where(MASK, 1.0, 0.0)
    grad = jax.grad(lambda lp, lv=level: jnp.sum(importance.log_ratio(lp, OLD, MASK, level=lv)))(LP)
    close(grad, expected)
  w = RNG.uniform(0.5, 2.0, (N, L)).astype(np.float32)
  grad = jax.grad(lambda lp: jnp.sum(w * importance.log_ratio(lp, OLD, MASK,
                                                              level="sequence")))(LP)
  row = np.where(MASK, w, 0).sum(1, keepdims=True) / lengths[:, None]
  close(grad, np.where(MASK, row, 0.0))
  grad = jax.grad(lambda lp: jnp.sum(w * importance.log_ratio(lp, OLD, MASK,
                                                              level="sequence_token")))(LP)
  close(grad, np.where(MASK, w, 0.0))


@pytest.mark.parametrize("delta, dual", [(None, None), (1.3, None), (None, 3.0), (1.3, 3.0)])
def test_ppo_objective_closed_form(delta, dual):
  lr = np.float32([[0.5, -0.5, 0.05, 2.0, -2.0]] * N)
  mask = np.ones((N, L), bool)
  a = np.float32([1.0, -1.0, 0.3, -2.0])
  got = importance.ppo_objective(lr, a, mask, eps_low=0.2, eps_high=0.28, delta=delta,
                                 dual_clip=dual)
  close(got, np_ppo(np.exp(lr.astype(np.float64)), a, 0.2, 0.28, delta, dual))
  unclipped = importance.ppo_objective(lr, a, mask, eps_low=None)
  close(unclipped, np.exp(lr.astype(np.float64)) * a[:, None])


def test_dual_clip_and_delta_change_the_negative_advantage_branch():
  lr, mask, a = np.float32([[2.0]]), np.ones((1, 1), bool), np.float32([-1.0])
  plain = float(importance.ppo_objective(lr, a, mask, eps_low=0.2)[0, 0])
  assert plain == pytest.approx(-math.exp(2.0), rel=1e-6)
  assert float(importance.ppo_objective(lr, a, mask, eps_low=0.2, dual_clip=3.0)[0, 0]) == -3.0
  assert float(importance.ppo_objective(lr, a, mask, eps_low=0.2, delta=2.0)[0, 0]) == -2.0


def test_cispo_gradient_flows_only_through_log_pi():
  def total(lp):
    lr = importance.log_ratio(lp, OLD, MASK)
    return jnp.sum(importance.cispo_objective(lp, lr, ADV, MASK, high=1.1))

  weight = np.minimum(np.exp(LP.astype(np.float64) - OLD), 1.1)
  close(total(LP), np.sum(np.where(MASK, weight * ADV[:, None] * LP, 0)))
  close(jax.grad(total)(LP), np.where(MASK, weight * ADV[:, None], 0))
  low = importance.cispo_objective(LP, LP - OLD, ADV, MASK, high=1.1, low=0.9)
  close(low, np.where(MASK, np.clip(np.exp(LP - OLD), 0.9, 1.1) * ADV[:, None] * LP, 0))


def test_sapo_closed_form_and_its_on_policy_gradient_is_the_advantage():
  lr = np.where(MASK, LP - OLD, 0.0).astype(np.float32)
  tau = np.where(ADV[:, None] > 0, 1.0, 1.05)
  expected = 4 / tau / (1 + np.exp(-tau * (np.exp(lr) - 1))) * ADV[:, None]
  close(importance.sapo_objective(lr, ADV, MASK), np.where(MASK, expected, 0))

  def total(lp):
    return jnp.sum(importance.sapo_objective(importance.log_ratio(lp, None, MASK), ADV, MASK))

  close(jax.grad(total)(LP), np.where(MASK, ADV[:, None], 0))


def test_vespo_weights_closed_form_and_gradient():
  lr = np.where(MASK, LP - OLD, 0.0).astype(np.float32)
  s = np.clip(lr.sum(1), math.log(1e-8), 20)
  k = np.where(ADV >= 0, 2.0, 3.0)
  lam = np.where(ADV >= 0, 3.0, 2.0)
  phi = np.exp(lam + k * s - lam * np.exp(s))
  close(importance.vespo_weights(lr, ADV, MASK), phi)
  assert float(importance.vespo_weights(np.zeros((1, 2), np.float32), np.float32([1.0]),
                                        np.ones((1, 2), bool))[0]) == 1.0  # phi(1) = 1
  big = np.full((1, 3), 30.0, np.float32)  # clamped to 20 per token and in total
  assert float(importance.vespo_weights(big, np.float32([1.0]), np.ones((1, 3), bool))[0]) \
      == pytest.approx(math.exp(3 + 2 * 20 - 3 * math.exp(20)), abs=0)

  def total(lp):
    return jnp.sum(importance.vespo_objective(lp, importance.log_ratio(lp, OLD, MASK), ADV,
                                              MASK))

  close(jax.grad(total)(LP), np.where(MASK, phi[:, None] * ADV[:, None], 0))


def test_gmpo_closed_form_and_gradient():
  a = np.float32([1.0, -1.0, 0.5, 1.0])
  lr = np.where(MASK, LP - OLD, 0.0)
  sign = np.sign(a)[:, None]
  chosen = sign * np.minimum(sign * lr, sign * np.clip(lr, -0.3, 0.2))
  g = np.where(MASK, chosen, 0).sum(1, keepdims=True) / np.maximum(MASK.sum(1, keepdims=True), 1)
  got = importance.gmpo_log_ratio(LP, OLD, a, MASK, eps_low=0.3, eps_high=0.2)
  close(got, np.where(MASK, g, 0))
  close(importance.gmpo_objective(LP, OLD, a, MASK, eps_low=0.3, eps_high=0.2),
        np.where(MASK, a[:, None] * np.exp(g), 0))
  # on-policy nothing is clipped: d/d lp of A exp(g) summed per token = A / |y| per token,
  # aggregated with "sequence_mean" (one value per sequence).
  grad = jax.grad(lambda lp: aggregation.aggregate(
      importance.gmpo_objective(lp, None, a, MASK), MASK, mode="sequence_mean"))(LP)
  lengths = np.maximum(MASK.sum(1, keepdims=True), 1)
  close(grad, np.where(MASK, a[:, None] / lengths / N, 0))


@pytest.mark.parametrize("mode", aggregation.MODES)
def test_sequence_and_sequence_token_agree_under_every_mode(mode):
  def loss(lp, level):
    lr = importance.log_ratio(lp, OLD, MASK, level=level)
    return aggregation.aggregate(importance.ppo_objective(lr, ADV, MASK, eps_low=0.2), MASK,
                                 mode=mode)

  a, ga = jax.value_and_grad(loss)(LP, "sequence")
  b, gb = jax.value_and_grad(loss)(LP, "sequence_token")
  close(a, b)
  close(ga, gb)


@pytest.mark.parametrize("call, match", [
    (lambda: importance.log_ratio(LP, OLD, MASK, level="seq"), "^level must be one of"),
    (lambda: importance.ppo_objective(LP, ADV, MASK, eps_low=None, dual_clip=3.0),
     "^dual_clip=3.0 needs eps_low"),
    (lambda: importance.ppo_objective(LP, ADV, MASK, eps_low=0.2, dual_clip=0.5),
     "^dual_clip must be finite"),
    (lambda: importance.ppo_objective(LP, ADV[:2], MASK, eps_low=0.2), "^advantages must"),
    (lambda: importance.cispo_objective(LP, LP, ADV, MASK, high=0.0), "^high must be"),
    (lambda: importance.sapo_objective(LP, ADV, MASK, temperature_neg=0.0),
     "^temperature_neg must be"),
    (lambda: importance.vespo_weights(LP, np.zeros((N, L), np.float32), MASK),
     "^advantages must have shape"),
])
def test_importance_errors_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# --- regularisers -------------------------------------------------------------------------


def test_kl_estimators_and_clamp_closed_form():
  d = np.where(MASK, LP.astype(np.float64) - REF, 0.0)
  for name, expected in (("k1", d), ("k2", d**2 / 2), ("k3", np.exp(-d) + d - 1)):
    close(regularizers.kl_penalty(LP, REF, MASK, estimator=name), np.where(MASK, expected, 0))
    close(regularizers.kl_penalty(LP, REF, MASK, estimator=name, clamp=0.05),
          np.where(MASK, np.clip(expected, -0.05, 0.05), 0))
  assert losses.kl_penalty is regularizers.kl_penalty
  assert regularizers.KL_NAMES == {"kl": "k1", "mse_kl": "k2", "low_var_kl": "k3"}


def test_bias_corrected_kl_value_and_on_policy_gradient():
  d = LP.astype(np.float64) - REF
  k3 = np.exp(-d) + d - 1
  lr = np.where(MASK, LP - OLD, 0.0)
  close(regularizers.bias_corrected_kl(
      regularizers.kl_penalty(LP, REF, MASK, estimator="k3"), lr, MASK),
      np.where(MASK, k3 * np.exp(lr), 0))

  def total(lp):
    kl = regularizers.kl_penalty(lp, REF, MASK, estimator="k3")
    return jnp.sum(regularizers.bias_corrected_kl(kl, importance.log_ratio(lp, None, MASK),
                                                  MASK))

  # d/d lp [k3(lp) * exp(lp - sg(lp))] = k3'(lp) + k3(lp) = (1 - exp(-d)) + k3.
  close(jax.grad(total)(LP), np.where(MASK, 1 - np.exp(-d) + k3, 0))


def test_entropy_bonus_is_the_token_mean():
  close(regularizers.entropy_bonus(ENT, MASK), np_aggregate(ENT, MASK, "token_mean"))
  close(regularizers.entropy_bonus(ENT, MASK, mode="sequence_mean", rows="nonempty"),
        np_aggregate(ENT, MASK, "sequence_mean", "nonempty"))


# --- presets ------------------------------------------------------------------------------

TRL_CASES = [(t, level) for t in presets.TRL_LOSS_TYPES for level in ("token", "sequence")]


@pytest.mark.parametrize("loss_type, level", TRL_CASES)
def test_trl_loss_matches_trl_formula(loss_type, level):
  kwargs = dict(beta=0.1, epsilon_high=0.28 if loss_type != "cispo" else 1.2,
                delta=1.25 if loss_type in ("dapo", "grpo") else None,
                entropy_coef=0.01, max_completion_length=8 if loss_type == "dr_grpo" else None)
  fn = presets.trl_loss(loss_type, importance_sampling_level=level, **kwargs)
  loss, metrics = fn(LP, OLD, REF, ADV, MASK, entropy=ENT)
  expected = np_trl(loss_type, LP.astype(np.float64), OLD, REF, ADV, MASK, level=level,
                    beta=0.1, eps_high=kwargs["epsilon_high"], delta=kwargs["delta"],
                    ent=ENT, ent_coef=0.01, max_len=kwargs["max_completion_length"])
  close(loss, expected, rtol=2e-5)
  close(metrics["policy_loss"], expected + 0.01 * np_aggregate(ENT, MASK, "token_mean"),
        rtol=2e-5)
  assert np.isfinite(float(metrics["kl"]))


def test_trl_loss_without_bias_correction_and_default_dapo():
  loss, _ = presets.trl_loss("dapo", beta=0.1, use_bias_correction_kl=False)(
      LP, OLD, REF, ADV, MASK)
  close(loss, np_trl("dapo", LP.astype(np.float64), OLD, REF, ADV, MASK, beta=0.1,
                     bias=False), rtol=2e-5)
  loss, metrics = presets.trl_loss()(LP, None, None, ADV, MASK)
  # on-policy dapo: ratio 1, loss -sum A / tokens; nothing clipped.
  close(loss, -np.sum(np.where(MASK, ADV[:, None], 0)) / MASK.sum())
  assert float(metrics["clip_ratio/region_mean"]) == 0.0


def test_trl_grpo_is_the_documented_composition():
  fn = presets.trl_loss("grpo", beta=0.2, epsilon_high=0.28, delta=1.5)

  def composed(lp):
    lr = importance.log_ratio(lp, OLD, MASK)
    objective = importance.ppo_objective(lr, ADV, MASK, eps_low=0.2, eps_high=0.28, delta=1.5)
    kl = regularizers.bias_corrected_kl(
        regularizers.kl_penalty(lp, REF, MASK, estimator="k3"), lr, MASK)
    return aggregation.aggregate(-objective + 0.2 * kl, MASK, mode="sequence_mean")

  a, ga = jax.value_and_grad(lambda lp: fn(lp, OLD, REF, ADV, MASK)[0])(LP)
  b, gb = jax.value_and_grad(composed)(LP)
  assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  assert np.asarray(ga).tobytes() == np.asarray(gb).tobytes()


TUNIX_CASES = [(agg, algo) for agg in presets.TUNIX_LOSS_AGG_MODES
               for algo in presets.TUNIX_LOSS_ALGOS]


@pytest.mark.parametrize("agg, algo", TUNIX_CASES)
def test_tunix_loss_matches_tunix_formula(agg, algo):
  fn = presets.tunix_loss(agg, algo, epsilon_high=0.28, epsilon_c=3.0, beta=0.04,
                          kl_loss_mode="low_var_kl")
  loss, metrics = fn(LP, OLD, REF, ADV, MASK)
  expected = np_tunix(agg, algo, LP.astype(np.float64), OLD, REF, ADV, MASK, eps_high=0.28,
                      c=3.0, kl_mode="low_var_kl")
  close(loss, expected, rtol=2e-5)
  assert set(metrics) >= {"pg_loss", "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "kl",
                          "kl_loss"}


def test_tunix_custom_norm_and_no_reference():
  v = np.where(MASK, -np.float64(1.0) * ADV[:, None], 0).sum()  # on-policy: ratio 1
  loss, _ = presets.tunix_loss("sequence-mean-token-sum-norm", norm=7.0)(LP, None, None, ADV,
                                                                          MASK)
  close(loss, v / 7.0)
  loss, _ = presets.tunix_loss("sequence-mean-token-scale", norm=7.0)(LP, None, None, ADV, MASK)
  close(loss, v / (3 * 7.0))
  # gspo-token's gradient is each token's: A / |y| / rows under sequence-mean-token-mean.
  grad = jax.grad(lambda lp: presets.tunix_loss(loss_algo="gspo-token", beta=0.0)(
      lp, None, None, ADV, MASK)[0])(LP)
  close(grad, np.where(MASK, -ADV[:, None] / np.maximum(MASK.sum(1, keepdims=True), 1) / 3, 0))


# --- presets: weights on the policy term -------------------------------------------------

SAMPLER = np.where(MASK, OLD + np.random.default_rng(4).normal(0, 0.3, (N, L)),
                   0).astype(np.float32)
W = np.where(MASK, np.random.default_rng(2).uniform(0.5, 1.5, (N, L)), 0).astype(np.float32)
BOUNDS = {"token": (0.8, 1.25), "sequence": (0.8, 1.5)}  # each bites on both sides


def np_sampler_ratio(mode, low, high):
  """TRL's `importance_sampling_ratio` from the old and the sampler's log-probs, per mode."""
  d = np.where(MASK, OLD.astype(np.float64) - SAMPLER, 0.0)
  if mode.startswith("sequence"):
    d = np.broadcast_to(d.sum(1, keepdims=True), d.shape)
  r = np.exp(d)
  if mode.endswith("truncate"):
    return np.clip(r, low, high)
  return np.where((r < low) | (r > high), 0.0, r)


def np_entropy_mask(q):
  """Tokens at or above the `1 - q` quantile (linear) of the real tokens' entropies."""
  return MASK & (np.quantile(ENT[MASK], 1 - q) <= ENT)


@pytest.mark.parametrize("mode", presets.TRL_VLLM_IS_MODES)
def test_trl_sampler_ratio_weights_the_policy_term_not_the_kl(mode):
  low, high = BOUNDS[mode.split("_")[0]]
  ratio = np_sampler_ratio(mode, low, high)
  raw = np_sampler_ratio(mode, 0.0, np.inf)
  assert np.any(MASK & (ratio != raw) & (raw < 1)) and np.any(MASK & (ratio != raw) & (raw > 1))
  fn = presets.trl_loss("grpo", beta=0.1, vllm_importance_sampling_mode=mode,
                        vllm_importance_sampling_clip_min=low,
                        vllm_importance_sampling_clip_max=high)
  loss, _ = fn(LP, OLD, REF, ADV, MASK, sampler_log_probs=SAMPLER)
  close(loss, np_trl("grpo", LP.astype(np.float64), OLD, REF, ADV, MASK, beta=0.1, w=ratio),
        rtol=2e-5)
  # The same weights passed directly; no correction without the sampler or when it is off.
  direct, _ = presets.trl_loss("grpo", beta=0.1)(LP, OLD, REF, ADV, MASK,
                                                  token_weights=ratio.astype(np.float32))
  close(direct, loss)
  off = presets.trl_loss("grpo", beta=0.1, vllm_importance_sampling_correction=False)
  plain = np_trl("grpo", LP.astype(np.float64), OLD, REF, ADV, MASK, beta=0.1)
  close(off(LP, OLD, REF, ADV, MASK, sampler_log_probs=SAMPLER)[0], plain, rtol=2e-5)
  close(presets.trl_loss("grpo", beta=0.1)(LP, OLD, REF, ADV, MASK)[0], plain, rtol=2e-5)


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask"])
def test_trl_vespo_folds_the_sampler_ratio_into_its_sequence_ratio(mode):
  ratio = np_sampler_ratio(mode, 0.8, 1.25)
  fn = presets.trl_loss("vespo", vllm_importance_sampling_mode=mode,
                        vllm_importance_sampling_clip_min=0.8,
                        vllm_importance_sampling_clip_max=1.25)
  loss, _ = fn(LP, OLD, None, ADV, MASK, sampler_log_probs=SAMPLER)
  with np.errstate(divide="ignore"):
    expected = np_trl("vespo", LP.astype(np.float64), OLD, REF, ADV, MASK, log_is=np.log(ratio))
  close(loss, expected, rtol=2e-5)
  plain = np_trl("vespo", LP.astype(np.float64), OLD, REF, ADV, MASK)
  assert abs(expected - plain) > 1e-3
  with pytest.raises(ValueError, match="^loss_type='vespo' with sampler_log_probs needs"):
    presets.trl_loss("vespo")(LP, OLD, None, ADV, MASK, sampler_log_probs=SAMPLER)


@pytest.mark.parametrize("sampler", [False, True])
@pytest.mark.parametrize("above", [False, True])
def test_trl_off_policy_mask_drops_far_negative_sequences(sampler, above):
  reference = SAMPLER if sampler else OLD
  kl = np.where(MASK, reference - LP.astype(np.float64), 0).sum(1) / np.maximum(MASK.sum(1), 1)
  threshold = float(kl[1]) + (0.01 if above else -0.01)  # row 1 has the negative advantage
  keep = (ADV >= 0) | (kl <= threshold)
  assert bool(keep[1]) == above and keep[[0, 2, 3]].all()
  fn = presets.trl_loss("dapo", beta=0.1, off_policy_mask_threshold=threshold,
                        vllm_importance_sampling_correction=False)
  extra = {"sampler_log_probs": SAMPLER} if sampler else {}
  loss, _ = fn(LP, OLD, REF, ADV, MASK, **extra)
  close(loss, np_trl("dapo", LP.astype(np.float64), OLD, REF, ADV, MASK, beta=0.1,
                     w=np.broadcast_to(keep[:, None], MASK.shape).astype(np.float64)),
        rtol=2e-5)


@pytest.mark.parametrize("quantile, kept", [(0.0, 1), (0.3, 3), (0.5, 5), (1.0, 9)])
def test_trl_top_entropy_quantile_masks_the_policy_term_and_the_bonus(quantile, kept):
  mask = np_entropy_mask(quantile)
  assert mask.sum() == kept
  fn = presets.trl_loss("grpo", beta=0.1, entropy_coef=0.01, top_entropy_quantile=quantile)
  loss, metrics = fn(LP, OLD, REF, ADV, MASK, entropy=ENT)
  close(loss, np_trl("grpo", LP.astype(np.float64), OLD, REF, ADV, MASK, beta=0.1, ent=ENT,
                     ent_coef=0.01, w=mask.astype(np.float64), ent_mask=mask), rtol=2e-5)
  close(metrics["policy_loss"], np_trl("grpo", LP.astype(np.float64), OLD, REF, ADV, MASK,
                                       beta=0.1, w=mask.astype(np.float64)), rtol=2e-5)


def test_token_weights_scale_each_token_with_the_normaliser_unchanged():
  """On-policy DAPO: d loss / d log pi = -w A / (real tokens); `[B]` weights broadcast."""
  grad = jax.grad(lambda lp: presets.trl_loss()(lp, None, None, ADV, MASK, token_weights=W)[0])(
      LP)
  close(grad, np.where(MASK, -W * ADV[:, None] / MASK.sum(), 0))
  per_row = np.float32([0.5, 2.0, 0.0, 3.0])
  for fn in (presets.trl_loss("grpo", beta=0.1), presets.tunix_loss("token-mean")):
    a, _ = fn(LP, OLD, REF, ADV, MASK, token_weights=per_row)
    b, _ = fn(LP, OLD, REF, ADV, MASK, token_weights=np.broadcast_to(per_row[:, None], (N, L)))
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  # The weights carry no gradient.
  dw = jax.grad(lambda w: presets.trl_loss()(LP, OLD, None, ADV, MASK, token_weights=w)[0])(W)
  assert not np.any(np.asarray(dw))


@pytest.mark.parametrize("agg", presets.TUNIX_LOSS_AGG_MODES)
def test_tunix_sampler_is_weights_scale_the_policy_term_not_the_kl(agg):
  fn = presets.tunix_loss(agg, beta=0.1, kl_loss_mode="low_var_kl")
  loss, metrics = fn(LP, OLD, REF, ADV, MASK, sampler_is_weights=W)
  close(loss, np_tunix(agg, "grpo", LP.astype(np.float64), OLD, REF, ADV, MASK, beta=0.1,
                       kl_mode="low_var_kl", w=W), rtol=2e-5)
  close(metrics["sampler_is/weight_mean"], W[MASK].mean())
  close(metrics["sampler_is/weight_min"], W[MASK].min())
  both, _ = fn(LP, OLD, REF, ADV, MASK, sampler_is_weights=W, token_weights=W)
  close(both, np_tunix(agg, "grpo", LP.astype(np.float64), OLD, REF, ADV, MASK, beta=0.1,
                       kl_mode="low_var_kl", w=W * W), rtol=2e-5)
  assert float(fn(LP, OLD, REF, ADV, MASK)[1]["sampler_is/weight_mean"]) == 1.0


def test_weights_ignore_whatever_masked_entries_hold():
  """Sampler log-probs, weights and entropies at masked-out tokens never reach a number."""
  fn = presets.trl_loss("grpo", beta=0.1, entropy_coef=0.01, top_entropy_quantile=0.5,
                        off_policy_mask_threshold=0.0, vllm_importance_sampling_mode="token_mask",
                        vllm_importance_sampling_clip_min=0.8)
  dirty = (np.where(MASK, SAMPLER, np.float32(np.nan)), np.where(MASK, W, -np.inf),
           np.where(MASK, ENT, np.inf))
  results = []
  for sampler, weights, ent in ((SAMPLER, W, ENT), dirty):
    results.append(jax.value_and_grad(lambda lp, s=sampler, w=weights, e=ent: fn(
        lp, OLD, REF, ADV, MASK, entropy=e, sampler_log_probs=s, token_weights=w)[0])(LP))
  (a, ga), (b, gb) = results
  assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  assert np.asarray(ga).tobytes() == np.asarray(gb).tobytes()
  assert np.isfinite(float(a)) and not np.any(np.asarray(ga)[~MASK])


@pytest.mark.parametrize("call, match", [
    (lambda: presets.trl_loss("ppo"), "^loss_type must be one of"),
    (lambda: presets.trl_loss(importance_sampling_level="geo"), "^importance_sampling_level"),
    (lambda: presets.trl_loss(epsilon=1.5), "^epsilon must be finite"),
    (lambda: presets.trl_loss(beta=0.1)(LP, OLD, None, ADV, MASK), "^beta != 0 needs"),
    (lambda: presets.trl_loss(entropy_coef=0.1)(LP, OLD, None, ADV, MASK), "^entropy_coef"),
    (lambda: presets.trl_loss()(LP, OLD, None, ADV[:2], MASK), "^advantages must have"),
    (lambda: presets.tunix_loss("mean"), "^loss_agg_mode must be one of"),
    (lambda: presets.tunix_loss(loss_algo="gspo"), "^loss_algo must be one of"),
    (lambda: presets.tunix_loss(kl_loss_mode="k3"), "^kl_loss_mode must be one of"),
    (lambda: presets.trl_loss(top_entropy_quantile=1.5), "^top_entropy_quantile must be"),
    (lambda: presets.trl_loss(top_entropy_quantile=0.5)(LP, OLD, None, ADV, MASK),
     "^top_entropy_quantile < 1 needs entropy"),
    (lambda: presets.trl_loss(off_policy_mask_threshold=math.inf),
     "^off_policy_mask_threshold must be finite"),
    (lambda: presets.trl_loss(vllm_importance_sampling_mode="token"),
     "^vllm_importance_sampling_mode must be one of"),
    (lambda: presets.trl_loss(vllm_importance_sampling_clip_min=-1.0),
     "^vllm_importance_sampling_clip_min must be finite"),
    (lambda: presets.trl_loss(vllm_importance_sampling_clip_min=4.0),
     "^vllm_importance_sampling_clip_min must not exceed"),
    (lambda: presets.trl_loss()(LP, OLD, None, ADV, MASK, sampler_log_probs=SAMPLER[:, :3]),
     "^shapes must match exactly.*sampler_log_probs has shape \\(4, 3\\)"),
    (lambda: presets.trl_loss()(LP, OLD, None, ADV, MASK, token_weights=W[:, :3]),
     "^token_weights must have shape \\[B, L\\] = \\(4, 5\\) or \\[B\\] = \\(4,\\)"),
    (lambda: presets.tunix_loss()(LP, OLD, None, ADV, MASK, sampler_is_weights=-W),
     "^sampler_is_weights must be finite and in \\[0, inf\\)"),
])
def test_preset_errors_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# --- SequenceConfig -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"ddof": 2}, "^ddof must be 0 or 1"),
    ({"scale": "std"}, "^scale must be None or one of"),
    ({"scale": "group", "estimator": "none", "group_size": 1}, "^scale='group'"),
    ({"rows": "all"}, "^rows must be one of"),
    ({"delta": 1.5}, "^delta=1.5 needs clip_eps"),
    ({"dual_clip": 3.0}, "^dual_clip=3.0 needs clip_eps"),
    ({"dual_clip": 0.5, "clip_eps": 0.2}, "^dual_clip must be finite"),
    ({"delta": 0.0, "clip_eps": 0.2}, "^delta must be finite"),
    ({"entropy_coef": -0.1}, "^entropy_coef must be finite"),
    ({"entropy_coef": math.nan}, "^entropy_coef must be finite"),
])
def test_sequence_config_checks_the_new_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SequenceConfig(max_new_tokens=4, **kwargs)
  ok = SequenceConfig(max_new_tokens=4, ddof=1, scale="batch", rows="nonempty", clip_eps=0.2,
                      delta=1.5, dual_clip=3.0, entropy_coef=0.01)
  assert (ok.ddof, ok.scale, ok.rows, ok.delta, ok.dual_clip) == (1, "batch", "nonempty",
                                                                  1.5, 3.0)


def test_policy_gradient_loss_passes_delta_dual_clip_and_rows():
  got = losses.policy_gradient_loss(LP, ADV, MASK, aggregation="sequence_mean",
                                    old_log_probs=OLD, clip_eps=0.2, delta=1.2, dual_clip=3.0,
                                    rows="nonempty")
  r = np.exp(np.where(MASK, LP.astype(np.float64) - OLD, 0))
  close(got, -np_aggregate(np_ppo(r, ADV, 0.2, 0.2, 1.2, 3.0), MASK, "sequence_mean",
                           "nonempty"))
  with pytest.raises(ValueError, match="^delta needs clip_eps"):
    losses.policy_gradient_loss(LP, ADV, MASK, aggregation="token_mean", delta=1.2)


# --- masked entries never reach a number ------------------------------------------------------


@st.composite
def masked_batches(draw):
  """`(mask, clean, poisoned)`: the inputs, and the same with nan/inf where masked out."""
  mask = np.asarray(draw(st.lists(st.booleans(), min_size=N * L, max_size=N * L))).reshape(N, L)
  rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
  arrays = {"log_probs": -rng.exponential(1.0, (N, L)),
            "old_log_probs": -rng.exponential(1.0, (N, L)),
            "ref_log_probs": -rng.exponential(1.0, (N, L)),
            "entropy": rng.uniform(0.0, 2.0, (N, L)),
            "advantages": rng.normal(0.0, 1.0, N)}
  clean, poisoned = {}, {}
  for name, value in arrays.items():
    off = ~mask if value.ndim == 2 else ~mask.any(1)
    clean[name] = np.where(off, 0, value).astype(np.float32)
    poison = np.asarray(draw(st.lists(st.sampled_from(POISONS), min_size=value.size,
                                      max_size=value.size)), np.float32).reshape(value.shape)
    poisoned[name] = np.where(off, poison, value).astype(np.float32)
  return mask, clean, poisoned


def _part(kind, lp, a):
  mask, adv, old = a["mask"], a["advantages"], a["old_log_probs"]
  lr = importance.log_ratio(lp, old, mask)
  if kind == "ppo":
    o = importance.ppo_objective(importance.log_ratio(lp, old, mask, level="sequence"), adv,
                                 mask, eps_low=0.2, eps_high=0.28, delta=1.5, dual_clip=3.0)
  elif kind == "cispo":
    o = importance.cispo_objective(lp, lr, adv, mask, high=1.5)
  elif kind == "sapo":
    o = importance.sapo_objective(lr, adv, mask)
  elif kind == "vespo":
    o = importance.vespo_objective(lp, lr, adv, mask)
  elif kind == "gmpo":
    o = importance.gmpo_objective(lp, old, adv, mask)
  elif kind == "kl":
    o = regularizers.bias_corrected_kl(
        regularizers.kl_penalty(lp, a["ref_log_probs"], mask, estimator="k3", clamp=5.0),
        lr, mask)
  elif kind.startswith("trl:"):
    return presets.trl_loss(kind[4:], beta=0.1, entropy_coef=0.01)(
        lp, old, a["ref_log_probs"], adv, mask, entropy=a["entropy"])[0]
  else:
    return presets.tunix_loss(kind[6:], loss_algo="gspo-token", epsilon_c=3.0)(
        lp, old, a["ref_log_probs"], adv, mask)[0]
  return aggregation.aggregate(o, mask, mode="sequence_mean", rows="nonempty")


PART_KINDS = (["ppo", "cispo", "sapo", "vespo", "gmpo", "kl"]
              + [f"trl:{t}" for t in presets.TRL_LOSS_TYPES]
              + [f"tunix:{m}" for m in presets.TUNIX_LOSS_AGG_MODES])


@functools.cache
def _jitted(kind):
  return jax.jit(lambda lp, a: jax.value_and_grad(functools.partial(_part, kind))(lp, a))


def _check_masked(batch, kind):
  mask, clean, dirty = batch
  results = []
  for a in (dict(clean), dict(dirty)):
    lp = a.pop("log_probs")
    results.append(_jitted(kind)(lp, {**a, "mask": mask}))
  (loss, grad), (loss_p, grad_p) = map(lambda r: tuple(map(np.asarray, r)), results)
  assert loss.tobytes() == loss_p.tobytes(), (kind, loss, loss_p)
  assert grad.tobytes() == grad_p.tobytes(), kind
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  assert np.all(grad[~mask] == 0.0)


@pytest.mark.slow
@PROPERTY
@given(batch=masked_batches(), kind=st.sampled_from(PART_KINDS))
def test_parts_and_presets_ignore_whatever_masked_entries_hold(batch, kind):
  _check_masked(batch, kind)


@pytest.mark.parametrize("kind", ["ppo", "cispo", "trl:sapo", "tunix:token-mean"])
def test_a_poisoned_batch_gives_the_clean_loss_and_gradient(kind):
  """One fixed batch (the property above runs every part on many, marked slow)."""
  mask = MASK.copy()
  clean = {"log_probs": LP, "old_log_probs": OLD, "ref_log_probs": REF, "entropy": ENT,
           "advantages": np.where(mask.any(1), ADV, 0).astype(np.float32)}
  dirty = {}
  for i, (name, value) in enumerate(clean.items()):
    off = ~mask if value.ndim == 2 else ~mask.any(1)
    dirty[name] = np.where(off, np.float32(POISONS[i % 3]), value).astype(np.float32)
  _check_masked((mask, clean, dirty), kind)
