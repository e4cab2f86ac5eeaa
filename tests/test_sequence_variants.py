"""Off-policy corrections and shaping: each function against an independent numpy computation.

Also: masked entries (nan, +-inf) change nothing, bitwise; weights carry no gradient; Clip-Cov's
chosen tokens and KL-Cov's unselected ones have zero gradient; TRL's vLLM importance-sampling
modes, off-policy mask, bias-corrected KL and entropy mask equal the installed TRL's own code
(slow: importing TRL takes seconds).
"""

import inspect
import math
import textwrap
import types
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.sequence import aggregate
from reinforce_jax.sequence import off_policy as op
from reinforce_jax.sequence import shaping as sh

# --- fixtures ------------------------------------------------------------------------------

MASK = np.array([[1, 1, 1, 1, 0, 0],
                 [1, 1, 1, 1, 1, 1],
                 [1, 1, 0, 0, 0, 0],
                 [0, 0, 0, 0, 0, 0]], np.float32)


def _log_probs(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return (-np.abs(rng.normal(size=MASK.shape)) * scale - 0.05).astype(np.float32)


OLD = _log_probs(0)
SAMPLER = (OLD + np.random.default_rng(1).normal(size=MASK.shape) * 0.6).astype(np.float32)


def _poison(x, mask=MASK):
  """`x` with nan, +inf and -inf in its masked-out slots."""
  x = np.array(x, copy=True)
  junk = np.array([np.nan, np.inf, -np.inf], x.dtype)
  off = np.argwhere(mask == 0)
  for i, (r, c) in enumerate(off):
    x[r, c] = junk[i % 3]
  return x


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- numpy references ----------------------------------------------------------------------


def np_correction(old, sampler, mask, mode, level, low, high):
  on = mask != 0
  lr = np.where(on, old.astype(np.float64) - sampler.astype(np.float64), 0.0)
  if level == "sequence":
    lr = np.repeat(lr.sum(1, keepdims=True), mask.shape[1], 1)
  elif level == "geometric":
    lr = np.repeat(lr.sum(1, keepdims=True) / np.maximum(on.sum(1, keepdims=True), 1),
                   mask.shape[1], 1)
  rho = np.exp(lr)
  lo = -np.inf if low is None else low
  hi = np.inf if high is None else high
  outside = (rho < lo) | (rho > hi)
  if mode == "truncate":
    w, kept = np.clip(rho, lo, hi), on
  else:
    w, kept = rho, on & ~outside
  return np.where(kept, w, 0.0), kept, outside[on].mean() if on.any() else 0.0


def np_rank_select(scores, eligible, k):
  """The `k` eligible entries of largest score, ties to the lower row-major index."""
  flat = [(-scores.flat[i], i) for i in range(scores.size) if eligible.flat[i]]
  chosen = np.zeros(scores.size, bool)
  for _, i in sorted(flat)[:k]:
    chosen[i] = True
  return chosen.reshape(scores.shape)


def np_count(fraction, n, up):
  exact = Fraction(repr(fraction)) * n
  return math.ceil(exact) if up else math.floor(exact)


def np_covariance(lp, adv, mask):
  on = mask != 0
  adv = np.broadcast_to(adv[:, None], lp.shape) if adv.ndim == 1 else adv
  lp64, a64 = lp.astype(np.float64), adv.astype(np.float64)
  mlp, ma = lp64[on].mean(), a64[on].mean()
  return np.where(on, (lp64 - mlp) * (a64 - ma), 0.0)


# --- off_policy ----------------------------------------------------------------------------

CASES = [(mode, level, low, high)
         for mode in ("truncate", "mask")
         for level in ("token", "sequence", "geometric")
         for low, high in ((None, 2.0), (0.5, 1.5), (0.8, None))]


@pytest.mark.parametrize("mode,level,low,high", CASES)
def test_importance_correction_matches_numpy(mode, level, low, high):
  got = op.importance_correction(OLD, SAMPLER, MASK, mode=mode, level=level, low=low, high=high)
  w, kept, frac = np_correction(OLD, SAMPLER, MASK, mode, level, low, high)
  np.testing.assert_allclose(got.weights, w, rtol=2e-6, atol=0)
  np.testing.assert_array_equal(got.mask, kept)
  key = "fraction_truncated" if mode == "truncate" else "fraction_masked"
  other = "fraction_masked" if mode == "truncate" else "fraction_truncated"
  np.testing.assert_allclose(got.metrics[key], frac, rtol=1e-6)
  assert float(got.metrics[other]) == 0.0
  assert got.weights.dtype == jnp.float32 and got.mask.dtype == jnp.bool_


def test_importance_correction_ratio_metrics():
  got = op.importance_correction(OLD, SAMPLER, MASK, mode="truncate", level="token", high=2.0)
  on = MASK != 0
  rho = np.exp(OLD.astype(np.float64) - SAMPLER)[on]
  np.testing.assert_allclose(got.metrics["ratio_mean"], rho.mean(), rtol=1e-5)
  np.testing.assert_allclose(got.metrics["ratio_min"], rho.min(), rtol=1e-5)
  np.testing.assert_allclose(got.metrics["ratio_max"], rho.max(), rtol=1e-5)
  d = np.abs(OLD.astype(np.float64) - SAMPLER)[on]
  np.testing.assert_allclose(got.metrics["log_ratio_abs_mean"], d.mean(), rtol=1e-5)
  np.testing.assert_allclose(got.metrics["log_ratio_abs_max"], d.max(), rtol=1e-5)
  # Sequence level: one ratio per completion with tokens (3 of the 4 rows).
  seq = op.importance_correction(OLD, SAMPLER, MASK, mode="mask", level="sequence", high=2.0)
  per_row = np.exp((np.where(on, OLD.astype(np.float64) - SAMPLER, 0)).sum(1))[on.any(1)]
  np.testing.assert_allclose(seq.metrics["ratio_mean"], per_row.mean(), rtol=1e-5)
  np.testing.assert_allclose(seq.metrics["ratio_max"], per_row.max(), rtol=1e-5)


def test_importance_correction_without_tokens_gives_zeros():
  empty = np.zeros_like(MASK)
  got = op.importance_correction(OLD, SAMPLER, empty, mode="mask", level="sequence", high=2.0)
  assert not np.any(got.mask) and np.all(np.asarray(got.weights) == 0)
  assert all(float(v) == 0.0 for v in got.metrics.values())


def test_named_corrections_are_their_modes():
  cases = [
      (op.truncated_importance_sampling(OLD, SAMPLER, MASK, cap=1.7, level="sequence"),
       dict(mode="truncate", level="sequence", high=1.7)),
      (op.masked_importance_sampling(OLD, SAMPLER, MASK, cap=1.7, low=0.4),
       dict(mode="mask", level="token", low=0.4, high=1.7)),
      (op.icepop(OLD, SAMPLER, MASK), dict(mode="mask", level="token", low=0.5, high=5.0)),
      (op.icepop(OLD, SAMPLER, MASK, low=0.7, high=1.3, level="sequence", mode="truncate"),
       dict(mode="truncate", level="sequence", low=0.7, high=1.3)),
  ]
  for got, kwargs in cases:
    _assert_trees_equal(got, op.importance_correction(OLD, SAMPLER, MASK, **kwargs))
  # TIS at the default cap C = 2: min(rho, 2) per token.
  tis = op.truncated_importance_sampling(OLD, SAMPLER, MASK)
  rho = np.exp(OLD.astype(np.float64) - SAMPLER)
  np.testing.assert_allclose(tis.weights, np.where(MASK != 0, np.minimum(rho, 2.0), 0), rtol=2e-6)


def test_bounds_are_inclusive():
  old = np.log(np.array([[2.0, 0.5, 3.0]], np.float32))
  sampler = np.zeros_like(old)
  mask = np.ones_like(old)
  got = op.importance_correction(old, sampler, mask, mode="mask", low=0.5, high=2.0)
  np.testing.assert_array_equal(got.mask, [[True, True, False]])


@pytest.mark.parametrize("mode,level", [(m, lv) for m in op.MODES for lv in op.LEVELS])
def test_importance_correction_ignores_masked_entries(mode, level):
  clean = op.importance_correction(np.where(MASK != 0, OLD, 0), np.where(MASK != 0, SAMPLER, 0),
                                   MASK, mode=mode, level=level, low=0.5, high=1.5)
  dirty = op.importance_correction(_poison(OLD), _poison(SAMPLER), MASK, mode=mode, level=level,
                                   low=0.5, high=1.5)
  _assert_trees_equal(clean, dirty)


def test_importance_weights_carry_no_gradient():
  def total(old, sampler):
    return jnp.sum(op.importance_correction(old, sampler, MASK, mode="truncate",
                                            level="sequence", high=1.5).weights)

  g_old, g_sampler = jax.grad(total, argnums=(0, 1))(_poison(OLD), _poison(SAMPLER))
  assert np.all(np.asarray(g_old) == 0) and np.all(np.asarray(g_sampler) == 0)


def test_off_policy_sequence_mask_matches_numpy():
  lp = _log_probs(3)
  advantages = np.array([-1.0, -0.5, 2.0, -1.0], np.float32)
  on = MASK != 0
  kl = np.where(on, SAMPLER.astype(np.float64) - lp, 0).sum(1) / np.maximum(on.sum(1), 1)
  for delta in (0.0, float(np.median(kl[:3])), 10.0):
    got = op.off_policy_sequence_mask(lp, SAMPLER, advantages, MASK, threshold=delta)
    keep = (advantages >= 0) | (kl <= delta)
    np.testing.assert_array_equal(got.mask, on & keep[:, None])
    np.testing.assert_array_equal(got.weights, (on & keep[:, None]).astype(np.float32))
    np.testing.assert_allclose(got.metrics["fraction_masked"], np.mean(~keep))
    np.testing.assert_allclose(got.metrics["kl_mean"], kl[on.any(1)].mean(), rtol=1e-5)
  dirty = op.off_policy_sequence_mask(_poison(lp), _poison(SAMPLER), advantages, MASK,
                                      threshold=0.1)
  clean = op.off_policy_sequence_mask(np.where(on, lp, 0), np.where(on, SAMPLER, 0), advantages,
                                      MASK, threshold=0.1)
  _assert_trees_equal(clean, dirty)
  grads = jax.grad(lambda x: jnp.sum(op.off_policy_sequence_mask(
      x, SAMPLER, advantages, MASK, threshold=0.1).weights))(lp)
  assert np.all(np.asarray(grads) == 0)


def test_unbiased_kl_value_and_gradient():
  lp, ref = _log_probs(4), _log_probs(5)
  on = MASK != 0
  lp64 = lp.astype(np.float64)
  w = np.exp(lp64 - OLD)
  k3 = np.exp(ref - lp64) - (ref - lp64) - 1
  np.testing.assert_allclose(op.unbiased_kl(lp, OLD, ref, MASK), np.where(on, w * k3, 0),
                             rtol=1e-5, atol=1e-7)
  # d/dlp [w * k3] = w * (lp - ref): the reverse-KL score weight, importance-corrected.
  grad = jax.grad(lambda x: jnp.sum(op.unbiased_kl(x, _poison(OLD), _poison(ref), MASK)))(
      _poison(lp))
  np.testing.assert_allclose(grad, np.where(on, w * (lp64 - ref), 0), rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(grad)[~on] == 0)
  # On-policy the weight is 1 and the value is k3's.
  np.testing.assert_allclose(op.unbiased_kl(lp, lp, ref, MASK), np.where(on, k3, 0),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(op.unbiased_kl(_poison(lp), _poison(OLD), _poison(ref), MASK),
                                op.unbiased_kl(np.where(on, lp, 0), np.where(on, OLD, 0),
                                               np.where(on, ref, 0), MASK))


def test_off_policy_functions_jit():
  f = jax.jit(lambda o, s, m: op.icepop(o, s, m, level="geometric"))
  _assert_trees_equal(f(OLD, SAMPLER, MASK), op.icepop(OLD, SAMPLER, MASK, level="geometric"))
  g = jax.jit(lambda lp, s, a, m: op.off_policy_sequence_mask(lp, s, a, m, threshold=0.2))
  a = np.ones(4, np.float32)
  _assert_trees_equal(g(OLD, SAMPLER, -a, MASK),
                      op.off_policy_sequence_mask(OLD, SAMPLER, -a, MASK, threshold=0.2))


@pytest.mark.parametrize("call,match", [
    (lambda: op.importance_correction(OLD, SAMPLER[:, :3], MASK, mode="mask"), "shapes"),
    (lambda: op.importance_correction(OLD[0], SAMPLER[0], MASK[0], mode="mask"), r"\[B, L\]"),
    (lambda: op.importance_correction(OLD, SAMPLER, MASK, mode="clip"), "mode"),
    (lambda: op.importance_correction(OLD, SAMPLER, MASK, mode="mask", level="row"), "level"),
    (lambda: op.importance_correction(OLD, SAMPLER, MASK, mode="mask", high=-1.0), "high"),
    (lambda: op.importance_correction(OLD, SAMPLER, MASK, mode="mask", low=2.0, high=1.0),
     "low must not exceed high"),
    (lambda: op.importance_correction(OLD, SAMPLER, MASK * 2, mode="mask"), "0 and 1"),
    (lambda: op.off_policy_sequence_mask(OLD, SAMPLER, np.ones(3, np.float32), MASK,
                                         threshold=0.1), r"advantages must have shape \[B\]"),
    (lambda: op.off_policy_sequence_mask(OLD, SAMPLER, np.ones(4, np.float32), MASK,
                                         threshold=math.inf), "threshold"),
    (lambda: op.unbiased_kl(OLD, OLD, OLD.astype(np.int32), MASK), "floating"),
])
def test_off_policy_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# --- shaping: DAPO ---------------------------------------------------------------------------


def test_overlong_penalty_piecewise():
  lengths = np.array([0, 10, 12, 13, 15, 16, 17, 40])
  got = sh.overlong_penalty(lengths, max_length=16, cache_length=4)
  want = [0.0 if n <= 12 else ((12 - n) / 4 if n <= 16 else -1.0) for n in lengths]
  np.testing.assert_allclose(got, want, rtol=0, atol=0)
  np.testing.assert_array_equal(
      sh.overlong_penalty(lengths.astype(np.float32), max_length=16, cache_length=4), got)
  with pytest.raises(ValueError, match="cache_length must not exceed"):
    sh.overlong_penalty(lengths, max_length=4, cache_length=5)
  with pytest.raises(ValueError, match="max_length"):
    sh.overlong_penalty(lengths, max_length=0, cache_length=1)
  with pytest.raises(ValueError, match=r"lengths must be a real \[N\]"):
    sh.overlong_penalty(lengths[None], max_length=16, cache_length=4)


def test_truncated_completion_mask_matches_numpy():
  tokens = np.array([[5, 6, 2, 2, 2],     # ends at EOS 2
                     [5, 6, 7, 8, 9],     # truncated
                     [3, 7, 0, 0, 0],     # EOS 3 (one of two ids)
                     [9, 9, 2, 0, 0],     # EOS only in a masked slot: truncated
                     [0, 0, 0, 0, 0]])    # no tokens: not truncated
  mask = np.array([[1, 1, 1, 0, 0],
                   [1, 1, 1, 1, 1],
                   [1, 1, 0, 0, 0],
                   [1, 1, 0, 0, 0],
                   [0, 0, 0, 0, 0]])
  new, truncated = sh.truncated_completion_mask(tokens, mask, eos_id=(2, 3))
  on = mask != 0
  want_trunc = np.array([on[i].any() and not np.isin(tokens[i][on[i]], [2, 3]).any()
                         for i in range(5)])
  np.testing.assert_array_equal(truncated, want_trunc)
  np.testing.assert_array_equal(truncated, [False, True, False, True, False])
  np.testing.assert_array_equal(new, on & ~want_trunc[:, None])
  _, only_two = sh.truncated_completion_mask(tokens, mask, eos_id=2)
  np.testing.assert_array_equal(only_two, [False, True, True, True, False])
  with pytest.raises(ValueError, match="tokens must be an integer"):
    sh.truncated_completion_mask(tokens.astype(np.float32), mask, eos_id=2)
  with pytest.raises(ValueError, match="eos_id"):
    sh.truncated_completion_mask(tokens, mask, eos_id=[])


def test_dynamic_sampling_mask():
  rewards = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.5],
                      [np.nan, 1.0, 1.0]], np.float32)
  got = sh.dynamic_sampling_mask(rewards)
  want = np.array([len(set(r.tolist())) > 1 or np.isnan(r).any() for r in rewards])
  np.testing.assert_array_equal(got.keep, want)
  assert int(got.num_kept) == want.sum() == 3
  np.testing.assert_array_equal(got.order, [1, 3, 4, 0, 2])
  jitted = jax.jit(sh.dynamic_sampling_mask)(rewards)
  _assert_trees_equal(jitted, got)
  np.testing.assert_array_equal(sh.dynamic_sampling_mask(np.array([[1, 1], [0, 1]])).keep,
                                [False, True])
  with pytest.raises(ValueError, match=r"rewards must be a real \[P, G\]"):
    sh.dynamic_sampling_mask(rewards[0])


