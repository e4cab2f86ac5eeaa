"""reinforce_jax.sequence.losses against formulas written out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.sequence import losses

REWARDS = np.array([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
# Three completions of lengths 2, 1 and 3, padded to 3.
MASK = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
LOG_PROBS = np.array([[-0.5, -1.0, 7.0], [-2.0, np.nan, -np.inf], [-0.1, -0.2, -0.3]],
                     np.float32)
ADVANTAGES = np.array([1.5, -2.0, 0.5], np.float32)


def _by_hand(rewards, estimator, eps=1e-6):
  out = np.zeros_like(rewards)
  for b, row in enumerate(rewards):
    for i, r in enumerate(row):
      others = np.delete(row, i)
      out[b, i] = {
          "none": r,
          "rloo": r - others.mean(),
          "grpo": (r - row.mean()) / (row.std() + eps),
          "dr_grpo": r - row.mean(),
      }[estimator]
  return out


@pytest.mark.parametrize("estimator", losses.ESTIMATORS)
def test_group_advantages_match_their_definitions(estimator):
  got = losses.group_advantages(jnp.asarray(REWARDS), estimator=estimator)
  np.testing.assert_allclose(got, _by_hand(REWARDS, estimator), rtol=1e-5, atol=1e-6)


def test_group_advantages_of_equal_rewards_are_exactly_zero_but_for_none():
  """Float32 rounding of the mean once left ~1e-5, which grpo's eps-sized std blew up:
  three rewards of 123.456 got -0.884 each."""
  for equal in (jnp.full((1, 5), 0.7), jnp.full((1, 3), 123.456), jnp.full((1, 3), 1.1)):
    for estimator in ("rloo", "grpo", "dr_grpo"):
      for eps in (1e-6, 0.0):
        got = np.asarray(losses.group_advantages(equal, estimator=estimator, eps=eps))
        assert np.all(got == 0.0), (estimator, got)


def test_dr_grpo_is_rloo_scaled_by_g_minus_one_over_g():
  rloo = losses.group_advantages(jnp.asarray(REWARDS), estimator="rloo")
  dr = losses.group_advantages(jnp.asarray(REWARDS), estimator="dr_grpo")
  np.testing.assert_allclose(dr, rloo * 3 / 4, rtol=1e-6)


def test_group_advantages_take_a_function_and_check_it():
  rewards = jnp.asarray(REWARDS)
  got = losses.group_advantages(rewards, estimator=lambda r: r - 1.0)
  np.testing.assert_allclose(got, REWARDS - 1.0)
  with pytest.raises(ValueError, match=r"advantages has shape \(2,\)"):
    losses.group_advantages(rewards, estimator=lambda r: r[:, 0])


def test_group_advantages_reject_bad_input():
  with pytest.raises(ValueError, match=r"\[B, G\], got shape \(4,\)"):
    losses.group_advantages(jnp.ones(4), estimator="rloo")
  for estimator in ("rloo", "grpo", "dr_grpo"):  # grpo and dr_grpo once gave zeros
    with pytest.raises(ValueError, match=rf"'{estimator}'.*at least 2 completions.*\(3, 1\)"):
      losses.group_advantages(jnp.ones((3, 1)), estimator=estimator)
  np.testing.assert_array_equal(losses.group_advantages(jnp.ones((3, 1)), estimator="none"), 1)
  with pytest.raises(ValueError, match="estimator must be one of"):
    losses.group_advantages(jnp.ones((3, 2)), estimator="ppo")


def _token_weights(aggregation):
  """d(-loss)/d log_probs: each real token of completion n carries A_n times this weight."""
  lengths = MASK.sum(1)
  n, length = MASK.shape
  per_sequence = {
      "sequence_sum": np.full(n, 1 / n),
      "token_mean": np.full(n, 1 / lengths.sum()),
      "sequence_mean": 1 / (n * lengths),
      "constant": np.full(n, 1 / (n * length)),
  }[aggregation]
  return MASK * (ADVANTAGES * per_sequence)[:, None]


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_policy_gradient_loss_weights_tokens_as_documented(aggregation):
  # Padded positions hold 7, nan and -inf: none of them may reach the loss or its gradient.
  def loss(lp):
    return losses.policy_gradient_loss(lp, jnp.asarray(ADVANTAGES), jnp.asarray(MASK),
                                       aggregation=aggregation)

  value, grad = jax.value_and_grad(loss)(jnp.asarray(LOG_PROBS))
  weights = _token_weights(aggregation)
  np.testing.assert_allclose(-grad, weights, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(value, -np.sum(weights * np.where(MASK, LOG_PROBS, 0.0)),
                             rtol=1e-6)


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_aggregate_weights_scale_tokens_and_the_mask_only_selects(aggregation):
  values = jnp.asarray(np.where(MASK, LOG_PROBS, 0.0))
  weights = jnp.asarray([[2.0, 0.5, np.nan], [3.0, -1.0, np.inf], [1.0, 0.0, 4.0]])
  got = losses.aggregate(jnp.asarray(LOG_PROBS), MASK, aggregation=aggregation,
                         weights=weights)
  want = losses.aggregate(values * np.where(MASK, weights, 0.0), MASK, aggregation=aggregation)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert np.isfinite(want)
  # A 0/1 float or int mask is the bool mask; any other value is refused.
  plain = losses.aggregate(jnp.asarray(LOG_PROBS), MASK, aggregation=aggregation)
  for mask in (MASK.astype(np.float32), MASK.astype(np.int32)):
    assert losses.aggregate(jnp.asarray(LOG_PROBS), mask, aggregation=aggregation) == plain
  for bad in (2 * MASK.astype(np.float32), np.where(MASK, 1.0, -1.0)):
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1 .*got \d+ other"):
      losses.aggregate(jnp.asarray(LOG_PROBS), bad, aggregation=aggregation)
  with pytest.raises(ValueError, match=r"weights must be finite and in \[0, inf\)"):
    losses.aggregate(values, MASK, aggregation=aggregation, weights=-jnp.ones(MASK.shape))


def test_a_callable_aggregation_sees_masked_tokens_as_zero():
  seen = losses.aggregate(jnp.asarray(LOG_PROBS), MASK, aggregation=lambda v, m: v)
  np.testing.assert_array_equal(seen, np.where(MASK, LOG_PROBS, 0.0))


def test_advantages_get_no_gradient():
  grad = jax.grad(lambda a: losses.policy_gradient_loss(
      jnp.asarray(LOG_PROBS), a, jnp.asarray(MASK), aggregation="token_mean"))(
          jnp.asarray(ADVANTAGES))
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("ratio_level", losses.RATIO_LEVELS)
@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_on_policy_ratios_give_the_plain_gradient(aggregation, ratio_level):
  lp = jnp.asarray(np.where(MASK, LOG_PROBS, -1.0))

  def clipped(lp):
    return losses.policy_gradient_loss(
        lp, jnp.asarray(ADVANTAGES), jnp.asarray(MASK), aggregation=aggregation,
        old_log_probs=lp, clip_eps=0.2, clip_eps_high=0.28, ratio_level=ratio_level)

  plain = jax.grad(lambda lp: losses.policy_gradient_loss(
      lp, jnp.asarray(ADVANTAGES), jnp.asarray(MASK), aggregation=aggregation))(lp)
  np.testing.assert_allclose(jax.grad(clipped)(lp), plain, rtol=1e-6, atol=1e-8)


def test_token_clipping_is_pessimistic_and_clip_higher_is_asymmetric():
  mask = jnp.ones((4, 1), bool)
  old = jnp.zeros((4, 1))
  # Ratios 1.25 (A > 0): clipped at 1.2, not at 1.28; 0.75 (A < 0): clipped at 0.8;
  # 1.25 with A < 0 and 0.75 with A > 0: the unclipped term is the smaller, kept.
  lp = jnp.log(jnp.array([[1.25], [0.75], [1.25], [0.75]]))
  adv = jnp.array([1.0, -1.0, -1.0, 1.0])

  def loss(lp, high):
    return losses.policy_gradient_loss(lp, adv, mask, aggregation="sequence_sum",
                                       old_log_probs=old, clip_eps=0.2, clip_eps_high=high)

  grad = -jax.grad(loss)(lp, None)[:, 0] * 4
  np.testing.assert_allclose(grad, [0.0, 0.0, -1.25, 0.75], rtol=1e-6)
  grad_high = -jax.grad(loss)(lp, 0.28)[:, 0] * 4
  np.testing.assert_allclose(grad_high, [1.25, 0.0, -1.25, 0.75], rtol=1e-6)
  np.testing.assert_allclose(loss(lp, None), -(1.2 - 0.8 - 1.25 + 0.75) / 4, rtol=1e-6)


def test_sequence_ratio_is_gspo():
  rng = np.random.default_rng(0)
  lp = jnp.asarray(np.where(MASK, rng.normal(-1, 0.3, MASK.shape), 0.0), jnp.float32)
  old = jnp.asarray(np.where(MASK, rng.normal(-1, 0.3, MASK.shape), 0.0), jnp.float32)
  adv = jnp.asarray(ADVANTAGES)
  lengths = MASK.sum(1)

  def gspo(lp):  # Zheng et al. (2025), eq. 5, written per sequence
    s = jnp.exp(jnp.sum(jnp.where(MASK, lp - old, 0.0), 1) / lengths)
    return -jnp.mean(jnp.minimum(s * adv, jnp.clip(s, 0.8, 1.2) * adv))

  def ours(lp):
    return losses.policy_gradient_loss(lp, adv, jnp.asarray(MASK), aggregation="sequence_mean",
                                       old_log_probs=old, clip_eps=0.2,
                                       ratio_level="sequence")

  np.testing.assert_allclose(ours(lp), gspo(lp), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(ours)(lp), jax.grad(gspo)(lp), rtol=1e-5, atol=1e-7)


def test_policy_gradient_loss_names_bad_shapes():
  lp, adv, mask = jnp.zeros((3, 4)), jnp.zeros(3), jnp.ones((3, 4))
  with pytest.raises(ValueError, match=r"advantages must have shape \[N\] = \(3,\).*\(3, 1\)"):
    losses.policy_gradient_loss(lp, adv[:, None], mask, aggregation="token_mean")
  with pytest.raises(ValueError, match=r"log_probs has shape \(3, 4\), mask has shape \(3, 5\)"):
    losses.policy_gradient_loss(lp, adv, jnp.ones((3, 5)), aggregation="token_mean")
  with pytest.raises(ValueError, match=r"old_log_probs has shape \(3, 2\)"):
    losses.policy_gradient_loss(lp, adv, mask, aggregation="token_mean",
                                old_log_probs=jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match=r"\[N, L\], got shape \(3,\)"):
    losses.policy_gradient_loss(adv, adv, adv, aggregation="token_mean")
  with pytest.raises(ValueError, match="aggregation must be one of"):
    losses.policy_gradient_loss(lp, adv, mask, aggregation="mean")
  with pytest.raises(ValueError, match="clip_eps_high needs clip_eps"):
    losses.policy_gradient_loss(lp, adv, mask, aggregation="token_mean", clip_eps_high=0.3)
  with pytest.raises(ValueError, match="ratio_level"):
    losses.policy_gradient_loss(lp, adv, mask, aggregation="token_mean", ratio_level="seq")


def test_kl_penalty_values_and_their_gradients():
  lp = jnp.array([[-0.3, -1.2, -5.0]])
  ref = jnp.array([[-0.9, -0.7, 3.0]])
  mask = jnp.array([[True, True, False]])
  d = np.array([0.6, -0.5])
  k = {e: losses.kl_penalty(lp, ref, mask, estimator=e) for e in losses.KL_ESTIMATORS}
  np.testing.assert_allclose(k["k1"][0, :2], d, rtol=1e-6)
  np.testing.assert_allclose(k["k2"][0, :2], d**2 / 2, rtol=1e-6)
  np.testing.assert_allclose(k["k3"][0, :2], np.exp(-d) + d - 1, rtol=1e-6)
  for e in losses.KL_ESTIMATORS:
    assert k[e][0, 2] == 0.0
  derivative = {"k1": np.ones(2), "k2": d, "k3": 1 - np.exp(-d)}
  for e, want in derivative.items():
    grad_lp, grad_ref = jax.grad(
        lambda a, b, e=e: jnp.sum(losses.kl_penalty(a, b, mask, estimator=e)), (0, 1))(lp, ref)
    np.testing.assert_allclose(grad_lp[0, :2], want, rtol=1e-6)
    np.testing.assert_array_equal(grad_ref, 0.0)  # the reference policy is fixed


def test_kl_estimators_on_a_single_categorical():
  # One token from a categorical: E_pi[k1] = E_pi[k3] = KL exactly, and k3 >= 0 everywhere.
  pi = jnp.array([0.5, 0.3, 0.2])
  ref = jnp.array([0.2, 0.2, 0.6])
  kl = float(jnp.sum(pi * jnp.log(pi / ref)))
  lp, rl = jnp.log(pi)[:, None], jnp.log(ref)[:, None]
  mask = jnp.ones((3, 1), bool)
  for e in ("k1", "k3"):
    value = jnp.sum(pi * losses.kl_penalty(lp, rl, mask, estimator=e)[:, 0])
    np.testing.assert_allclose(value, kl, rtol=1e-6)
  assert jnp.all(losses.kl_penalty(lp, rl, mask, estimator="k3") >= 0)
  with pytest.raises(ValueError, match="estimator must be one of"):
    losses.kl_penalty(lp, rl, mask, estimator="k4")
  with pytest.raises(ValueError, match=r"ref_log_probs has shape \(3, 2\)"):
    losses.kl_penalty(lp, jnp.zeros((3, 2)), mask, estimator="k1")


def test_everything_jits():
  fn = jax.jit(lambda lp, r, m: losses.policy_gradient_loss(
      lp, losses.group_advantages(r, estimator="grpo").reshape(-1), m,
      aggregation="token_mean", old_log_probs=lp - 0.01, clip_eps=0.2, ratio_level="sequence")
      + 0.1 * losses.aggregate(losses.kl_penalty(lp, lp + 0.1, m, estimator="k3"), m,
                               aggregation="token_mean"))
  value = fn(jnp.full((4, 3), -1.0), jnp.arange(4.0).reshape(2, 2), jnp.ones((4, 3)))
  assert np.isfinite(value)
