"""The exact audit: which sequence estimators are unbiased, decided by enumeration.

A tabular policy over two tokens plus EOS, at most 4 tokens (31 sequences), makes the exact
gradient a finite sum, and the exact expectation of an estimator over all 31^2 groups of two
a finite sum too. The unbiased cells must match the exact gradient to float precision (up to
the scale theory predicts), the biased ones must miss it by far more, and fixed-key Monte
Carlo must agree within a stated number of standard errors.
"""

import copy
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.sequence import (
    advantages,
    losses,
    off_policy,
    presets,
    regularizers,
    shaping,
    tabular,
)
from reinforce_jax.sequence.tabular import EstimatorConfig

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import sequence_audit  # noqa: E402

BETA = 0.5
LENGTH = 4
Z_UNBIASED = 4.5  # max |z| over 45 components: exceeded with probability ~3e-4 without bias
Z_BIASED = 10.0


@functools.cache
def _problem(max_length=LENGTH):
  table, num_states = tabular.enumerate_sequences(vocab_size=3, max_length=max_length)
  logits = jax.random.normal(jax.random.key(0), (num_states, 3))
  ref_logits = jax.random.normal(jax.random.key(1), (num_states, 3))
  rewards = tabular.content_and_length_reward(table)
  grad = jax.grad(tabular.objective)(logits, table, rewards)
  grad_kl = jax.grad(tabular.objective)(logits, table, rewards, beta=BETA,
                                        ref_logits=ref_logits)
  return table, logits, ref_logits, rewards, grad, grad_kl


def _exact(config, group_size=2, max_length=LENGTH):
  table, logits, ref_logits, rewards, *_ = _problem(max_length)
  return tabular.exact_expectation(logits, table, rewards, group_size, config, beta=BETA,
                                   ref_logits=ref_logits)