# --- shaping: ReMax --------------------------------------------------------------------------


def test_remax_advantages():
  rewards = np.array([[1.0, 0.0, 3.0], [2.0, 2.0, -1.0]], np.float32)
  greedy = np.array([0.5, 2.0], np.float32)
  np.testing.assert_array_equal(sh.remax_advantages(rewards, greedy), rewards - greedy[:, None])
  with pytest.raises(ValueError, match=r"greedy_rewards must have shape \[P\]"):
    sh.remax_advantages(rewards, greedy[:1])
  with pytest.raises(ValueError, match=r"rewards must have shape \[P, G\]"):
    sh.remax_advantages(rewards[0], greedy)


def test_greedy_completions_match_numpy_argmax():
  vocab, eos = 6, 5
  table = np.random.default_rng(7).normal(size=(vocab, vocab)).astype(np.float32)
  table[4, eos] = 10.0  # token 4 is followed by EOS

  def apply_fn(params, tokens):  # causal: logits at t depend on token t only
    return params[tokens]

  prompts = np.array([[0, 1], [3, 4], [2, 2]], np.int32)
  out = sh.greedy_completions(apply_fn, jnp.asarray(table), prompts, max_new_tokens=4,
                              eos_id=eos)
  for row, prompt in enumerate(prompts):
    last, done = prompt[-1], False
    for t in range(4):
      col = prompts.shape[1] + t
      if done:
        assert out.tokens[row, col] == eos and out.mask[row, col] == 0
        continue
      logits = table[last].astype(np.float64)
      token = int(np.argmax(logits))
      log_softmax = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
      assert out.tokens[row, col] == token and out.mask[row, col] == 1
      np.testing.assert_allclose(out.log_probs[row, col], log_softmax[token], rtol=1e-5, atol=1e-6)
      last, done = token, token == eos
  assert out.tokens.shape == (3, 6)


