"""NNX causal language models in the sequence train step, tunix's Qwen3 among them, and loss_fn."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from reinforce_jax.sequence import losses, presets, sampling, tasks
from reinforce_jax.sequence.nnx_models import nnx_policy, tunix_logits, tunix_policy
from reinforce_jax.sequence.train import (
    SequenceBatch,
    SequenceConfig,
    make_sequence_train_step,
    preset_loss,
    sequence_loss,
)

VOCAB = 6
TOKENS = jax.random.randint(jax.random.key(7), (3, 5), 0, VOCAB)


class Bigram(nnx.Module):
  """Each position's logits from its own token (causal), times a fixed, untrained scale."""

  def __init__(self, rngs: nnx.Rngs):
    self.table = nnx.Param(jax.random.normal(rngs.params(), (VOCAB, VOCAB)))
    self.bias = nnx.Param(jnp.zeros((VOCAB,)))
    self.scale = nnx.Variable(jnp.full((), 2.0))

  def __call__(self, tokens):
    return self.scale[...] * self.table[...][tokens] + self.bias[...]


def test_a_constructor_gives_each_key_its_module_and_apply_is_its_call():
  policy = nnx_policy(Bigram)
  params = policy.init(jax.random.key(3))
  assert isinstance(params, nnx.State)
  # Only the nnx.Param variables are parameters: the scale is held fixed.
  assert sorted(params) == ["bias", "table"]
  expected = Bigram(nnx.Rngs(jax.random.key(3)))(TOKENS)
  np.testing.assert_allclose(policy.apply(params, TOKENS), expected, rtol=1e-6)
  np.testing.assert_allclose(expected, 2 * params["table"][...][TOKENS], rtol=1e-6)
  other = policy.init(jax.random.key(4))
  assert not np.allclose(other["table"][...], params["table"][...])
  assert policy.decoder is None


def test_an_instance_gives_its_own_parameters_for_every_key():
  module = Bigram(nnx.Rngs(0))
  policy = nnx_policy(module)
  for key in (jax.random.key(0), jax.random.key(1)):
    np.testing.assert_array_equal(policy.init(key)["table"][...], module.table[...])
  np.testing.assert_allclose(policy.apply(policy.init(jax.random.key(5)), TOKENS),
                             module(TOKENS), rtol=1e-6)


def test_logits_that_are_not_n_l_v_and_modules_that_are_not_callable_are_named():
  policy = nnx_policy(Bigram, logits_fn=lambda module, tokens: (module(tokens), None))
  params = policy.init(jax.random.key(0))
  with pytest.raises(ValueError, match=r"returned a tuple for tokens of shape \(3, 5\).*"
                                       r"logits_fn"):
    policy.apply(params, TOKENS)
  policy = nnx_policy(Bigram, logits_fn=lambda module, tokens: module(tokens)[:, :-1])
  with pytest.raises(ValueError, match=r"returned shape \(3, 4, 6\) for tokens of shape"):
    policy.apply(params, TOKENS)
  with pytest.raises(ValueError, match="module must be an nnx.Module or a function"):
    nnx_policy(3)


def _table_apply(params, tokens):
  return params[tokens]  # [N, L, V]: a bigram table, causal


@jax.jit
def _batch():
  n, p, t = 4, 2, 3
  tokens = jax.random.randint(jax.random.key(0), (n, p + t), 0, VOCAB)
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], jnp.float32)
  params = jax.random.normal(jax.random.key(1), (VOCAB, VOCAB))
  full = jnp.concatenate([jnp.zeros((n, p)), mask], axis=1)
  old = sampling.token_log_probs(_table_apply, params, tokens, full)[:, p:]
  rewards = jnp.array([1.0, 0.0, 0.5, 0.25])
  batch = SequenceBatch(tokens=tokens, mask=mask, rewards=rewards,
                        advantages=rewards - jnp.mean(rewards), old_log_probs=old,
                        ref_log_probs=old - 0.1 * mask)
  return params * 1.1, batch


