"""Threefry random numbers that XLA:CPU runs fast, bit for bit JAX's own.

On CPU, JAX lowers its default key type (`threefry2x32`) as a `while` loop of
five trips over the counter arrays (the rolled form keeps compile time short).
On XLA:CPU each trip is a round of separately launched kernels, about 12 us a
trip on a 2-core machine however little it computes (a loop of our own
without JAX's carry rotations was no faster): about 60 us for the 4,096
uniforms of one bandit step, a third of the whole train step. The same hash written
out as twenty rounds of plain integer operations takes about 20 us.

`UNROLLED_THREEFRY` is a key implementation (`jax.extend.random.define_prng_impl`)
with the unrolled hash and the same counters as JAX's partitionable threefry,
so every `jax.random` function gives exactly the numbers it gives for a
`jax.random.key`: splits, `fold_in`, uniforms, normals, categoricals,
permutations, bits of every width, batched under `vmap` (tested against the
installed JAX in `tests/test_prng.py`). One detail makes it pay: XLA fuses a
cheap producer into each of its consumers, so a hash read by six fusions would
be computed six times. The bits pass through a gather of themselves at
indices XLA cannot prove are the identity; a gather is never duplicated, so
the hash is computed once.

`fast_keys(tree)` re-labels the threefry keys in a pytree with this
implementation (free: the key data is shared) and `restore_keys(tree)` labels
them back; `with_fast_keys(step)` wraps a `step(state, key)` in both.
`make_train_step`'s `train_step` and `init_fn` are wrapped (`with_fast_init`
for the latter), and the sequence train step, so a plain
`jax.jit(train_step)` gets the fast hash and returns the key type it was
given; nothing changes for the caller, not even the random numbers. Use them
in a loop of your own the same way.

The unrolled hash also compiles faster: JAX's rolled loop is one `while` per
call site, which XLA compiles as a computation of its own, and a PPO step has
dozens of call sites (the policy's sample, every environment's step and reset,
the shuffles, each layer's initialiser).

Only on CPU (other backends already unroll the hash or use a kernel), only
for keys of type `threefry2x32`, and only with `jax_threefry_partitionable`
on (JAX's default): otherwise `fast_keys` returns its input.

`permutation(key, n)` is a uniformly random shuffle for the same reason: on
XLA:CPU, `jax.random.permutation` spends its time in sorts of (key, position)
pairs, which call a comparator per comparison; a sort of one uint32 array
takes a direct path, about 4.5x faster (262,144 elements: 12 against 54 ms).
It is what PPO's minibatch schedule shuffles with.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "applies",
    "disabled",
    "fast_keys",
    "permutation",
    "restore_keys",
    "threefry2x32",
    "with_fast_init",
    "with_fast_keys",
]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
  return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry2x32(k1, k2, x1, x2) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011), unrolled.

  The key words `k1`, `k2` are uint32 scalars, the counters `x1`, `x2` uint32
  arrays of one shape; returns the two hashed words.
  """
  schedule = (k1, k2, k1 ^ k2 ^ _PARITY)
  a, b = x1 + schedule[0], x2 + schedule[1]
  for i in range(5):
    for bits in _ROTATIONS[i % 2]:
      a = a + b
      b = a ^ _rotate_left(b, bits)
    a = a + schedule[(i + 1) % 3]
    b = b + schedule[(i + 2) % 3] + np.uint32(i + 1)
  return a, b