# --- shaping: token selection ----------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.3, 0.5, 0.75, 1.0])
def test_top_entropy_mask_matches_numpy(fraction):
  entropy = np.abs(_log_probs(8))
  entropy[1, 2] = entropy[0, 1]  # a tie, broken by the lower row-major index
  got = sh.top_entropy_mask(entropy, MASK, fraction=fraction)
  on = MASK != 0
  k = np_count(fraction, int(on.sum()), up=True)
  np.testing.assert_array_equal(got, np_rank_select(entropy, on, k))
  assert int(np.sum(got)) == k
  dirty = sh.top_entropy_mask(_poison(entropy), MASK, fraction=fraction)
  np.testing.assert_array_equal(dirty, got)


def test_top_entropy_mask_ties_and_exact_counts():
  mask = np.ones((2, 5), np.float32)
  entropy = np.full((2, 5), 1.0, np.float32)
  # 0.3 * 10 is 3.0000000000000004 in floats; the count is exactly 3.
  np.testing.assert_array_equal(sh.top_entropy_mask(entropy, mask, fraction=0.3),
                                [[True, True, True, False, False], [False] * 5])
  # 0.7 * 10 rounds below 7 in float32; the count is exactly 7.
  assert int(np.sum(sh.top_entropy_mask(entropy, mask, fraction=0.7))) == 7
  jitted = jax.jit(lambda e, m: sh.top_entropy_mask(e, m, fraction=0.7))(entropy, mask)
  assert int(np.sum(jitted)) == 7
  with pytest.raises(ValueError, match="fraction"):
    sh.top_entropy_mask(entropy, mask, fraction=1.5)
  with pytest.raises(ValueError, match="fraction"):
    sh.top_entropy_mask(entropy, mask, fraction=jnp.float32(0.5))


