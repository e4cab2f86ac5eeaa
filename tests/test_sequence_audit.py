"""The exact audit: which sequence estimators are unbiased, decided by enumeration.

A tabular policy over two tokens plus EOS, at most 4 tokens (31 sequences), makes the exact
gradient a finite sum, and the exact expectation of an estimator over all 31^2 groups of two
a finite sum too. The unbiased cells must match the exact gradient to float precision (up to
the scale theory predicts), the biased ones must miss it by far more, and fixed-key Monte
Carlo must agree within a stated number of standard errors.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.sequence import tabular
from reinforce_jax.sequence.tabular import EstimatorConfig

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