def _once(key_word: jax.Array, x: jax.Array) -> jax.Array:
  """`x` unchanged, computed by one fusion that its readers share.

  XLA copies a cheap producer into every fusion that reads it, so a hash read
  by six fusions would run six times; it never copies a gather. The indices
  are `iota + zero` with a `zero` (0 for every key) that XLA cannot fold, so
  the gather stays: the hash is computed once, into the gather's output. (A
  division by a run-time one does the same, measured about 10% slower here.)
  """
  odd = key_word | np.uint32(1)
  zero = (odd // odd - np.uint32(1)).astype(np.int32)
  flat = x.reshape(-1)
  index = lax.iota(np.int32, flat.shape[0]) + zero
  return flat.at[index].get(mode="promise_in_bounds", unique_indices=True,
                            indices_are_sorted=True).reshape(x.shape)


def _hash(key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  size = math.prod(shape)
  if size >= 2**32:
    raise NotImplementedError(f"{size} random words in one call (at most 2**32 - 1)")
  # The 64-bit counter 0, 1, 2, ... in row-major order as (high, low) words,
  # which is JAX's `iota_2x32_shape` for arrays of fewer than 2**32 entries.
  low = lax.iota(np.uint32, size).reshape(shape)
  return threefry2x32(key[0], key[1], jnp.zeros(shape, np.uint32), low)


def _split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  high, low = _hash(key, tuple(shape))
  return _once(key[0], jnp.stack([high, low], axis=high.ndim))


def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
  high, low = threefry2x32(key[0], key[1], jnp.zeros((), np.uint32),
                           jnp.asarray(data).astype(np.uint32))
  return jnp.stack([high, low])


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  high, low = _hash(key, tuple(shape))
  dtype = _UINT[bit_width]
  if bit_width == 64:
    return (_once(key[0], high).astype(dtype) << dtype(32)) | _once(key[0], low).astype(dtype)
  return _once(key[0], high ^ low).astype(dtype)


def _seed(seed: jax.Array) -> jax.Array:
  return jax.random.key_data(jax.random.key(seed, impl="threefry2x32"))


UNROLLED_THREEFRY = jex_random.define_prng_impl(
    key_shape=(2,), seed=_seed, split=_split, random_bits=_random_bits, fold_in=_fold_in,
    name="threefry2x32_unrolled", tag="fry_unrolled")


@functools.cache
def _key_dtype(impl):
  """The dtype of keys of `impl` (an implementation or a registered name)."""
  return jax.eval_shape(
      lambda: jax.random.wrap_key_data(jnp.zeros(2, np.uint32), impl=impl)).dtype


def _relabel(tree, source, target):
  source_dtype = _key_dtype(source)

  def relabel(x):
    if isinstance(x, jax.Array) and x.dtype == source_dtype:
      return jax.random.wrap_key_data(jax.random.key_data(x), impl=target)
    return x
  return jax.tree.map(relabel, tree)


# `make_train_step` uses the unrolled keys from this many environments on: every
# batch. On a 2-core CPU (jaxlib 0.10.2), PPO on CartPole (the PureJaxRL setup,
# 4 environments, `make_run`) ran a step in 0.89x the time and compiled in 0.88x
# the CPU time with them; at rejax's settings (4 seeds vmapped) its train step
# compiled in 0.65x (CartPole, 5 environments) and 0.76x (Breakout-MinAtar, 32)
# of the CPU time at the same speed (benchmarks/ppo_vs_rejax_speed.py). JAX's
# keys took 1.03x, 1.07x and 1.00x as long at 16, 64 and 2,048 environments
# (ppo_levers.py); the bandit at 4,096 took 0.74x and REINFORCE at 64 0.90x.
MIN_BATCH = 1

_enabled = [True]


@contextlib.contextmanager
def disabled():
  """Within this block, `fast_keys` returns its input: programs traced here use
  JAX's own threefry lowering (to compare the two; the numbers are the same).

  It acts when a program is traced; `jax.jit` reuses the trace of a function
  it has already traced, so jit a fresh function (`lambda s, k: step(s, k)`).
  """
  _enabled.append(False)
  try:
    yield
  finally:
    _enabled.pop()


def applies() -> bool:
  """Whether `fast_keys` changes anything here: a CPU backend, partitionable
  threefry, and not inside `disabled()`. Decided when a program is traced."""
  return (_enabled[-1] and jax.default_backend() == "cpu"
          and bool(jax.config.jax_threefry_partitionable))


def fast_keys(tree):
  """`tree` with its `threefry2x32` keys as `UNROLLED_THREEFRY` keys (same data, same numbers)."""
  return _relabel(tree, "threefry2x32", UNROLLED_THREEFRY) if applies() else tree


def restore_keys(tree):
  """Undoes `fast_keys`: `UNROLLED_THREEFRY` keys back to `threefry2x32`."""
  return _relabel(tree, UNROLLED_THREEFRY, "threefry2x32")


def with_fast_keys(step):
  """`step(state, key, ...) -> (state, out)` drawing with the unrolled keys inside.

  The state's and the key's threefry keys are relabelled on the way in and the
  new state's on the way out, so the wrapped step takes and returns the key
  types of the original and gives the same numbers. `make_train_step` and the
  sequence train step are built this way; wrap a step of your own the same way.
  """
  @functools.wraps(step)
  def wrapped(state, key, *args, **kwargs):
    state, key = fast_keys((state, key))
    new_state, out = step(state, key, *args, **kwargs)
    return restore_keys(new_state), out
  return wrapped


def with_fast_init(init):
  """`init(key, ...) -> tree` drawing with the unrolled keys inside, its result's
  threefry keys labelled back (`restore_keys`): the same values as `init`."""
  @functools.wraps(init)
  def wrapped(key, *args, **kwargs):
    return restore_keys(init(fast_keys(key), *args, **kwargs))
  return wrapped


# Up to this many elements, `permutation` packs positions and random digits in
# one uint32 word; beyond it fewer than 8 random bits would be left per round.
PACKED_MAX = 2**24


def _packed_permutation(key: jax.Array, n: int, *, random_bits: int,
                        position_bits: int | None = None) -> jax.Array:
  """Rounds of single-array sorts of `(digit << b) | position`, `b = bits(n - 1)`.

  A round sorts the current sequence by fresh random digits of `32 - b` bits,
  stably (the positions in the low bits make every word distinct and break
  ties by position), and the low bits read back the new order. Rounds compose
  as a least-significant-digit radix sort, so the result is the stable order
  of one random key per element of `rounds * (32 - b) >= random_bits` bits:
  uniform unless two elements draw the same key. (`position_bits` wider than
  needed leaves fewer random bits per round: tests use it to see ties bias.)
  """
  position_bits = position_bits or max(1, (n - 1).bit_length())
  digit_bits = 32 - position_bits
  rounds = max(1, -(-random_bits // digit_bits))
  positions = lax.iota(np.uint32, n)
  low = np.uint32((1 << position_bits) - 1)
  order = None
  for round_key in jax.random.split(key, rounds):
    digits = jax.random.bits(round_key, (n,), np.uint32) << np.uint32(position_bits)
    step = (lax.sort(digits | positions) & low).astype(np.int32)
    order = step if order is None else order[step]
  return order


def permutation(key: jax.Array, n: int) -> jax.Array:
  """A uniformly random permutation of `0, ..., n - 1` (int32): `x[permutation(key, len(x))]`.

  On CPU, for `2 <= n <= PACKED_MAX`, it is drawn with sorts of a single
  uint32 array (see `_packed_permutation`), which XLA:CPU runs far faster than
  the key-value sorts of `jax.random.permutation`. Each element gets a random
  key of at least as many bits as `jax.random.permutation` draws for the same
  `n` (and at least 32), so a tie, the only departure from uniform, is no
  likelier than there: below `n**2 / 2**(bits + 1)`. Its numbers are not
  `jax.random.permutation`'s. On other backends, and for larger `n`, it is
  `jax.random.permutation(key, n)`.

  Raises:
    ValueError: if `n` is not a non-negative Python integer.
  """
  if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
    raise ValueError(f"n must be a non-negative integer (a static length), got {n!r}")
  n = int(n)
  if n < 2 or n > PACKED_MAX or jax.default_backend() != "cpu":
    return jax.random.permutation(key, n)
  # `jax.random.permutation` uses ceil(3 ln n / ln(2**32 - 1)) rounds of 32-bit keys.
  jax_bits = 32 * math.ceil(3 * math.log(n) / math.log(2**32 - 1))
  return _packed_permutation(key, n, random_bits=max(32, jax_bits))