def test_token_covariance_matches_numpy():
  lp = _log_probs(9)
  adv = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
  np.testing.assert_allclose(sh.token_covariance(lp, adv, MASK), np_covariance(lp, adv, MASK),
                             rtol=1e-5, atol=1e-6)
  per_token = np.random.default_rng(10).normal(size=MASK.shape).astype(np.float32)
  np.testing.assert_allclose(sh.token_covariance(lp, per_token, MASK),
                             np_covariance(lp, per_token, MASK), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(sh.token_covariance(_poison(lp), _poison(per_token), MASK),
                                sh.token_covariance(np.where(MASK != 0, lp, 0),
                                                    np.where(MASK != 0, per_token, 0), MASK))
  with pytest.raises(ValueError, match="advantages must have shape"):
    sh.token_covariance(lp, adv[:2], MASK)


def _cov_inputs():
  lp = _log_probs(11, scale=3.0)
  adv = np.array([2.0, -1.5, 3.0, 0.0], np.float32)
  return lp, adv


@pytest.mark.parametrize("fraction,low,high", [(0.3, 0.1, 50.0), (0.0, 0.1, 50.0),
                                               (1.0, -50.0, 50.0), (0.25, 0.5, 2.0)])
def test_clip_cov_matches_numpy(fraction, low, high):
  lp, adv = _cov_inputs()
  key = jax.random.key(3)
  got = sh.clip_cov(key, lp, adv, MASK, fraction=fraction, low=low, high=high)
  on = MASK != 0
  cov = np_covariance(lp, adv, MASK)
  candidates = on & (cov > low) & (cov < high)
  budget = max(np_count(fraction, int(on.sum()), up=False), 1)
  priority = np.asarray(jax.random.uniform(key, lp.shape))
  chosen = np_rank_select(priority, candidates, budget)
  assert chosen.sum() == min(budget, candidates.sum())
  np.testing.assert_array_equal(got.mask, on & ~chosen)
  np.testing.assert_array_equal(got.weights, (on & ~chosen).astype(np.float32))
  np.testing.assert_allclose(got.metrics["fraction_clipped"], chosen.sum() / on.sum())
  assert int(got.metrics["num_candidates"]) == candidates.sum()
  dirty = sh.clip_cov(key, _poison(lp), adv, MASK, fraction=fraction, low=low, high=high)
  _assert_trees_equal(dirty, got)


def test_clip_cov_exclude_and_gradient():
  lp, adv = _cov_inputs()
  key = jax.random.key(5)
  on = MASK != 0
  everything = sh.clip_cov(key, lp, adv, MASK, fraction=1.0, low=-1e9, high=1e9)
  np.testing.assert_array_equal(everything.mask, np.zeros_like(on))  # all 12 tokens chosen
  exclude = np.zeros_like(on)
  exclude[1, :3] = True
  got = sh.clip_cov(key, lp, adv, MASK, fraction=1.0, low=-1e9, high=1e9, exclude=exclude)
  np.testing.assert_array_equal(got.mask, exclude & on)
  # Chosen tokens carry no gradient through the surrogate; the others do.
  picked = sh.clip_cov(key, lp, adv, MASK, fraction=0.3, low=-1e9, high=1e9)
  chosen = on & ~np.asarray(picked.mask)
  assert chosen.sum() == 3

  def loss(x):
    return -aggregate(adv[:, None] * x, MASK, aggregation="token_mean", weights=picked.weights)

  grad = np.asarray(jax.grad(loss)(_poison(lp)))
  assert np.all(grad[chosen] == 0) and np.all(grad[~on] == 0)
  kept = on & ~chosen
  np.testing.assert_allclose(grad[kept], np.broadcast_to(-adv[:, None], lp.shape)[kept] / on.sum(),
                             rtol=1e-6)


@pytest.mark.parametrize("fraction", [2e-4, 0.25, 0.5, 1.0])
def test_kl_cov_matches_numpy(fraction):
  lp, adv = _cov_inputs()
  old = (lp + np.random.default_rng(12).normal(size=lp.shape) * 0.3).astype(np.float32)
  penalty, selected = sh.kl_cov(lp, old, adv, MASK, fraction=fraction, coef=0.7)
  on = MASK != 0
  k = max(np_count(fraction, int(on.sum()), up=False), 1)
  want = np_rank_select(np_covariance(lp, adv, MASK), on, k)
  np.testing.assert_array_equal(selected, want)
  np.testing.assert_allclose(penalty, np.where(want, 0.7 * np.abs(lp.astype(np.float64) - old), 0),
                             rtol=1e-6)
  grad = np.asarray(jax.grad(lambda x: jnp.sum(sh.kl_cov(x, _poison(old), adv, MASK,
                                                         fraction=fraction, coef=0.7)[0]))(
      _poison(lp)))
  np.testing.assert_array_equal(grad, np.where(want, 0.7 * np.sign(lp - old), 0))
  none, chosen = sh.kl_cov(lp, old, adv, np.zeros_like(MASK), fraction=fraction)
  assert not np.any(chosen) and np.all(np.asarray(none) == 0)
  # On-policy (old = current) the penalty and its gradient are 0, as |d| has derivative 0 at 0.
  on_policy = jax.grad(lambda x: jnp.sum(sh.kl_cov(x, x, adv, MASK, fraction=fraction)[0]))(lp)
  np.testing.assert_array_equal(on_policy, np.zeros_like(lp))


def test_shaping_errors():
  lp, adv = _cov_inputs()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="low must not exceed high"):
    sh.clip_cov(key, lp, adv, MASK, low=5.0, high=1.0)
  with pytest.raises(ValueError, match="fraction"):
    sh.kl_cov(lp, lp, adv, MASK, fraction=0.0)
  with pytest.raises(ValueError, match="shapes"):
    sh.kl_cov(lp, lp[:, :2], adv, MASK)
  with pytest.raises(ValueError, match="shapes"):
    sh.clip_cov(key, lp, adv, MASK, exclude=np.zeros((4, 2), bool))


