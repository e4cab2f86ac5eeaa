"""Verifiable sequence tasks: prompts to sample and a pure reward to check completions.

`SortTask` asks for the digits of a prompt in ascending order, then EOS:

    prompt      3 1 4 1 SEP
    completion  1 1 3 4 EOS      reward = fraction of the 5 positions right

The reward is exact and jittable, so a policy can be trained on it from chance
(`reinforce_jax.sequence.train`; `reinforce-jax train sort`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = [
    "SortTask",
]


@dataclasses.dataclass(frozen=True)
class SortTask:
  """Sort `num_digits` digits drawn uniformly from `0 .. alphabet - 1`.

  Token ids: the digits `0 .. alphabet - 1`, then `sep_id = alphabet` (ends the
  prompt) and `eos_id = alphabet + 1` (ends the completion).

  Attributes:
    num_digits: `K`, digits per prompt.
    alphabet: how many distinct digits there are.
    num_prompts: `B`, prompts drawn per call of `sample_prompts`.
  """

  num_digits: int = 4
  alphabet: int = 5
  num_prompts: int = 32

  def __post_init__(self):
    for name in ("num_digits", "alphabet", "num_prompts"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")

  @property
  def name(self) -> str:
    return f"sorting {self.num_digits} digits of 0-{self.alphabet - 1}"

  @property
  def observation_shape(self) -> tuple[int]:
    """`(P,)`: a prompt, as an environment's observation (the CLI's presets read it)."""
    return (self.prompt_length,)

  @property
  def num_actions(self) -> int:
    """`V`: a token is an action."""
    return self.vocab_size

  @property
  def sep_id(self) -> int:
    return self.alphabet

  @property
  def eos_id(self) -> int:
    return self.alphabet + 1

  @property
  def vocab_size(self) -> int:
    return self.alphabet + 2

  @property
  def prompt_length(self) -> int:
    """`P = K + 1`: the digits and the separator."""
    return self.num_digits + 1

  @property
  def max_new_tokens(self) -> int:
    """`T = K + 1`: the sorted digits and EOS."""
    return self.num_digits + 1

  def sample_prompts(self, key: jax.Array) -> jax.Array:
    """int32 `[B, P]`: `K` uniform digits, then the separator."""
    digits = jax.random.randint(key, (self.num_prompts, self.num_digits), 0, self.alphabet)
    sep = jnp.full((self.num_prompts, 1), self.sep_id, jnp.int32)
    return jnp.concatenate([digits.astype(jnp.int32), sep], axis=1)

  def target(self, prompts: jax.Array) -> jax.Array:
    """int32 `[N, T]`: the prompt's digits sorted, then EOS."""
    digits = jnp.sort(prompts[:, :self.num_digits], axis=1)
    eos = jnp.full((prompts.shape[0], 1), self.eos_id, jnp.int32)
    return jnp.concatenate([digits.astype(jnp.int32), eos], axis=1)

  def reward(self, prompts: jax.Array, completions: jax.Array, mask: jax.Array) -> jax.Array:
    """Fraction of the `K + 1` target positions that the completion gets right.

    Args:
      prompts: int `[N, P]`.
      completions: int `[N, T]` (what `sample` drew after the prompt).
      mask: `[N, T]`, 1 on the completion's tokens; positions after an early
        EOS count as wrong.

    Returns:
      float32 `[N]` in `[0, 1]`.

    Raises:
      ValueError: if the shapes are not `[N, K + 1]` each.
    """
    shape = (prompts.shape[0], self.max_new_tokens)
    if prompts.shape != (shape[0], self.prompt_length) or completions.shape != shape or (
        mask.shape != shape):
      raise ValueError(f"expected prompts [N, {self.prompt_length}] and completions and mask "
                       f"[N, {self.max_new_tokens}]; got {prompts.shape}, {completions.shape}, "
                       f"{mask.shape}")
    right = (completions == self.target(prompts)) & (mask > 0)
    return jnp.mean(right.astype(jnp.float32), axis=1)