def test_a_loss_fn_replaces_the_policy_term_and_the_kl_term_stays():
  params, batch = _batch()
  config = SequenceConfig(max_new_tokens=3, group_size=2, kl_coef=0.5)

  def mine(log_probs, batch):
    return losses.policy_gradient_loss(log_probs, batch.advantages, batch.mask,
                                       aggregation="sequence_sum")

  def value_and_grad(loss_fn):
    return jax.value_and_grad(
        lambda w: sequence_loss(_table_apply, w, batch, config, loss_fn=loss_fn),
        has_aux=True)(params)

  # One program for the three losses: the library's, the same written as a loss_fn, twice it.
  (loss, aux), grads, (my_loss, my_aux), my_grads, (twice, twice_aux) = jax.jit(
      lambda: (*value_and_grad(None), *value_and_grad(mine),
               value_and_grad(lambda lp, b: 2 * mine(lp, b))[0]))()
  np.testing.assert_allclose(my_loss, loss, rtol=1e-6)
  np.testing.assert_allclose(my_grads, grads, rtol=1e-5, atol=1e-7)
  assert my_loss != my_aux["policy_loss"]  # the KL term is added to a custom loss too
  np.testing.assert_allclose(twice - twice_aux["policy_loss"], loss - aux["policy_loss"],
                             atol=1e-6)
  np.testing.assert_allclose(twice_aux["policy_loss"], 2 * aux["policy_loss"], rtol=1e-6)
  with pytest.raises(ValueError, match=r"loss_fn must return a scalar loss, got shape \(4, 3\)"):
    jax.eval_shape(lambda: value_and_grad(lambda lp, b: lp))


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_a_preset_is_a_loss_fn_and_gets_the_entropies():
  params, batch = _batch()
  config = SequenceConfig(max_new_tokens=3, group_size=2, clip_eps=0.2,
                          aggregation="token_mean")

  def value_and_grad(loss_fn):
    return jax.value_and_grad(
        lambda w: sequence_loss(_table_apply, w, batch, config, loss_fn=loss_fn)[0])(params)

  # TRL's "dapo" without KL is PPO's clipped surrogate averaged over the batch's tokens.
  loss, grads = value_and_grad(None)
  dapo, dapo_grads = value_and_grad(preset_loss(presets.trl_loss("dapo", epsilon=0.2)))
  np.testing.assert_allclose(dapo, loss, rtol=1e-6)
  np.testing.assert_allclose(dapo_grads, grads, rtol=1e-5, atol=1e-7)
  # An entropy bonus needs the per-token entropies, which the train step passes to a preset.
  bonus = value_and_grad(preset_loss(presets.trl_loss("dapo", epsilon=0.2, entropy_coef=0.1)))[0]
  assert abs(float(bonus) - float(loss)) > 1e-4


# tunix's Qwen3 at a tiny random configuration.

def _qwen3(vocab: int):
  qwen3 = pytest.importorskip("tunix.models.qwen3.model")
  config = qwen3.ModelConfig(num_layers=1, vocab_size=vocab, embed_dim=32, hidden_dim=64,
                             num_heads=2, head_dim=16, num_kv_heads=1, rope_theta=10_000,
                             norm_eps=1e-6)
  return lambda rngs: qwen3.Qwen3(config, rngs=rngs)


@pytest.mark.slow  # imports tunix, compiles a sampler twice: ~15 s
def test_tunix_cached_sampling_draws_what_recomputation_draws():
  task = tasks.SortTask(num_digits=3, alphabet=4, num_prompts=4)
  length = task.prompt_length + task.max_new_tokens
  policy = tunix_policy(_qwen3(task.vocab_size), max_len=length)
  params = jax.jit(policy.init)(jax.random.key(0))
  prompts = task.sample_prompts(jax.random.key(1))
  outs = [jax.jit(lambda w, decoder=decoder: sampling.sample(
      jax.random.key(2), policy.apply, w, prompts, max_new_tokens=task.max_new_tokens,
      eos_id=task.eos_id, group_size=3, decoder=decoder))(params)
      for decoder in (policy.decoder, None)]
  np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
  np.testing.assert_allclose(outs[0].log_probs, outs[1].log_probs, atol=1e-5)
  scored = sampling.token_log_probs(policy.apply, params, outs[0].tokens, outs[0].mask)
  np.testing.assert_allclose(scored, outs[0].log_probs, atol=1e-5)
  # tunix_logits is the model's own call with positions 0..L-1 and a causal mask.
  module = _qwen3(task.vocab_size)(nnx.Rngs(jax.random.key(0)))
  tokens = outs[0].tokens
  n, length = tokens.shape
  direct, _ = module(tokens, jnp.broadcast_to(jnp.arange(length), (n, length)), None,
                     jnp.tril(jnp.ones((length, length), bool))[None].repeat(n, axis=0))
  np.testing.assert_allclose(tunix_logits(module, tokens), direct, rtol=1e-6)


@pytest.mark.slow  # compiles a Qwen3 train step: ~20 s
def test_a_tunix_qwen3_step_is_traced_and_compiled_once():
  task = tasks.SortTask(num_digits=3, alphabet=4, num_prompts=4)
  traces = []

  def logits_fn(module, tokens):
    traces.append(tokens.shape)
    return tunix_logits(module, tokens)

  policy = nnx_policy(_qwen3(task.vocab_size), logits_fn=logits_fn)
  config = SequenceConfig(max_new_tokens=task.max_new_tokens, eos_id=task.eos_id, group_size=4)
  init_fn, train_step = make_sequence_train_step(task.sample_prompts, task.reward, policy,
                                                 optax.adam(1e-2), config)
  state, step = init_fn(jax.random.key(0)), jax.jit(train_step)
  state, _ = step(state, jax.random.key(1))
  traced = len(traces)
  assert traced >= 1
  for _ in range(3):
    state, metrics = step(state, jax.random.key(1))
  assert len(traces) == traced  # no Python ran again: the graph was walked at trace time only
  assert step._cache_size() == 1
  assert int(state.step) == 4 and np.isfinite(float(metrics["loss"]))


@pytest.mark.slow  # the example at 30 steps: ~45 s
def test_the_example_qwen3_learns_the_sort_task():
  pytest.importorskip("tunix")
  script = pathlib.Path(__file__).parents[1] / "examples" / "nnx_language_model.py"
  done = subprocess.run([sys.executable, str(script), "--steps", "30"], capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.loads(done.stdout.strip().splitlines()[-1])
  assert summary["compiles"] == 1
  # Measured at this budget and seed: 0.30 over the first 10 steps, 0.47 over the last 10.
  assert summary["final_reward"] > summary["first_reward"] + 0.1