def test_selection_functions_jit():
  lp, adv = _cov_inputs()
  key = jax.random.key(2)
  f = jax.jit(lambda k, x, a, m: sh.clip_cov(k, x, a, m, fraction=0.3, low=-1e9, high=1e9))
  _assert_trees_equal(f(key, lp, adv, MASK),
                      sh.clip_cov(key, lp, adv, MASK, fraction=0.3, low=-1e9, high=1e9))
  g = jax.jit(lambda x, o, a, m: sh.kl_cov(x, o, a, m, fraction=0.25))
  _assert_trees_equal(g(lp, lp - 0.1, adv, MASK), sh.kl_cov(lp, lp - 0.1, adv, MASK,
                                                           fraction=0.25))


# --- TRL parity (slow: importing TRL takes seconds) ------------------------------------------


def _trl_block(function, header, next_line_has):
  """The body of the `if` statement `header` in `function`'s source, dedented, to exec."""
  lines = inspect.getsource(function).splitlines()
  for i, line in enumerate(lines[:-1]):
    if line.strip() == header and next_line_has in lines[i + 1]:
      indent = len(line) - len(line.lstrip())
      body = []
      for later in lines[i + 1:]:
        if later.strip() and len(later) - len(later.lstrip()) <= indent:
          break
        body.append(later)
      return textwrap.dedent("\n".join(body))
  raise AssertionError(f"{header!r} not found in {function.__qualname__}")