def _relative_error(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _direction_error(a, b):
  along = jnp.sum(a * b) / jnp.sum(b * b) * b
  return float(jnp.linalg.norm(a - along) / jnp.linalg.norm(along))


def test_the_table_enumerates_every_sequence_once():
  table, num_states = tabular.enumerate_sequences(vocab_size=3, max_length=4)
  assert num_states == 1 + 2 + 4 + 8
  assert table.tokens.shape == (15 + 16, 4)
  assert len({tuple(np.asarray(t)[np.asarray(m)]) for t, m in zip(table.tokens, table.mask,
                                                                 strict=True)}) == 31
  assert int(table.terminated.sum()) == 15
  logits = _problem()[1]
  np.testing.assert_allclose(jnp.sum(jnp.exp(tabular.sequence_log_probs(logits, table))), 1.0,
                             rtol=1e-6)


def test_exact_objective_against_a_token_by_token_recursion():
  table, logits, ref_logits, rewards, *_ = _problem()
  pi, ref = jax.nn.softmax(logits, -1), jax.nn.softmax(ref_logits, -1)
  state_of = {}
  for s, t, m in zip(np.asarray(table.states), np.asarray(table.tokens),
                     np.asarray(table.mask), strict=True):
    for k in range(int(m.sum())):
      state_of[tuple(t[:k])] = int(s[k])

  def value(prefix):  # E[R] - beta KL from here on, by walking the tree
    total = 0.0
    for token in range(3):
      seq = (*prefix, token)
      p, q = float(pi[state_of[prefix], token]), float(ref[state_of[prefix], token])
      if token == 0 or len(seq) == LENGTH:
        r = seq.count(1) - 0.5 * seq.count(2) + 0.5 * (token == 0)
        total += p * (r - BETA * np.log(p / q))
      else:
        total += p * (value(seq) - BETA * np.log(p / q))
    return total

  got = tabular.objective(logits, table, rewards, beta=BETA, ref_logits=ref_logits)
  np.testing.assert_allclose(got, value(()), rtol=1e-5)


def test_samples_follow_the_sequence_probabilities():
  table, logits, *_ = _problem()
  num = 200_000
  idx = tabular.sample(jax.random.key(5), logits, table, (num,))
  freq = np.bincount(np.asarray(idx), minlength=31) / num
  p = np.asarray(jnp.exp(tabular.sequence_log_probs(logits, table)))
  z = (freq - p) / np.sqrt(p * (1 - p) / num)
  assert np.max(np.abs(z)) < Z_UNBIASED


@pytest.mark.parametrize(("config", "scale"), [
    (EstimatorConfig("none", "sequence_sum"), 1.0),
    (EstimatorConfig("rloo", "sequence_sum"), 1.0),
    (EstimatorConfig("dr_grpo", "sequence_sum"), 1 / 2),  # (G - 1) / G at G = 2
    (EstimatorConfig("rloo", "constant"), 1 / LENGTH),
], ids=lambda c: getattr(c, "estimator", "") + "/" + getattr(c, "aggregation", ""))
def test_unbiased_cells_are_exactly_unbiased(config, scale):
  grad = _problem()[4]
  assert _relative_error(_exact(config), scale * grad) < 1e-5


@pytest.mark.parametrize("config", [
    EstimatorConfig("grpo", "sequence_sum"),
    EstimatorConfig("rloo", "sequence_mean"),
    EstimatorConfig("rloo", "token_mean"),
    EstimatorConfig("none", "sequence_mean"),
], ids=lambda c: f"{c.estimator}/{c.aggregation}")
def test_normalised_cells_are_biased_in_direction(config):
  # Not a rescaled gradient: no learning rate can remove this bias.
  assert _direction_error(_exact(config), _problem()[4]) > 0.1


def test_only_k1_as_a_reward_gives_the_kl_gradient():
  grad_kl = _problem()[5]
  errors = {(k, how): _relative_error(_exact(EstimatorConfig("rloo", "sequence_sum", k, how)),
                                      grad_kl)
            for k in ("k1", "k2", "k3") for how in ("reward", "loss")}
  assert errors.pop(("k1", "reward")) < 1e-5
  assert min(errors.values()) > 0.1, errors


@pytest.mark.slow
def test_k2_as_a_loss_is_exact_for_one_token_but_not_k3():
  # One token per sequence: k2's gradient d grad log pi is the KL's; k3's is the forward KL's.
  grad_kl = _problem(1)[5]
  k2 = _exact(EstimatorConfig("rloo", "sequence_sum", "k2", "loss"), 4, max_length=1)
  k3 = _exact(EstimatorConfig("rloo", "sequence_sum", "k3", "loss"), 4, max_length=1)
  assert _relative_error(k2, grad_kl) < 1e-5
  assert _relative_error(k3, grad_kl) > 0.1


def _z(config, group_size=4, num_groups=4000):
  table, logits, ref_logits, rewards, grad, grad_kl = _problem()
  idx = tabular.sample(jax.random.key(7), logits, table, (num_groups, group_size))
  est = np.asarray(tabular.group_gradients(logits, table, rewards, idx, config, beta=BETA,
                                           ref_logits=ref_logits)).reshape(num_groups, -1)
  truth = np.asarray(grad if config.kl is None else grad_kl).ravel()
  se = est.std(0, ddof=1) / np.sqrt(num_groups)
  return np.max(np.abs((est.mean(0) - truth) / se))


@pytest.mark.parametrize("config", [
    EstimatorConfig("none", "sequence_sum"),
    EstimatorConfig("rloo", "sequence_sum"),
    EstimatorConfig("rloo", "sequence_sum", "k1", "reward"),
], ids=lambda c: f"{c.estimator}/{c.aggregation}/{c.kl}")
def test_monte_carlo_finds_no_bias_where_there_is_none(config):
  assert _z(config) < Z_UNBIASED


@pytest.mark.parametrize("config", [
    EstimatorConfig("rloo", "sequence_mean"),
    EstimatorConfig("grpo", "sequence_sum"),
    EstimatorConfig("rloo", "sequence_sum", "k3", "loss"),
], ids=lambda c: f"{c.estimator}/{c.aggregation}/{c.kl}")
def test_monte_carlo_finds_the_bias_where_there_is(config):
  assert _z(config) > Z_BIASED


@pytest.mark.slow
def test_across_prompts_grpo_reweights_and_rloo_does_not():
  # Two prompts in a batch, the second paying a quarter of the first's rewards: GRPO divides
  # each prompt's scale out (Liu et al.'s difficulty bias), RLOO keeps it. Sequences of at
  # most 3 tokens keep the 15^4 batches cheap.
  table, num_states = tabular.enumerate_sequences(vocab_size=3, max_length=3)
  logits = jnp.stack([jax.random.normal(jax.random.key(0), (num_states, 3)),
                      jax.random.normal(jax.random.key(3), (num_states, 3))])
  base = tabular.content_and_length_reward(table)
  rewards = jnp.stack([base, 0.25 * base])
  grad = jax.grad(lambda th: jnp.mean(jax.vmap(tabular.objective, (0, None, 0))(
      th, table, rewards)))(logits)

  def exact(estimator):
    return tabular.exact_batch_expectation(logits, table, rewards, 2,
                                           EstimatorConfig(estimator, "sequence_sum"))

  assert _relative_error(exact("rloo"), grad) < 1e-5
  one_prompt = _direction_error(_exact(EstimatorConfig("grpo", "sequence_sum"), max_length=3),
                                _problem(3)[4])
  assert _direction_error(exact("grpo"), grad) > 2 * one_prompt


def test_off_policy_only_the_sequence_weight_is_unbiased():
  # Completions from a stale policy: pi(y) / pi_old(y) on each advantage corrects exactly;
  # PPO's per-token ratios and GSPO's geometric-mean ratio do not, clipped or not.
  table, logits, _, rewards, grad, _ = _problem()
  old = logits + 0.5 * jax.random.normal(jax.random.key(4), logits.shape)

  def error(ratio_level, clip_eps=None):
    config = EstimatorConfig("rloo", "sequence_sum", ratio_level=ratio_level,
                             clip_eps=clip_eps)
    return _relative_error(tabular.exact_expectation(logits, table, rewards, 2, config,
                                                     old_logits=old), grad)

  assert error("full") < 1e-5
  assert error(None) > 0.1  # stale samples, no weight
  assert error("token") > 0.02
  assert error("sequence") > 0.05
  assert error("token", 0.2) > 0.1


# --- every variant as a loss function of the batch -------------------------------------------
# Sequences of at most 3 tokens (15 sequences, 225 groups of two) keep these fast; each cell is
# built from the library's parts exactly as a user would build it.

SHORT = 3


def _rloo(rewards):
  return advantages.relative_advantages(rewards, baseline="loo", scale="none").reshape(-1)


def _pg(batch, adv, **kw):
  kw.setdefault("mask", batch.mask)
  mask = kw.pop("mask")
  return losses.policy_gradient_loss(batch.log_probs, adv, mask, aggregation="sequence_sum",
                                     **kw)


def _short_exact(loss_fn, group_size=2, **kw):
  table, logits, ref_logits, rewards, *_ = _problem(SHORT)
  return tabular.exact_expectation(logits, table, rewards, group_size, loss_fn,
                                   ref_logits=ref_logits, **kw)


@pytest.mark.slow
def test_a_loss_function_is_audited_like_its_estimator_config():
  table, logits, ref_logits, rewards, grad, _ = _problem(SHORT)
  idx = tabular.sample(jax.random.key(3), logits, table, (16, 2))
  config = EstimatorConfig("rloo", "sequence_sum")

  def loss_fn(batch):
    return _pg(batch, _rloo(batch.rewards))

  np.testing.assert_allclose(tabular.group_gradients(logits, table, rewards, idx, loss_fn),
                             tabular.group_gradients(logits, table, rewards, idx, config),
                             atol=1e-6)
  assert _relative_error(_short_exact(loss_fn), grad) < 1e-5


def _tabular_apply(logits, length):
  """A causal `apply_fn` for the tabular policy: a one-token prompt, then the completion."""
  def apply_fn(params, tokens):
    codes, states = jnp.zeros(tokens.shape[0], jnp.int32), []
    for k in range(tokens.shape[1]):  # position k predicts completion token k (k >= 0)
      states.append(jnp.minimum(2**min(k, length - 1) - 1 + codes, params.shape[0] - 1))
      codes = 2 * codes + jnp.clip(tokens[:, min(k + 1, tokens.shape[1] - 1)] - 1, 0, 1)
    return params[jnp.stack(states, axis=1)]
  return apply_fn


def test_greedy_index_is_the_greedy_decode_of_the_policy():
  table, logits, _, rewards, *_ = _problem(SHORT)
  done = shaping.greedy_completions(_tabular_apply(logits, SHORT), logits,
                                    jnp.zeros((1, 1), jnp.int32), max_new_tokens=SHORT,
                                    eos_id=0)
  index = int(tabular.greedy_index(logits, table))
  mask = np.asarray(done.mask[0, 1:]) != 0
  np.testing.assert_array_equal(np.asarray(done.tokens[0, 1:])[mask],
                                np.asarray(table.tokens[index])[np.asarray(table.mask[index])])


def test_remax_is_exactly_unbiased():
  # The greedy completion's reward is a constant of the policy: a baseline that keeps the
  # score-function gradient unbiased, exactly, at G = 2.
  def remax(batch):
    return _pg(batch, shaping.remax_advantages(batch.rewards, batch.greedy_rewards).reshape(-1))

  assert _relative_error(_short_exact(remax), _problem(SHORT)[4]) < 1e-5


def _reward_masses(logits, table, rewards):
  """`{v: (P(R = v), grad P(R = v))}` over the distinct reward values."""
  values = np.unique(np.asarray(rewards))
  onehot = jnp.asarray(np.asarray(rewards)[None, :] == values[:, None], jnp.float32)

  def masses(theta):
    return onehot @ jnp.exp(tabular.sequence_log_probs(theta, table))

  p, dp = masses(logits), jax.jacobian(masses)(logits)
  return {float(v): (float(p[i]), dp[i]) for i, v in enumerate(values)}


def _dynamic(adv_fn):
  def loss_fn(batch):
    keep = shaping.dynamic_sampling_mask(batch.rewards).keep
    weights = jnp.broadcast_to(jnp.repeat(keep, batch.rewards.shape[1])[:, None],
                               batch.mask.shape).astype(batch.log_probs.dtype)
    return _pg(batch, adv_fn(batch.rewards).reshape(-1), weights=weights)
  return loss_fn


def _keep(rewards):
  return shaping.dynamic_sampling_mask(rewards).keep


@pytest.mark.parametrize("group_size", [2, 3])
def test_dynamic_sampling_rescales_by_the_mass_of_kept_groups(group_size):
  # A group's rewards are all equal with probability q = sum_v P_v^G. Under a group baseline
  # such a group's gradient is 0, so keeping only the others gives E[g | kept] = grad J / (1-q):
  # the right direction, scaled by a factor that depends on the policy.
  table, logits, _, rewards, grad, _ = _problem(SHORT)
  q = sum(p**group_size for p, _ in _reward_masses(logits, table, rewards).values())
  got = _short_exact(_dynamic(_rloo), group_size, accept=_keep)
  assert 0.05 < q < 0.5
  assert _relative_error(got, grad / (1 - q)) < 1e-5


def test_dynamic_sampling_without_a_baseline_is_biased_by_the_dropped_groups():
  # Without a baseline an equal-reward group carried (1/G) sum_i v grad log pi(y_i); its mean
  # over those groups is sum_v v P_v^(G-1) grad P_v = grad(sum_v v P_v^G) / G, so
  # E[g | kept] = (grad J - sum_v v P_v^(G-1) grad P_v) / (1 - q).
  table, logits, _, rewards, grad, _ = _problem(SHORT)
  masses = _reward_masses(logits, table, rewards)
  q = sum(p**2 for p, _ in masses.values())
  dropped = sum(v * p * dp for v, (p, dp) in masses.items())
  none = _dynamic(lambda r: advantages.relative_advantages(r, baseline="none", scale="none"))
  got = _short_exact(none, 2, accept=_keep)
  assert _relative_error(got, (grad - dropped) / (1 - q)) < 1e-5
  assert _direction_error(got, grad) > 0.02


@pytest.mark.slow
def test_dynamic_sampling_across_prompts_weights_each_prompt_by_its_kept_mass():
  # Each prompt's group drawn again until kept: prompt b's gradient is grad J_b / (1 - q_b),
  # so prompts whose groups are often all-equal are weighted up. 7 sequences of at most two
  # tokens, 7^4 batches of two prompts.
  table, num_states = tabular.enumerate_sequences(vocab_size=3, max_length=2)
  logits = jnp.stack([jax.random.normal(jax.random.key(0), (num_states, 3)),
                      jax.random.normal(jax.random.key(3), (num_states, 3))])
  rewards = jnp.stack([tabular.content_and_length_reward(table)] * 2)
  got = tabular.exact_batch_expectation(logits, table, rewards, 2, _dynamic(_rloo),
                                        accept=_keep)
  for b in range(2):
    q = sum(p**2 for p, _ in _reward_masses(logits[b], table, rewards[b]).values())
    want = jax.grad(tabular.objective)(logits[b], table, rewards[b]) / (2 * (1 - q))
    assert _relative_error(got[b], want) < 1e-5


def test_grpo_variants_coincide_for_one_prompt_and_ddof_is_a_constant_factor():
  # One prompt: the batch std is the group std, and REINFORCE++'s batch normalisation of
  # group-centred rewards is GRPO's; ddof=1 multiplies every advantage by sqrt((G - 1) / G).
  def grpo(ddof=0, scale="group"):
    return lambda batch: _pg(batch, advantages.relative_advantages(
        batch.rewards, baseline="mean", scale=scale, ddof=ddof).reshape(-1))

  def reinforce_pp(baseline):
    return lambda batch: _pg(batch, advantages.reinforce_pp_advantages(
        batch.rewards, baseline=baseline).reshape(-1))

  base = _short_exact(grpo())
  for other in (grpo(scale="batch"), reinforce_pp("batch"), reinforce_pp("group")):
    np.testing.assert_allclose(_short_exact(other), base, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_short_exact(grpo(ddof=1)), base / np.sqrt(2), rtol=1e-4,
                             atol=1e-6)
  assert _direction_error(base, _problem(SHORT)[4]) > 0.1


def _overlong(batch):
  lengths = jnp.sum(batch.mask, axis=1)
  shaped = batch.rewards + shaping.overlong_penalty(
      lengths, max_length=SHORT, cache_length=2).reshape(batch.rewards.shape)
  return _pg(batch, _rloo(shaped))


def test_overlong_shaping_is_unbiased_for_the_shaped_objective_only():
  table, logits, _, rewards, grad, _ = _problem(SHORT)
  shaped = rewards + shaping.overlong_penalty(table.lengths, max_length=SHORT, cache_length=2)
  got = _short_exact(_overlong)
  assert _relative_error(got, jax.grad(tabular.objective)(logits, table, shaped)) < 1e-5
  assert _relative_error(got, grad) > 0.1


def test_rows_nonempty_changes_nothing_until_a_mask_empties_rows():
  # EOS is a token, so no tabular completion is empty: tunix's row count is TRL's. Overlong
  # filtering empties the truncated rows, and then 1 / #kept rows is a different estimator.
  table = _problem(SHORT)[0]
  assert int(table.lengths.min()) >= 1

  def loss(rows, filtered):
    def loss_fn(batch):
      mask = batch.mask
      if filtered:
        mask, _ = shaping.truncated_completion_mask(batch.tokens, batch.mask, eos_id=0)
      return losses.policy_gradient_loss(batch.log_probs, _rloo(batch.rewards), mask,
                                         aggregation="sequence_mean", rows=rows)
    return loss_fn

  np.testing.assert_allclose(_short_exact(loss("nonempty", False)),
                             _short_exact(loss("batch", False)), atol=1e-7)
  assert _relative_error(_short_exact(loss("nonempty", True)),
                         _short_exact(loss("batch", True))) > 0.05


def test_top_entropy_tokens_alone_are_a_biased_gradient():
  def top_entropy(batch):
    kept = shaping.top_entropy_mask(batch.entropy, batch.mask, fraction=0.2)
    return _pg(batch, _rloo(batch.rewards), mask=kept)

  assert _direction_error(_short_exact(top_entropy), _problem(SHORT)[4]) > 0.3


@pytest.mark.slow
def test_clip_cov_expected_weights_match_its_random_draws():
  # The audit averages Clip-Cov's uniform draw exactly: a candidate is dropped with
  # probability k / #candidates. Checked here against 4000 draws of the library's own key.
  table, logits, *_ = _problem(SHORT)
  idx = jnp.asarray([3, 10, 13, 14, 5, 12, 9, 14])  # one batch of 8
  lp = tabular.token_log_probs(logits, table)[idx]
  mask = table.mask[idx]
  adv = jnp.asarray([3.0, -2.0, 1.0, 2.5, -1.0, 0.5, -3.0, 2.0])
  every = shaping.clip_cov(jax.random.key(0), lp, adv, mask, fraction=1.0, low=0.2)
  candidates = np.asarray(mask & ~every.mask)
  count = int(every.metrics["num_candidates"])
  assert count >= 3  # a real draw: several candidates for one slot
  draws = jax.jit(jax.vmap(lambda k: shaping.clip_cov(k, lp, adv, mask, low=0.2).weights))(
      jax.random.split(jax.random.key(1), 4000))
  mean = np.asarray(draws.mean(0))
  np.testing.assert_allclose(mean[candidates], 1 - 1 / count, atol=4.5 * np.sqrt(
      (1 / count) * (1 - 1 / count) / 4000))
  np.testing.assert_array_equal(mean[np.asarray(mask) & ~candidates], 1.0)


_TRL_MODES = {"grpo": "sequence_mean", "sapo": "sequence_mean", "dr_grpo": "constant",
              "luspo": "sequence_sum", "dapo": "token_mean", "cispo": "token_mean",
              "vespo": "token_mean", "bnpo": "token_mean"}


@functools.cache
def _on_policy_gradients(loss_type=None, mode=None):
  """Gradients of 8 groups of two: TRL's `loss_type` on-policy, or the plain surrogate."""
  table, logits, _, rewards, *_ = _problem(SHORT)
  idx = tabular.sample(jax.random.key(3), logits, table, (8, 2))
  if loss_type is not None:
    fn = presets.trl_loss(loss_type, epsilon_high=5.0 if loss_type == "cispo" else None)

    def loss_fn(b):
      return fn(b.log_probs, None, None, _rloo(b.rewards), b.mask)[0]
  else:
    def loss_fn(b):
      return losses.policy_gradient_loss(b.log_probs, _rloo(b.rewards), b.mask,
                                         aggregation=mode)
  return np.asarray(tabular.group_gradients(logits, table, rewards, idx, loss_fn))


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", presets.TRL_LOSS_TYPES)
def test_every_trl_loss_is_the_plain_surrogate_on_policy(loss_type):
  # At old_log_probs = log_probs every ratio is 1 with gradient grad log pi (PPO's clip,
  # CISPO's stopped weight, SAPO's gate of slope 1, VESPO's phi(1) = 1): each loss type is
  # the REINFORCE surrogate under its aggregation, batch by batch.
  np.testing.assert_allclose(_on_policy_gradients(loss_type),
                             _on_policy_gradients(mode=_TRL_MODES[loss_type]), atol=1e-5)


def _stale():
  table, logits, ref_logits, rewards, *_ = _problem(SHORT)
  return logits + 0.5 * jax.random.normal(jax.random.key(4), logits.shape)


@pytest.mark.parametrize(("level", "cap", "unbiased"), [
    ("sequence", None, True), ("sequence", 2.0, False), ("token", 2.0, False)])
def test_only_the_uncapped_sequence_correction_is_exact_off_policy(level, cap, unbiased):
  # Sampler mu = the stale policy, pi_old = the current one: the sequence ratio pi(y)/mu(y)
  # is the exact weight; a cap or per-token ratios are not.
  def tis(batch):
    correction = off_policy.importance_correction(
        jax.lax.stop_gradient(batch.log_probs), batch.old_log_probs, batch.mask,
        mode="truncate", level=level, high=cap)
    return _pg(batch, _rloo(batch.rewards), weights=correction.weights)

  error = _relative_error(_short_exact(tis, old_logits=_stale()), _problem(SHORT)[4])
  assert (error < 1e-5) if unbiased else (error > 0.01)


def test_unbiased_kl_is_exact_for_one_token_off_policy_and_k3_is_not():
  # One token: E_old[(pi / pi_old) d grad log pi] = grad KL(pi || pi_ref) exactly; plain k3
  # on stale samples gives E_old[(1 - pi_ref / pi) grad log pi], neither KL's gradient.
  table, logits, ref_logits, rewards, _, grad_kl = _problem(1)
  old = logits + 0.5 * jax.random.normal(jax.random.key(4), logits.shape)

  def loss(kind):
    def loss_fn(batch):
      weight = off_policy.importance_correction(batch.log_probs, batch.old_log_probs,
                                                batch.mask, mode="truncate", level="sequence")
      if kind == "unbiased":
        kl = off_policy.unbiased_kl(batch.log_probs, batch.old_log_probs,
                                    batch.ref_log_probs, batch.mask)
      else:
        kl = regularizers.kl_penalty(batch.log_probs, batch.ref_log_probs, batch.mask,
                                     estimator="k3")
      return _pg(batch, _rloo(batch.rewards), weights=weight.weights) + BETA * losses.aggregate(
          kl, batch.mask, aggregation="sequence_sum")
    return loss_fn

  def exact(kind):
    return tabular.exact_expectation(logits, table, rewards, 4, loss(kind),
                                     ref_logits=ref_logits, old_logits=old)

  assert _relative_error(exact("unbiased"), grad_kl) < 1e-5
  assert _relative_error(exact("k3"), grad_kl) > 0.05


def test_kl_cov_is_exactly_the_plain_surrogate_on_policy():
  # On-policy the penalty beta |log pi - log pi_old| is 0 with derivative 0 (|x|'(0) as 0),
  # so KL-Cov's expected gradient is RLOO's: exact, like every sequence_sum surrogate.
  def kl_cov(batch):
    adv = _rloo(batch.rewards)
    penalty, _ = shaping.kl_cov(batch.log_probs, batch.log_probs, adv, batch.mask)
    return _pg(batch, adv) + losses.aggregate(penalty, batch.mask, aggregation="sequence_sum")

  assert _relative_error(_short_exact(kl_cov), _problem(SHORT)[4]) < 1e-5


def _audit_json():
  """A full run's JSON, shaped as the audit writes it, every row marked "old"."""
  def rows(key):
    return [{"cell": c.name, "value": "old"} for c in sequence_audit.SECTIONS[key][0]()]

  return {"num_groups": 7, "group_sizes": [2, 4, 16], "exact_group_sizes": [2, 4],
          "beta": 0.5, "settings": {"base": {"eos_offset": 0.0}, "long": {"eos_offset": -3.0}},
          "cells": rows("cells"), "off_policy": {"cells": rows("off_policy")},
          "two_prompts": {"cells": rows("two_prompts")}}


def _fake_run(calls):
  def run(cells, prompts, stale, exact_sizes, num_groups):
    calls.append(([c.name for c in cells], prompts, stale, tuple(exact_sizes), num_groups))
    return [{"cell": c.name, "value": "new"} for c in cells]
  return run


def test_cells_merge_replaces_only_the_matching_rows_at_the_runs_settings():
  result = _audit_json()
  before = copy.deepcopy(result)
  calls = []
  merged = sequence_audit.remeasure(result, "KL-Cov", run=_fake_run(calls))
  assert calls == [(["KL-Cov (r=2e-4, coef 1) + rloo"], 1, False, (2, 4), 7)]
  assert result == before  # the input is left as it was
  for key in sequence_audit.SECTIONS:
    old, new = sequence_audit.section_rows(before, key), sequence_audit.section_rows(merged, key)
    assert [r["cell"] for r in new] == [r["cell"] for r in old]  # same rows, same order
    changed = [r["cell"] for r in new if r["value"] == "new"]
    assert changed == (["KL-Cov (r=2e-4, coef 1) + rloo"] if key == "cells" else [])
  record, = merged["remeasured"]
  assert record["cells"] == "KL-Cov" and record["num_groups"] == 7 and record["date"]
  assert record["measured"] == [{"section": "cells", "cell": "KL-Cov (r=2e-4, coef 1) + rloo",
                                 "new": False}]
  assert {k: v for k, v in merged.items() if k not in ("cells", "remeasured")} == {
      k: v for k, v in before.items() if k != "cells"}

  # A regular expression, across sections (the stale ones with the stale sampler); a
  # second merge adds a second record.
  calls.clear()
  again = sequence_audit.remeasure(merged, r"^TRL (dapo|cispo)", groups=7, run=_fake_run(calls))
  assert calls == [(["TRL dapo", "TRL cispo (eps_high 5)"], 1, False, (2, 4), 7),
                   (["TRL dapo", "TRL cispo (eps_high 5)"], 1, True, (2, 4), 7)]
  assert [r["cells"] for r in again["remeasured"]] == ["KL-Cov", r"^TRL (dapo|cispo)"]
  # Not a valid regular expression: taken as a substring.
  assert sequence_audit.matches("KL-Cov (r=2e-4", "KL-Cov (r=2e-4, coef 1) + rloo")


@pytest.mark.parametrize(("change", "pattern", "groups", "message"), [
    ({}, "no such cell", None, "--cells"),
    ({}, "KL-Cov", 20000, "--groups"),
    ({"beta": 0.25}, "KL-Cov", None, "beta"),
    ({"group_sizes": [2, 4, 8]}, "KL-Cov", None, "group_sizes"),
    ({"settings": {"base": {"eos_offset": 0.0}}}, "KL-Cov", None, "settings"),
])
def test_cells_merge_refuses_what_would_not_be_comparable(change, pattern, groups, message):
  calls = []
  with pytest.raises(ValueError, match=message):
    sequence_audit.remeasure({**_audit_json(), **change}, pattern, groups, run=_fake_run(calls))
  assert calls == []


def test_cells_and_merge_go_together(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["sequence_audit.py", "--cells", "KL-Cov"])
  with pytest.raises(SystemExit):
    sequence_audit.main()
  assert "--cells and --merge go together" in capsys.readouterr().err
