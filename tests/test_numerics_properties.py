"""Exact numerical properties, checked on random inputs (hypothesis).

* A group whose rewards are all equal gets advantages of exactly 0, at every magnitude and
  group size, and so does `reward - baseline` for the leave-one-out and batch-mean baselines.
* A group of one raises for every estimator that compares a completion with its group.
* Whatever masked-out entries hold (nan, +inf, -inf), every loss, aggregation and KL
  estimate, and its gradient, is bitwise the same as with zeros there; the gradient is
  exactly 0 there.
* Masks hold only 0 and 1; float settings are finite.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reinforce_jax.core import baselines
from reinforce_jax.core.losses import reinforce_loss
from reinforce_jax.rl import hparams
from reinforce_jax.rl.config import TrainConfig
from reinforce_jax.sequence import SequenceConfig, losses

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True, database=None)
GROUP_ESTIMATORS = ("rloo", "grpo", "dr_grpo")
POISONS = (math.nan, math.inf, -math.inf)
N, L = 4, 5  # one shape for the masked properties: each function compiles once

magnitudes = st.builds(lambda m, negative: -m if negative else m,
                       st.floats(1e-3, 1e6, allow_nan=False), st.booleans())


# --- Equal rewards give exactly zero advantage -------------------------------------------


@PROPERTY
@given(value=magnitudes, other=magnitudes, group=st.integers(2, 16),
       eps=st.sampled_from([1e-6, 0.0, 1e-4]))
def test_equal_rewards_give_exactly_zero_advantage(value, other, group, eps):
  rewards = jnp.asarray(np.repeat(np.float32([[value], [other]]), group, axis=1))
  for estimator in GROUP_ESTIMATORS:
    advantages = np.asarray(losses.group_advantages(rewards, estimator=estimator, eps=eps))
    assert np.all(advantages == 0.0), (estimator, advantages)


@PROPERTY
@given(value=magnitudes, group=st.integers(2, 16), others=st.lists(magnitudes, max_size=3))
def test_equal_groups_are_zero_beside_unequal_ones(value, group, others):
  """Each row is its own group: an equal row stays exactly 0 next to rows that are not."""
  rows = [np.full(group, value, np.float32)]
  rows += [np.resize(np.float32([value, *others]), group) for _ in others]
  rewards = jnp.asarray(np.stack(rows))
  for estimator in GROUP_ESTIMATORS:
    advantages = np.asarray(losses.group_advantages(rewards, estimator=estimator))
    assert np.all(advantages[0] == 0.0), (estimator, advantages[0])
    assert np.all(np.isfinite(advantages))


@PROPERTY
@given(value=magnitudes, other=magnitudes, samples=st.integers(2, 16))
def test_equal_values_give_exactly_zero_baselined_advantage(value, other, samples):
  values = jnp.asarray(np.repeat(np.float32([[value], [other]]), samples, axis=1))
  for baseline in (_leave_one_out, _batch_mean):
    assert np.all(np.asarray(values - baseline(values, axis=1)) == 0.0), baseline
    assert np.all(np.asarray(values.T - baseline(values.T, axis=0)) == 0.0), baseline


_leave_one_out = jax.jit(baselines.leave_one_out, static_argnames="axis")
_batch_mean = jax.jit(baselines.batch_mean, static_argnames="axis")


@settings(PROPERTY, max_examples=15)
@given(value=magnitudes, group=st.integers(2, 16))
def test_grpo_gradient_is_finite_for_equal_rewards(value, group):
  grad = _grpo_grad(jnp.full((1, group), value, jnp.float32))
  assert np.all(np.isfinite(np.asarray(grad)))


@jax.jit
def _grpo_grad(rewards):
  weights = jnp.arange(rewards.shape[1], dtype=rewards.dtype)
  return jax.grad(lambda r: jnp.sum(losses.group_advantages(r, estimator="grpo") * weights))(
      rewards)


def test_the_old_float32_residue_cases_are_exactly_zero():
  for rewards in (jnp.full((1, 3), 123.456), jnp.full((1, 3), 1.1), jnp.full((2, 7), -3e5)):
    for estimator in GROUP_ESTIMATORS:
      assert np.all(np.asarray(losses.group_advantages(rewards, estimator=estimator)) == 0.0)


# --- A group of one raises ----------------------------------------------------------------


@PROPERTY
@given(batch=st.integers(1, 16), value=magnitudes)
def test_a_group_of_one_raises_for_every_group_estimator(batch, value):
  rewards = jnp.full((batch, 1), value, jnp.float32)
  for estimator in GROUP_ESTIMATORS:
    with pytest.raises(ValueError, match=rf"estimator='{estimator}'.*at least 2 completions.*"
                                         rf"\({batch}, 1\)"):
      losses.group_advantages(rewards, estimator=estimator)
  assert np.all(np.asarray(losses.group_advantages(rewards, estimator="none")) == value)
  for baseline in (baselines.leave_one_out, baselines.batch_mean):
    with pytest.raises(ValueError, match=rf"at least 2 samples.*\({batch}, 1\)"):
      baseline(rewards, axis=1)


# --- Masked-out entries never reach a result or its gradient ------------------------------


@st.composite
def masked_batches(draw):
  """`(mask, arrays, poisoned)`: [N, L] arrays, and the same with poison where masked out."""
  mask = np.asarray(draw(st.lists(st.booleans(), min_size=N * L, max_size=N * L))).reshape(N, L)
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  arrays = {
      "log_probs": -rng.exponential(1.0, (N, L)),
      "old_log_probs": -rng.exponential(1.0, (N, L)),
      "ref_log_probs": -rng.exponential(1.0, (N, L)),
      "reward": rng.normal(0.0, draw(st.sampled_from([1e-3, 1.0, 1e6])), (N, L)),
      "baseline": rng.normal(0.0, 1.0, (N, L)),
      "weights": rng.uniform(0.0, 2.0, (N, L)),
      "advantages": rng.normal(0.0, 1.0, N),
  }
  arrays = {k: np.where(mask if v.ndim == 2 else mask.any(1), v, 0).astype(np.float32)
            for k, v in arrays.items()}
  poisoned = {}
  for name, value in arrays.items():
    off = ~mask if value.ndim == 2 else ~mask.any(1)
    poison = np.asarray(draw(st.lists(st.sampled_from(POISONS), min_size=value.size,
                                      max_size=value.size)), np.float32).reshape(value.shape)
    poisoned[name] = np.where(off, poison, value).astype(np.float32)
  return mask, arrays, poisoned


def _assert_bitwise_equal(clean, dirty, mask):
  (loss, grad), (loss_p, grad_p) = clean, dirty
  loss, grad, loss_p, grad_p = map(np.asarray, (loss, grad, loss_p, grad_p))
  assert loss.tobytes() == loss_p.tobytes(), (loss, loss_p)
  assert grad.tobytes() == grad_p.tobytes(), (grad, grad_p)
  assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
  assert np.all(grad[~mask] == 0.0)


@functools.cache
def _sequence_loss(kind):
  """A jitted `(loss, d loss / d log_probs)` of one sequence loss configuration."""
  name, option = kind

  def loss_fn(lp, a):
    if name == "kl":
      return jnp.sum(losses.kl_penalty(lp, a["ref_log_probs"], a["mask"], estimator=option))
    if name == "aggregate":
      return losses.aggregate(lp, a["mask"], aggregation=option, weights=a["weights"])
    aggregation, clip, ratio_level, weighted = option
    return losses.policy_gradient_loss(
        lp, a["advantages"], a["mask"], aggregation=aggregation,
        old_log_probs=a["old_log_probs"] if clip else None, clip_eps=0.2 if clip else None,
        clip_eps_high=0.28 if clip else None, ratio_level=ratio_level,
        weights=a["weights"] if weighted else None)

  return jax.jit(lambda lp, a: jax.value_and_grad(loss_fn)(lp, a))


SEQUENCE_KINDS = (
    [("kl", e) for e in losses.KL_ESTIMATORS]
    + [("aggregate", g) for g in losses.AGGREGATIONS]
    + [("pg", (g, clip, level, weighted)) for g in losses.AGGREGATIONS
       for clip, level, weighted in ((False, "token", False), (True, "token", True),
                                     (True, "sequence", False))])


@PROPERTY
@given(batch=masked_batches(), kind=st.sampled_from(SEQUENCE_KINDS))
def test_sequence_losses_ignore_whatever_masked_entries_hold(batch, kind):
  mask, clean, dirty = batch
  fn = _sequence_loss(kind)
  results = [fn(a.pop("log_probs"), {**a, "mask": mask})
             for a in (dict(clean), dict(dirty))]
  _assert_bitwise_equal(*results, mask)


@functools.cache
def _reinforce(option):
  def loss_fn(lp, a):
    return reinforce_loss(lp, a["reward"], a["baseline"] if "baseline" in option else None,
                          mask=a["mask"] if "mask" in option else None,
                          weights=a["weights"] if "weights" in option else None)

  return jax.jit(lambda lp, a: jax.value_and_grad(loss_fn)(lp, a))


@PROPERTY
@given(batch=masked_batches(),
       option=st.sampled_from([("mask",), ("mask", "baseline"), ("mask", "weights"),
                               ("mask", "weights", "baseline")]),
       as_bool=st.booleans())
def test_reinforce_loss_ignores_whatever_masked_entries_hold(batch, option, as_bool):
  mask, clean, dirty = batch
  fn = _reinforce(option)
  typed = mask if as_bool else mask.astype(np.float32)
  results = [fn(a.pop("log_probs"), {**a, "mask": typed}) for a in (dict(clean), dict(dirty))]
  _assert_bitwise_equal(*results, mask)


def test_masked_poison_passes_the_concrete_checks_and_gives_the_clean_value():
  """Outside jit the inputs are concrete and checked: only the entries kept are."""
  mask = np.array([[True, True, False], [False, False, False]])
  lp = np.array([[-1.0, -2.0, -np.inf], [np.nan, np.inf, -np.inf]], np.float32)
  reward = np.array([[1.0, 3.0, np.nan], [np.inf, np.nan, -np.inf]], np.float32)
  weights = np.array([[1.0, 3.0, np.nan], [-np.inf, np.nan, -1.0]], np.float32)
  baseline = np.array([[0.5, 0.5, np.inf], [np.nan, np.nan, np.nan]], np.float32)
  want = -(1 * -1.0 * 0.5 + 3 * -2.0 * 2.5) / 4
  got = reinforce_loss(lp, reward, baseline, mask=mask, weights=weights)
  assert float(got) == pytest.approx(want, rel=1e-6)
  assert float(reinforce_loss(lp, reward, weights=mask.astype(np.float32))) == pytest.approx(
      -(-1.0 * 1.0 + -2.0 * 3.0) / 2, rel=1e-6)  # 0/1 weights: the documented old usage
  grad = jax.grad(lambda x: losses.aggregate(x, mask, aggregation="token_mean",
                                             weights=weights))(jnp.asarray(lp))
  np.testing.assert_array_equal(grad, [[0.5, 1.5, 0.0], [0.0, 0.0, 0.0]])


# --- Masks hold 0 and 1; weights are separate ---------------------------------------------


@PROPERTY
@given(bad=st.floats(width=32).filter(lambda v: v not in (0.0, 1.0)),
       where=st.integers(0, N * L - 1))
def test_a_concrete_mask_must_hold_only_zeros_and_ones(bad, where):
  mask = np.ones(N * L, np.float32)
  mask[where] = bad
  mask = mask.reshape(N, L)
  lp = jnp.full((N, L), -1.0)
  with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
    losses.aggregate(lp, mask, aggregation="token_mean")
  with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
    losses.policy_gradient_loss(lp, jnp.ones(N), mask, aggregation="sequence_sum")
  with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
    losses.kl_penalty(lp, lp, mask, estimator="k3")
  with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
    reinforce_loss(lp, lp, mask=mask)


def test_a_traced_mask_selects_and_never_scales():
  """Under jit a mask cannot be read; only whether an entry is non-zero counts."""
  lp, mask = jnp.asarray([[-1.0, -2.0, -3.0]]), jnp.asarray([[1.0, 1.0, 0.0]])
  for aggregation in losses.AGGREGATIONS:
    fn = jax.jit(lambda m, a=aggregation: losses.aggregate(lp, m, aggregation=a))
    assert float(fn(2 * mask)) == float(fn(mask)) == float(
        losses.aggregate(lp, mask, aggregation=aggregation))


# --- Float settings are finite ------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("kl_coef", math.inf), ("kl_coef", math.nan), ("kl_coef", -0.1), ("kl_coef", 1e300),
    ("temperature", math.inf), ("temperature", math.nan), ("temperature", 0.0),
    ("clip_eps", math.inf), ("clip_eps", math.nan), ("clip_eps", 1.0), ("clip_eps", -0.1),
    ("clip_eps_high", math.inf), ("clip_eps_high", math.nan), ("clip_eps_high", -0.1)])
def test_sequence_config_floats_are_finite_and_in_range(name, value):
  extra = {"clip_eps": 0.2} if name == "clip_eps_high" else {}
  with pytest.raises(ValueError, match=f"^{name} must be finite"):
    SequenceConfig(max_new_tokens=4, **extra, **{name: value})


def test_sequence_config_clip_eps_high_needs_clip_eps():
  with pytest.raises(ValueError, match="clip_eps_high=0.28 needs clip_eps"):
    SequenceConfig(max_new_tokens=4, clip_eps_high=0.28)
  config = SequenceConfig(max_new_tokens=4, kl_coef=0.1, temperature=0.7, clip_eps=0.2,
                          clip_eps_high=0.28)
  assert (config.kl_coef, config.clip_eps_high) == (0.1, 0.28)


@PROPERTY
@given(name=st.sampled_from(sorted(hparams.all_hparam_ranges())),
       value=st.sampled_from(POISONS + (1e39, -1e39)),
       kind=st.sampled_from(["python", "numpy", "numpy[2]", "jax"]))
def test_train_config_refuses_every_non_finite_hyperparameter(name, value, kind):
  cast = {"python": float, "numpy": np.float64,
          "numpy[2]": lambda v: np.array([0.5, v]), "jax": lambda v: jnp.asarray(v)}[kind]
  algo, baseline = {"baseline_constant": ("reinforce", "constant"),
                    "ema_decay": ("reinforce", "ema"),
                    "value_coef": ("a2c", None)}.get(name, ("ppo", None))
  if name == "gamma":
    algo = "a2c"
  algorithm = TrainConfig(algo=algo, baseline=baseline).algorithm
  with pytest.raises(ValueError, match=f"^{name} must be"):
    # Through the class (Python and NumPy values), or through TrainConfig (JAX arrays too).
    TrainConfig(algorithm=algorithm.replace_flat(**{name: cast(value)}))