def _trl_inputs():
  rng = np.random.default_rng(21)
  old = (-np.abs(rng.normal(size=MASK.shape))).astype(np.float32)
  sampler = (old + rng.normal(size=MASK.shape) * 0.5).astype(np.float32)
  sampler[1, 3] = np.nan  # a token vLLM did not score: TRL uses log-ratio 0 there
  old_padded = np.where(MASK != 0, old, np.inf).astype(np.float32)
  sampler_padded = np.where(MASK != 0, sampler, -np.inf).astype(np.float32)
  return old_padded, sampler_padded


@pytest.mark.slow
@pytest.mark.parametrize("trl_mode", ["token_truncate", "token_mask", "sequence_truncate",
                                      "sequence_mask"])
@pytest.mark.parametrize("clip_min,clip_max", [(None, 1.2), (0.5, 1.5), (0.8, None)])
def test_trl_vllm_importance_sampling_modes(trl_mode, clip_min, clip_max):
  torch = pytest.importorskip("torch")
  trainer = pytest.importorskip("trl.trainer.grpo_trainer")
  code = _trl_block(trainer.GRPOTrainer._generate_and_score_completions,
                    "if self.use_vllm and self.vllm_importance_sampling_correction:",
                    "mask = completion_mask")
  old, sampler = _trl_inputs()
  namespace = {
      "torch": torch, "math": math,
      "self": types.SimpleNamespace(vllm_importance_sampling_mode=trl_mode,
                                    vllm_importance_sampling_clip_min=clip_min,
                                    vllm_importance_sampling_clip_max=clip_max),
      "completion_mask": torch.tensor(MASK.astype(np.int64)), "tool_mask": None,
      "old_per_token_logps": torch.tensor(old), "sampling_per_token_logps": torch.tensor(sampler),
  }
  exec(code, namespace)  # noqa: S102 - TRL's own lines, from the installed package
  trl_ratio = namespace["vllm_importance_sampling_ratio"].numpy()
  trl_ratio = np.broadcast_to(trl_ratio, MASK.shape)
  level, mode = trl_mode.split("_")
  ours = op.importance_correction(
      old, jnp.where(jnp.isnan(sampler), old, sampler), MASK, mode=mode, level=level,
      low=clip_min, high=clip_max)
  on = MASK != 0
  changed = ours.metrics["fraction_truncated"] + ours.metrics["fraction_masked"]
  assert 0 < float(changed) < 1  # the bounds bind on some tokens, not all
  np.testing.assert_allclose(np.asarray(ours.weights)[on], trl_ratio[on], rtol=1e-6, atol=0)
  np.testing.assert_array_equal(np.asarray(ours.weights)[on] == 0, trl_ratio[on] == 0)


