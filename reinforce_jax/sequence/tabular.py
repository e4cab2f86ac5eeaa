"""A tabular autoregressive policy small enough to enumerate, for exact gradient audits.

Every prefix of non-EOS tokens shorter than `max_length` is a state with its own row of logits
over the vocabulary; a sequence ends at EOS or is truncated at `max_length` tokens (as a
`max_new_tokens` limit truncates a language model's completion). With two tokens plus EOS and
`max_length=4` there are 15 states (45 logits) and 31 sequences, so `E[R]`, `KL(pi || pi_ref)`
and their exact gradients are finite sums, and so is the exact expectation of any
score-function estimator over every group of `G = 2` or `4` completions.

Since every sequence is enumerated, sampling a sequence index from the exact sequence
probabilities draws from the same distribution as sampling token by token.

An estimator is either an `EstimatorConfig` (advantage estimator x aggregation x KL x ratio)
or any loss function of a `Batch` (`LossFn`): the batch's differentiable token log-probs,
mask, tokens, rewards, and the sampling, reference and greedy policies' quantities. A loss
built from the library's parts is audited exactly as it ships; its gradient reaches the
logits only through `Batch.log_probs`.

References:
  Liu, Z. et al. (2025). Understanding R1-Zero-like training: a critical perspective.
  arXiv:2503.20783.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax.sequence import losses

__all__ = [
    "Batch",
    "batch_gradients",
    "content_and_length_reward",
    "enumerate_sequences",
    "EstimatorConfig",
    "exact_batch_expectation",
    "exact_expectation",
    "greedy_index",
    "group_gradients",
    "group_loss",
    "LossFn",
    "objective",
    "sample",
    "sequence_log_probs",
    "SequenceTable",
    "token_entropies",
    "token_log_probs",
]


class SequenceTable(NamedTuple):
  """Every sequence of a tabular policy, padded to `max_length` (`S` sequences, `L` long).

  Attributes:
    tokens: `[S, L]` int32 tokens, 0 after the end.
    mask: `[S, L]` bool, True for the sequence's tokens (its EOS included).
    states: `[S, L]` int32, the state (prefix) each token is drawn in; 0 after the end.
    lengths: `[S]` int32 number of tokens, EOS included.
    terminated: `[S]` bool, True if the sequence ends with EOS (False: truncated).
    counts: `[S, V]` int32 occurrences of each token (EOS included).
  """

  tokens: jax.Array
  mask: jax.Array
  states: jax.Array
  lengths: jax.Array
  terminated: jax.Array
  counts: jax.Array


def enumerate_sequences(*, vocab_size: int = 3, max_length: int = 4,
                        eos_id: int = 0) -> tuple[SequenceTable, int]:
  """All sequences and the number of states of a tabular policy.

  Args:
    vocab_size: `V`, EOS included (at least 2).
    max_length: `L`, the most tokens a sequence has (at least 1).
    eos_id: the EOS token.

  Returns:
    `(table, num_states)`: the `SequenceTable` with `S = sum_{l=1}^{L} (V-1)^(l-1) + (V-1)^L`
    sequences, and `sum_{k<L} (V-1)^k` states (prefix `()` is state 0).

  Raises:
    ValueError: if `vocab_size < 2`, `max_length < 1` or `eos_id` is not a token.
  """
  if vocab_size < 2 or max_length < 1 or not 0 <= eos_id < vocab_size:
    raise ValueError(
        f"need vocab_size >= 2, max_length >= 1 and 0 <= eos_id < vocab_size, got "
        f"vocab_size={vocab_size}, max_length={max_length}, eos_id={eos_id}")
  words = [t for t in range(vocab_size) if t != eos_id]
  state_of = {}
  for k in range(max_length):
    for prefix in itertools.product(words, repeat=k):
      state_of[prefix] = len(state_of)
  sequences = []
  for k in range(max_length):
    sequences += [(*p, eos_id) for p in itertools.product(words, repeat=k)]
  sequences += list(itertools.product(words, repeat=max_length))
  num = len(sequences)
  tokens = np.zeros((num, max_length), np.int32)
  mask = np.zeros((num, max_length), bool)
  states = np.zeros((num, max_length), np.int32)
  for i, seq in enumerate(sequences):
    tokens[i, :len(seq)] = seq
    mask[i, :len(seq)] = True
    states[i, :len(seq)] = [state_of[tuple(seq[:t])] for t in range(len(seq))]
  counts = np.stack([np.sum(mask & (tokens == v), axis=1) for v in range(vocab_size)], axis=1)
  table = SequenceTable(
      tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), states=jnp.asarray(states),
      lengths=jnp.asarray(mask.sum(1), jnp.int32),
      terminated=jnp.asarray(tokens[np.arange(num), mask.sum(1) - 1] == eos_id),
      counts=jnp.asarray(counts, jnp.int32))
  return table, len(state_of)


def token_log_probs(logits: jax.Array, table: SequenceTable) -> jax.Array:
  """`[S, L]` log-probs `log pi(y_t | y_<t)` of every sequence's tokens, 0 after the end.

  Args:
    logits: `[num_states, V]` float array, one row of logits per prefix.
    table: from `enumerate_sequences`.
  """
  log_pi = jax.nn.log_softmax(logits, axis=-1)
  return jnp.where(table.mask, log_pi[table.states, table.tokens], 0.0)


def sequence_log_probs(logits: jax.Array, table: SequenceTable) -> jax.Array:
  """`[S]` log-probability of every sequence; they sum (in probability) to 1."""
  return jnp.sum(token_log_probs(logits, table), axis=1)


def token_entropies(logits: jax.Array, table: SequenceTable) -> jax.Array:
  """`[S, L]` entropy of the next-token distribution each token is drawn from, 0 after the end.

  Args:
    logits: `[num_states, V]` float array, one row of logits per prefix.
    table: from `enumerate_sequences`.
  """
  log_pi = jax.nn.log_softmax(logits, axis=-1)
  entropy = -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)
  return jnp.where(table.mask, entropy[table.states], 0.0)


def greedy_index(logits: jax.Array, table: SequenceTable) -> jax.Array:
  """The index into `table` of the greedy sequence: the most likely token at every step.

  Greedy decoding of a tabular policy is deterministic (ties go to the lower token id, as
  `argmax`), so its sequence, and its reward, is a constant of the logits.

  Args:
    logits: `[num_states, V]` float array.
    table: from `enumerate_sequences`.

  Returns:
    An int32 scalar.
  """
  best = jnp.argmax(logits, axis=-1)[table.states]  # [S, L]
  return jnp.argmax(jnp.all(~table.mask | (table.tokens == best), axis=1)).astype(jnp.int32)


def sample(key: jax.Array, logits: jax.Array, table: SequenceTable,
           shape: tuple[int, ...]) -> jax.Array:
  """Indices into `table` of sequences drawn i.i.d. from the policy, shape `shape`."""
  return jax.random.categorical(key, sequence_log_probs(logits, table), shape=shape)


def content_and_length_reward(table: SequenceTable) -> jax.Array:
  """`[S]` rewards that depend on what a sequence says and on how long it is.

  `R(y) = #1(y) - 0.5 #2(y) + 0.5 [y ends with EOS]` for tokens 1 and 2 (EOS = 0): more
  1s pay, 2s cost, and stopping pays, so long sequences are both the best and the worst and
  a per-sequence `1 / |y|` weight changes which way the gradient points.
  """
  counts = table.counts.astype(jnp.float32)
  return counts[:, 1] - 0.5 * counts[:, 2] + 0.5 * table.terminated.astype(jnp.float32)


def objective(logits: jax.Array, table: SequenceTable, rewards: jax.Array, *,
              beta: float = 0.0, ref_logits: jax.Array | None = None) -> jax.Array:
  """Exact `E_pi[R] - beta KL(pi || pi_ref)`, a sum over every sequence.

  Args:
    logits: `[num_states, V]` policy logits.
    table: from `enumerate_sequences`.
    rewards: `[S]` reward of each sequence.
    beta: KL coefficient; 0 drops the KL (and `ref_logits` may be `None`).
    ref_logits: `[num_states, V]` reference policy logits.

  Returns:
    A float scalar. `jax.grad` of it is the exact gradient the estimators aim at.
  """
  log_p = sequence_log_probs(logits, table)
  p = jnp.exp(log_p)
  value = jnp.sum(p * rewards)
  if ref_logits is None:
    return value
  kl = jnp.sum(p * (log_p - sequence_log_probs(ref_logits, table)))
  return value - beta * kl


class EstimatorConfig(NamedTuple):
  """One cell of the audit: how a group of completions becomes a gradient.

  Attributes:
    estimator: `group_advantages` estimator.
    aggregation: `policy_gradient_loss` aggregation.
    kl: `None`, or a `kl_penalty` estimator (`"k1"`, `"k2"`, `"k3"`).
    kl_as: `"loss"` (added to the loss with the same aggregation) or `"reward"` (its
      sequence total, gradient stopped, subtracted from the reward).
    ratio_level: `None` (on-policy surrogate), `"token"` or `"sequence"` (importance ratios
      against the sampling policy, as `policy_gradient_loss`), or `"full"`: each sequence's
      exact weight `pi(y) / pi_old(y)` on its advantage, the unbiased off-policy estimator.
    clip_eps: PPO's clip range with `"token"` or `"sequence"` ratios, or `None`.
  """

  estimator: str
  aggregation: str
  kl: str | None = None
  kl_as: str = "loss"
  ratio_level: str | None = None
  clip_eps: float | None = None


class Batch(NamedTuple):
  """What a loss sees of a batch of `B` prompts x `G` completions (`N = B * G` rows).

  Rows are prompt-major. Every array but `log_probs` is a constant of the batch.

  Attributes:
    log_probs: `[N, L]` token log-probs under the policy being differentiated.
    mask: `[N, L]` bool, the completions' tokens (EOS included).
    rewards: `[B, G]` rewards.
    tokens: `[N, L]` int32 tokens (0, the EOS, after the end).
    ref_log_probs: `[N, L]` log-probs under the reference policy, or `None`.
    old_log_probs: `[N, L]` log-probs under the policy the batch was drawn from, or `None`
      when that is the policy being differentiated (on-policy).
    entropy: `[N, L]` entropy of the current policy's next-token distribution at each token.
    greedy_rewards: `[B]` reward of each prompt's greedy sequence (`greedy_index`).
  """

  log_probs: jax.Array
  mask: jax.Array
  rewards: jax.Array
  tokens: jax.Array
  ref_log_probs: jax.Array | None
  old_log_probs: jax.Array | None
  entropy: jax.Array
  greedy_rewards: jax.Array


LossFn = Callable[[Batch], jax.Array]
"""A loss to minimise, `loss_fn(batch) -> scalar`; `-grad` of it is the gradient estimate."""


def group_loss(log_probs: jax.Array, mask: jax.Array, rewards: jax.Array,
               ref_log_probs: jax.Array | None, config: EstimatorConfig,
               beta: float = 0.0, old_log_probs: jax.Array | None = None) -> jax.Array:
  """The loss a batch of `B` prompts' groups of `G` completions gives.

  Args:
    log_probs: `[N, L]` token log-probs (differentiable), `N = B * G`, prompt-major.
    mask: `[N, L]` token mask.
    rewards: `[B, G]` rewards (or `[G]` for one prompt).
    ref_log_probs: `[N, L]` reference log-probs, or `None` without a KL.
    config: the estimator.
    beta: KL coefficient.
    old_log_probs: `[N, L]` log-probs under the sampling policy (with `config.ratio_level`);
      `None`: the sampling policy is the current one.

  Returns:
    A scalar whose negated gradient estimates that of `E[R] - beta KL` (summed over prompts
    for `"sequence_sum"`, which averages over all `N` completions: divided by `B`).
  """
  rewards = jnp.reshape(rewards, (-1, rewards.shape[-1]))
  kl_loss = 0.0
  if config.kl is not None:
    kl = losses.kl_penalty(log_probs, ref_log_probs, mask, estimator=config.kl)
    if config.kl_as == "reward":
      rewards = rewards - beta * jax.lax.stop_gradient(jnp.sum(kl, axis=1)).reshape(
          rewards.shape)
    elif config.kl_as == "loss":
      kl_loss = beta * losses.aggregate(kl, mask, aggregation=config.aggregation)
    else:
      raise ValueError(f"kl_as must be 'loss' or 'reward', got {config.kl_as!r}")
  advantages = losses.group_advantages(rewards, estimator=config.estimator).reshape(-1)
  if config.ratio_level is None:
    return losses.policy_gradient_loss(
        log_probs, advantages, mask, aggregation=config.aggregation) + kl_loss
  if old_log_probs is None:
    old_log_probs = jax.lax.stop_gradient(log_probs)
  if config.ratio_level == "full":
    log_weight = jnp.sum(jnp.where(mask, log_probs - old_log_probs, 0.0), axis=1)
    advantages = advantages * jax.lax.stop_gradient(jnp.exp(log_weight))
    return losses.policy_gradient_loss(
        log_probs, advantages, mask, aggregation=config.aggregation) + kl_loss
  return losses.policy_gradient_loss(
      log_probs, advantages, mask, aggregation=config.aggregation,
      old_log_probs=old_log_probs, clip_eps=config.clip_eps,
      ratio_level=config.ratio_level) + kl_loss


def _per_prompt(fn, logits, table):
  return jax.vmap(fn, (0, None))(logits, table)


def _as_loss(config: EstimatorConfig | LossFn, beta: float) -> LossFn:
  if callable(config):
    return config
  if not isinstance(config, EstimatorConfig):
    raise ValueError(f"config must be an EstimatorConfig or a function of a Batch, got "
                     f"{type(config).__name__}")

  def loss(batch: Batch) -> jax.Array:
    return group_loss(batch.log_probs, batch.mask, batch.rewards, batch.ref_log_probs, config,
                      beta, batch.old_log_probs)

  return loss


class _Constants(NamedTuple):
  """Per-prompt `[B, S, L]` arrays a batch is gathered from, and `[B]` greedy rewards."""

  ref: jax.Array | None
  old: jax.Array | None
  entropy: jax.Array
  greedy: jax.Array


def _constants(logits, table, rewards, ref_logits, old_logits) -> _Constants:
  greedy = jax.vmap(greedy_index, (0, None))(logits, table)
  return _Constants(
      ref=None if ref_logits is None else _per_prompt(token_log_probs, ref_logits, table),
      old=None if old_logits is None else _per_prompt(token_log_probs, old_logits, table),
      entropy=_per_prompt(token_entropies, logits, table),
      greedy=jnp.take_along_axis(rewards, greedy[:, None], axis=1)[:, 0])


_take = jax.vmap(lambda a, i: a[i])  # [B, S, ...], [B, G] -> [B, G, ...]


def _batch(log_probs_all, table, rewards, consts: _Constants, idx) -> Batch:
  """The `Batch` of sequence indices `idx` (`[B, G]`), log-probs from `[B, S, L]`."""
  length = table.tokens.shape[1]

  def rows(a):
    return None if a is None else _take(a, idx).reshape(-1, length)

  return Batch(log_probs=rows(log_probs_all), mask=table.mask[idx].reshape(-1, length),
               rewards=_take(rewards, idx), tokens=table.tokens[idx].reshape(-1, length),
               ref_log_probs=rows(consts.ref), old_log_probs=rows(consts.old),
               entropy=rows(consts.entropy), greedy_rewards=consts.greedy)


def batch_gradients(logits: jax.Array, table: SequenceTable, rewards: jax.Array,
                    indices: jax.Array, config: EstimatorConfig | LossFn, *,
                    beta: float = 0.0, ref_logits: jax.Array | None = None,
                    old_logits: jax.Array | None = None) -> jax.Array:
  """Gradient estimates (ascent direction), one per batch of `B` prompts x `G` completions.

  Each prompt is its own tabular policy; the objective is the mean over prompts of
  `E[R_b] - beta KL_b`, which `"sequence_sum"` estimates without bias.

  Args:
    logits: `[B, num_states, V]` policy logits, one table per prompt.
    table: from `enumerate_sequences`.
    rewards: `[B, S]` reward of each sequence for each prompt.
    indices: `[K, B, G]` int sequence indices: `K` batches.
    config: the estimator: an `EstimatorConfig` (with `beta`), or a `LossFn`.
    beta: KL coefficient of an `EstimatorConfig`.
    ref_logits: `[B, num_states, V]` reference logits (needed when `config.kl` is set).
    old_logits: `[B, num_states, V]` logits of the policy `indices` were drawn from, for
      `config.ratio_level`; `None`: the current policy.

  Returns:
    `[K, B, num_states, V]`: `-grad loss` for each batch.
  """
  loss_fn = _as_loss(config, beta)
  consts = _constants(logits, table, rewards, ref_logits, old_logits)

  def one(idx):
    def loss(theta):
      return loss_fn(_batch(_per_prompt(token_log_probs, theta, table), table, rewards,
                            consts, idx))
    return -jax.grad(loss)(logits)

  return jax.vmap(one)(indices)


def group_gradients(logits: jax.Array, table: SequenceTable, rewards: jax.Array,
                    indices: jax.Array, config: EstimatorConfig | LossFn, *,
                    beta: float = 0.0, ref_logits: jax.Array | None = None,
                    old_logits: jax.Array | None = None) -> jax.Array:
  """`batch_gradients` for one prompt: `[num_states, V]` logits, `[S]` rewards, `[K, G]`
  indices; returns `[K, num_states, V]`."""
  ref = None if ref_logits is None else ref_logits[None]
  old = None if old_logits is None else old_logits[None]
  return batch_gradients(logits[None], table, rewards[None], indices[:, None], config,
                         beta=beta, ref_logits=ref, old_logits=old)[:, 0]


def exact_batch_expectation(logits: jax.Array, table: SequenceTable, rewards: jax.Array,
                            group_size: int, config: EstimatorConfig | LossFn, *,
                            beta: float = 0.0, ref_logits: jax.Array | None = None,
                            old_logits: jax.Array | None = None,
                            accept: Callable[[jax.Array], jax.Array] | None = None,
                            chunk: int = 8192) -> jax.Array:
  """The exact mean of `batch_gradients` over every one of the `S^(B G)` ordered batches.

  The loss depends on the logits only through the batch's token log-probs, so its gradient
  is `sum_{n,t} W_{n,t} grad log pi(y_{n,t})` with `W = d loss / d log_probs`; the mean
  accumulates `W`, weighted by each batch's probability, per (prompt, sequence, position),
  and contracts it with the fixed per-token Jacobian once at the end.

  Args:
    logits, table, rewards, config, beta, ref_logits: as in `batch_gradients`.
    old_logits: the sampling policy (batches are weighted by its probabilities), or `None`.
    group_size: `G`; `S^(B G)` batches are enumerated (31^4 = 923521 for the default table
      at `B G = 4`).
    accept: optional `[B, G] rewards -> [B] bool`, which prompts' groups are kept: the mean
      is then conditioned on every prompt's group being kept (each group drawn again until
      it is, as dynamic sampling does).
    chunk: batches per vectorised step.

  Returns:
    `[B, num_states, V]`, `E[-grad loss]` (given `accept`).

  Raises:
    ValueError: if `accept` keeps no batch.
  """
  loss_fn = _as_loss(config, beta)
  prompts = logits.shape[0]
  num, length = table.tokens.shape
  lp_all = _per_prompt(token_log_probs, logits, table)  # [B, S, L]
  consts = _constants(logits, table, rewards, ref_logits, old_logits)
  seq_lp = jnp.sum(lp_all if consts.old is None else consts.old, axis=2)  # sampling policy

  def weights(idx):  # [B, G] -> [B, G, L], probability
    batch = _batch(lp_all, table, rewards, consts, idx)
    w = jax.grad(lambda lp: loss_fn(batch._replace(log_probs=lp)))(batch.log_probs)
    prob = jnp.exp(jnp.sum(_take(seq_lp, idx)))
    if accept is not None:
      prob = prob * jnp.all(accept(batch.rewards)).astype(prob.dtype)
    return -prob * w.reshape(prompts, group_size, length), prob

  @jax.jit
  def chunk_total(idx, valid):  # idx [C, B, G]
    w, prob = jax.vmap(weights)(idx)
    w = w * valid[:, None, None, None]  # [C, B, G, L]
    rows = (jnp.arange(prompts)[None, :, None] * num + idx).reshape(-1)
    total = jnp.zeros((prompts * num, length), w.dtype).at[rows].add(w.reshape(-1, length))
    return total.reshape(prompts, num, length), jnp.sum(prob * valid)

  # Chunks add up on the host in float64: a million float32 terms would lose ~1e-4.
  total = np.zeros((prompts, num, length), np.float64)
  kept = 0.0
  width = prompts * group_size
  count = num**width
  chunk = min(chunk, count)
  digits = num ** np.arange(width - 1, -1, -1)
  for start in range(0, count, chunk):
    flat = np.arange(start, start + chunk)  # one shape for every step: the tail is masked
    idx = ((np.minimum(flat, count - 1)[:, None] // digits) % num).reshape(
        chunk, prompts, group_size)
    part, mass = chunk_total(jnp.asarray(idx, jnp.int32),
                             jnp.asarray(flat < count, lp_all.dtype))
    total += np.asarray(part, np.float64)
    kept += float(mass)
  if accept is not None:
    if kept <= 0:
      raise ValueError("accept keeps no batch: the conditional mean is undefined")
    total /= kept
  total = jax.lax.stop_gradient(jnp.asarray(total, lp_all.dtype))
  # d/dtheta of sum total * log_probs (total held fixed) contracts W with the Jacobian.
  return jax.grad(lambda theta: jnp.sum(
      total * _per_prompt(token_log_probs, theta, table)))(logits)


def exact_expectation(logits: jax.Array, table: SequenceTable, rewards: jax.Array,
                      group_size: int, config: EstimatorConfig | LossFn, *,
                      beta: float = 0.0, ref_logits: jax.Array | None = None,
                      old_logits: jax.Array | None = None,
                      accept: Callable[[jax.Array], jax.Array] | None = None,
                      chunk: int = 8192) -> jax.Array:
  """`exact_batch_expectation` for one prompt (`S^G` groups): `[num_states, V]`."""
  ref = None if ref_logits is None else ref_logits[None]
  old = None if old_logits is None else old_logits[None]
  return exact_batch_expectation(logits[None], table, rewards[None], group_size, config,
                                 beta=beta, ref_logits=ref, old_logits=old, accept=accept,
                                 chunk=chunk)[0]
