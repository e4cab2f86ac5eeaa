"""Sampling completions: EOS and mask semantics, jit, the KV cache, teacher-forced scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.sequence import models
from reinforce_jax.sequence.sampling import Completions, sample, token_log_probs

VOCAB, EOS = 6, 5


@pytest.fixture(scope="module")
def model_and_params():
  # Two layers: the second attends to cached keys built from the first's output.
  model = models.CausalTransformer(VOCAB, max_len=12, d_model=16, num_heads=2, num_layers=2,
                                   mlp_ratio=2)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 12), jnp.int32))
  return model, params


def _prompts(b=3, p=4):
  return jax.random.randint(jax.random.key(7), (b, p), 0, EOS)


def _bigram(table):
  """A causal model whose next-token logits depend on the current token only."""
  def apply_fn(params, tokens):
    del params
    return table[tokens]
  return apply_fn


def test_shapes_groups_and_prompt_positions(model_and_params):
  model, params = model_and_params
  prompts = _prompts()
  out = jax.jit(lambda k, p: sample(k, model.apply, p, prompts, max_new_tokens=6, eos_id=EOS,
                                    group_size=4))(jax.random.key(1), params)
  assert isinstance(out, Completions)
  for array in out:
    assert array.shape == (12, 10)
  assert out.tokens.dtype == jnp.int32 and out.mask.dtype == jnp.float32
  # Prompt-major rows: row b * G + g continues prompt b.
  np.testing.assert_array_equal(out.tokens[:, :4], np.repeat(prompts, 4, axis=0))
  assert np.all(out.mask[:, :4] == 0) and np.all(out.log_probs[:, :4] == 0)


def test_eos_is_scored_and_everything_after_it_is_masked():
  # Token 0 is followed by EOS with probability ~1; EOS by anything.
  table = jnp.zeros((VOCAB, VOCAB)).at[0, EOS].set(30.0)
  prompts = jnp.array([[1, 2], [3, 0]], jnp.int32)
  out = sample(jax.random.key(3), _bigram(table), None, prompts, max_new_tokens=5, eos_id=EOS)
  # Row 1 ends its prompt on 0: its first new token is EOS, masked 1, then nothing.
  np.testing.assert_array_equal(out.tokens[1], [3, 0, EOS, EOS, EOS, EOS, EOS])
  np.testing.assert_array_equal(out.mask[1], [0, 0, 1, 0, 0, 0, 0])
  assert out.log_probs[1, 2] > -1e-6 and np.all(out.log_probs[1, 3:] == 0)
  # In every row: the mask is 1 exactly up to and including the first EOS.
  out = sample(jax.random.key(4), _bigram(jnp.zeros((VOCAB, VOCAB))), None,
               jnp.ones((64, 1), jnp.int32), max_new_tokens=8, eos_id=EOS)
  completions, mask = np.asarray(out.tokens[:, 1:]), np.asarray(out.mask[:, 1:])
  for row, m in zip(completions, mask, strict=True):
    hits = np.flatnonzero(row == EOS)
    end = hits[0] + 1 if hits.size else len(row)
    np.testing.assert_array_equal(m, np.arange(len(row)) < end)
    assert np.all(row[end:] == EOS)
  assert 0 < mask.sum(1).min() < 8 == mask.sum(1).max()  # some end early, some never
  np.testing.assert_array_equal(out.log_probs[:, 1:] != 0, mask > 0)


def test_without_eos_every_completion_is_full_length(model_and_params):
  model, params = model_and_params
  out = jax.jit(lambda k, p: sample(k, model.apply, p, _prompts(), max_new_tokens=5))(
      jax.random.key(1), params)
  assert np.all(out.mask[:, 4:] == 1)


def test_log_probs_are_those_of_the_sampling_distribution():
  # Uniform over V: every sampled token has log-prob -log V; at temperature 0.5 too.
  table = jnp.zeros((VOCAB, VOCAB))
  for temperature in (1.0, 0.5):
    out = sample(jax.random.key(0), _bigram(table), None, jnp.zeros((2, 1), jnp.int32),
                 max_new_tokens=3, temperature=temperature)
    np.testing.assert_allclose(out.log_probs[:, 1:], -np.log(VOCAB), rtol=1e-6)


def test_greedy_takes_the_argmax():
  table = jnp.eye(VOCAB)[jnp.array([2, 3, 4, 0, 1, 1])] * 3.0  # 0 -> 2 -> 4 -> 1 -> 3 -> 0
  out = sample(jax.random.key(0), _bigram(table), None, jnp.zeros((1, 1), jnp.int32),
               max_new_tokens=4, temperature=0.0)
  np.testing.assert_array_equal(out.tokens[0], [0, 2, 4, 1, 3])


@pytest.mark.slow
def test_jitted_cached_and_uncached_agree_with_teacher_forcing(model_and_params):
  model, params = model_and_params
  prompts = _prompts()

  def draw(key, params, decoder):
    return sample(key, model.apply, params, prompts, max_new_tokens=8, eos_id=EOS,
                  group_size=2, decoder=decoder)

  key = jax.random.key(11)
  uncached = jax.jit(lambda k, p: draw(k, p, None))(key, params)
  cached = jax.jit(lambda k, p: draw(k, p, models.decoder(model)))(key, params)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_array_equal(cached.mask, uncached.mask)
  np.testing.assert_allclose(cached.log_probs, uncached.log_probs, atol=2e-5)
  forced = jax.jit(lambda p, t, m: token_log_probs(model.apply, p, t, m))(
      params, cached.tokens, cached.mask)
  np.testing.assert_allclose(forced, cached.log_probs, atol=2e-5)
  # A different key gives a different sample.
  other = jax.jit(lambda k, p: draw(k, p, None))(jax.random.key(12), params)
  assert not np.array_equal(other.tokens, uncached.tokens)


@pytest.mark.slow
def test_token_log_probs_gradient_and_entropy(model_and_params):
  model, params = model_and_params
  out = jax.jit(lambda k, p: sample(k, model.apply, p, _prompts(), max_new_tokens=6,
                                    eos_id=EOS))(jax.random.key(2), params)
  _, entropy = jax.jit(lambda p, t, m: token_log_probs(model.apply, p, t, m, with_entropy=True))(
      params, out.tokens, out.mask)
  assert np.all(entropy[out.mask == 0] == 0)
  assert np.all(entropy[out.mask > 0] > 0) and np.all(entropy <= np.log(VOCAB) + 1e-5)
  grad = jax.jit(jax.grad(lambda p, m: jnp.sum(token_log_probs(model.apply, p, out.tokens, m))))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad(params, out.mask)))
  # Masked positions do not reach the gradient.
  zero = grad(params, jnp.zeros_like(out.mask))
  assert all(np.all(g == 0) for g in jax.tree.leaves(zero))


def test_shape_errors_name_the_shapes(model_and_params):
  model, params = model_and_params
  with pytest.raises(ValueError, match=r"prompts must be integer \[B, P\].*\(4,\)"):
    sample(jax.random.key(0), model.apply, params, jnp.zeros(4, jnp.int32), max_new_tokens=2)
  with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
    sample(jax.random.key(0), model.apply, params, _prompts(), max_new_tokens=0)
  with pytest.raises(ValueError, match="group_size"):
    sample(jax.random.key(0), model.apply, params, _prompts(), max_new_tokens=2, group_size=0)
  tokens = jnp.zeros((2, 5), jnp.int32)
  with pytest.raises(ValueError, match=r"mask has shape \(2, 4\), tokens \(2, 5\)"):
    token_log_probs(model.apply, params, tokens, jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"exceed the cache's max_len=12"):
    sample(jax.random.key(0), model.apply, params, _prompts(), max_new_tokens=9,
           decoder=models.decoder(model))
  with pytest.raises(ValueError, match=r"longer than max_len=12"):
    model.apply(params, jnp.zeros((1, 13), jnp.int32))