@pytest.mark.slow
def test_trl_off_policy_mask_and_bias_corrected_kl():
  torch = pytest.importorskip("torch")
  trainer = pytest.importorskip("trl.trainer.grpo_trainer")
  lp, ref = _log_probs(13), _log_probs(14)
  advantages = np.array([-1.0, -0.5, 2.0, -1.0], np.float32)
  mask_t = torch.tensor(MASK)
  on = MASK != 0
  for delta in (0.05, 0.3, 1.0):
    trl_keep = trainer.GRPOTrainer.get_off_policy_mask(
        advantages=torch.tensor(advantages)[:, None], per_token_logps=torch.tensor(lp),
        sampling_per_token_logps=torch.tensor(SAMPLER), mask=mask_t,
        off_policy_threshold=delta).numpy()
    ours = op.off_policy_sequence_mask(lp, SAMPLER, advantages, MASK, threshold=delta)
    np.testing.assert_array_equal(np.asarray(ours.weights)[on],
                                  np.broadcast_to(trl_keep, MASK.shape)[on])
  # The KL term with use_bias_correction_kl=True: TRL's lines, token-level coef_1.
  code = _trl_block(trainer.GRPOTrainer._compute_loss, "if self.beta != 0.0:",
                    'ref_per_token_logps = inputs["ref_per_token_logps"]')
  per_token_logps = torch.tensor(lp, requires_grad=True)
  coef_1 = torch.exp(per_token_logps - torch.tensor(OLD))  # TRL: exp(log_ratio), token level
  namespace = {"torch": torch, "self": types.SimpleNamespace(
      args=types.SimpleNamespace(use_bias_correction_kl=True)),
      "inputs": {"ref_per_token_logps": torch.tensor(ref)},
      "per_token_logps": per_token_logps, "coef_1": coef_1}
  exec(code, namespace)  # noqa: S102 - TRL's own lines, from the installed package
  trl_kl = namespace["per_token_kl"]
  (trl_kl * mask_t).sum().backward()
  ours = op.unbiased_kl(lp, OLD, ref, MASK)
  np.testing.assert_allclose(np.asarray(ours)[on], trl_kl.detach().numpy()[on], rtol=1e-5,
                             atol=1e-7)
  grad = jax.grad(lambda x: jnp.sum(op.unbiased_kl(x, OLD, ref, MASK)))(lp)
  np.testing.assert_allclose(grad, per_token_logps.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_trl_entropy_mask_count():
  torch = pytest.importorskip("torch")
  trainer = pytest.importorskip("trl.trainer.grpo_trainer")
  accelerator = types.SimpleNamespace(pad_across_processes=lambda x, **_: x, gather=lambda x: x)
  fake = types.SimpleNamespace(accelerator=accelerator)

  def trl_mask(entropy, mask, rho):
    return trainer.GRPOTrainer.get_high_entropy_mask(
        fake, torch.tensor(entropy), torch.tensor(mask), 1 - rho).numpy()

  rng = np.random.default_rng(30)
  # Same tokens when frac(rho * n) >= rho (10 tokens, rho = 0.2 and 0.25; 14 tokens, rho = 0.5).
  for n, rho in ((10, 0.2), (10, 0.25), (14, 0.5)):
    entropy = rng.permutation(n).astype(np.float32).reshape(1, n) + 0.5
    mask = np.ones((1, n), np.float32)
    np.testing.assert_array_equal(sh.top_entropy_mask(entropy, mask, fraction=rho),
                                  trl_mask(entropy, mask, rho))
  # The documented difference: 14 tokens at rho = 0.3, TRL keeps 4 and this keeps ceil(4.2) = 5.
  entropy = rng.permutation(14).astype(np.float32).reshape(1, 14) + 0.5
  mask = np.ones((1, 14), np.float32)
  assert trl_mask(entropy, mask, 0.3).sum() == 4
  assert int(np.sum(sh.top_entropy_mask(entropy, mask, fraction=0.3))) == 5
