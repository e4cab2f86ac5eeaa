"""Advantages from rewards: group baselines (RLOO, GRPO, Dr. GRPO), their scales, REINFORCE++.

A prompt's group of `G` completions with rewards `r_1..r_G` (one row of a `[B, G]` array)
gets advantages `A_i = (r_i - b_i) / (s + eps)`: a baseline `b_i` and an optional scale `s`.
`relative_advantages` composes the two; `ESTIMATORS` names the published combinations:

| name        | baseline `b_i`                      | scale `s`            | reference          |
|-------------|-------------------------------------|----------------------|--------------------|
| `"none"`    | 0                                   | none                 | Williams (1992)    |
| `"rloo"`    | `mean_{j != i} r_j`                 | none                 | Kool et al. (2019) |
| `"grpo"`    | `mean_j r_j`                        | group std            | Shao et al. (2024) |
| `"dr_grpo"` | `mean_j r_j`                        | none                 | Liu et al. (2025)  |

`scale="batch"` divides by one standard deviation of all `B * G` rewards instead of each
group's (TRL's `scale_rewards="batch"`, after Liu et al., 2025, arXiv:2508.08221, "PPO Lite").
`reinforce_pp_advantages` is REINFORCE++ (Hu, 2025, arXiv:2501.03262): a batch-normalised
advantage, its baseline the batch mean (or each group's mean first: "REINFORCE++-baseline").

The standard deviation uses `ddof` (delta degrees of freedom): `sqrt(sum_j (r_j - mean)^2 /
(G - ddof))`. The default here is `ddof=0` (the population std, as before, so every audit
number and trained run stays the same); TRL and tunix both use `ddof=1` (Bessel's
correction), which `presets.trl_advantages` / `presets.tunix_advantages` select. For a group
the two differ by the constant factor `sqrt(G / (G - 1))`: the direction of the gradient is
the same, its size (with `eps` negligible) differs by that factor.

A group whose rewards are all equal gets advantages of exactly 0 (under every baseline but
`"none"`): each group is centred on its first member before any mean or standard deviation
is taken, so equal rewards are exact zeros from the start (no rounding residue for a small
divisor to blow up, and a large common offset does not cancel).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks

__all__ = [
    "BASELINES",
    "ESTIMATORS",
    "SCALES",
    "relative_advantages",
    "reinforce_pp_advantages",
]

BASELINES = ("none", "mean", "loo")
SCALES = ("none", "group", "batch")
# name -> (baseline, scale) of `relative_advantages`.
ESTIMATORS = {
    "none": ("none", "none"),
    "rloo": ("loo", "none"),
    "grpo": ("mean", "group"),
    "dr_grpo": ("mean", "none"),
}


def _check_rewards(rewards: jax.Array) -> None:
  checks.check_floating(rewards=rewards)
  if jnp.ndim(rewards) != 2:
    raise ValueError(f"rewards must have shape [B, G], got shape {checks.shape_of(rewards)}")


def _check_ddof_eps(ddof, eps) -> None:
  if isinstance(ddof, bool) or ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 (population std) or 1 (sample std), got {ddof!r}")
  checks.check_number("eps", eps, low=0.0)


def _std(deviation: jax.Array, axis, ddof: int) -> jax.Array:
  """Standard deviation from deviations from the mean over `axis`, dividing by `n - ddof`;
  its gradient is finite (0 from the square root) where every deviation is 0."""
  count = 1
  for a in (axis if isinstance(axis, tuple) else (axis,)):
    count *= deviation.shape[a]
  variance = jnp.sum(jnp.square(deviation), axis=axis, keepdims=True) / (count - ddof)
  positive = variance > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1)), 0)


def _divide(numerator: jax.Array, scale: jax.Array) -> jax.Array:
  # A zero divisor (std 0 with eps 0) only meets a zero numerator under a baseline.
  return numerator / jnp.where(scale > 0, scale, 1)


def relative_advantages(
    rewards: jax.Array,
    *,
    baseline: str = "mean",
    scale: str = "group",
    ddof: int = 0,
    eps: float = 1e-6,
) -> jax.Array:
  """Per-completion advantages `A_i = (r_i - b_i) / (s + eps)` of each prompt's group.

  With `r_{b,i}` the reward of completion `i` of prompt `b` (`G` per prompt):

  * `baseline="none"`: `b = 0`; `"mean"`: `b = mean_j r_{b,j}` (GRPO, Dr. GRPO);
    `"loo"`: `b = mean_{j != i} r_{b,j}` (RLOO), computed as `G / (G - 1) (r_i - mean_j r_j)`.
  * `scale="none"`: no division (and `eps` is not used); `"group"`: `s = std_j r_{b,j}`,
    one per prompt (GRPO); `"batch"`: `s = std_{b,j} r_{b,j}`, one over the whole batch
    (TRL's `scale_rewards="batch"`). Either std divides by `n - ddof`.

  Args:
    rewards: `[B, G]` float array, `B` prompts with `G` completions each.
    baseline: one of `BASELINES`.
    scale: one of `SCALES`.
    ddof: 0 (population std, the default) or 1 (sample std, TRL's and tunix's).
    eps: added to the std (TRL: 1e-4, tunix: 1e-6).

  Returns:
    `[B, G]` advantages, same dtype as `rewards`. Gradients are not stopped here.

  Raises:
    ValueError: at trace time, if `rewards` is not a floating `[B, G]` array, a name is
      unknown, `ddof` is not 0 or 1, `eps` is negative or not finite, or a group of
      `G < 2` meets a baseline or the group scale (a group of one has no others to compare
      with), or the batch scale has fewer than 2 rewards with `ddof=1`.
  """
  _check_rewards(rewards)
  if baseline not in BASELINES:
    raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
  if scale not in SCALES:
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
  _check_ddof_eps(ddof, eps)
  num = rewards.shape[1]
  if num < 2 and (baseline != "none" or scale == "group"):
    raise ValueError(
        f"baseline={baseline!r} with scale={scale!r} compares each completion with the "
        f"others of its group and needs at least 2 completions per group, got rewards of "
        f"shape {checks.shape_of(rewards)} (G = {num}); use baseline='none' and "
        "scale='none' (or 'batch') for single samples")
  if scale == "batch" and rewards.size - ddof < 1:
    raise ValueError(f"scale='batch' with ddof={ddof} needs more than {ddof} reward(s), got "
                     f"rewards of shape {checks.shape_of(rewards)}")
  # Centred on a member first: equal rewards are exact zeros from here on.
  centred = rewards - rewards[:, :1]
  deviation = centred - jnp.mean(centred, axis=1, keepdims=True)
  if baseline == "none":
    numerator = rewards
  elif baseline == "mean":
    numerator = deviation
  else:
    # r_i - (sum_j r_j - r_i) / (G - 1), written without the sum of the others so that no
    # large total cancels.
    numerator = deviation * (num / (num - 1))
  if scale == "none":
    return numerator
  if scale == "group":
    return _divide(numerator, _std(deviation, 1, ddof) + eps)
  batch_centred = rewards - rewards[:1, :1]
  batch_deviation = batch_centred - jnp.mean(batch_centred)
  return _divide(numerator, _std(batch_deviation, (0, 1), ddof) + eps)


def reinforce_pp_advantages(
    rewards: jax.Array,
    *,
    baseline: str = "batch",
    ddof: int = 0,
    eps: float = 1e-6,
) -> jax.Array:
  """REINFORCE++ advantages: rewards normalised over the whole batch (Hu, 2025).

  With `r` the `[B, G]` rewards (Hu, 2025, arXiv:2501.03262, "REINFORCE++: stabilizing
  critic-free policy optimization with global advantage normalization"):

  * `baseline="batch"`: `A = (r - mean_{b,j} r) / (std_{b,j} r + eps)` (REINFORCE++);
  * `baseline="group"`: `d_{b,i} = r_{b,i} - mean_j r_{b,j}` first (each prompt's mean,
    "REINFORCE++-baseline"), then `A = (d - mean_{b,j} d) / (std_{b,j} d + eps)`.

  Each completion counts once in the batch statistics (implementations that whiten over
  tokens weight each completion by its length instead). A batch of equal rewards gets
  advantages of exactly 0.

  Args:
    rewards: `[B, G]` float array (`G = 1` is allowed with `baseline="batch"`).
    baseline: `"batch"` or `"group"`.
    ddof: 0 or 1, as in `relative_advantages`.
    eps: added to the batch std.

  Returns:
    `[B, G]` advantages, same dtype as `rewards`.

  Raises:
    ValueError: at trace time, if `rewards` is not a floating `[B, G]` array, `baseline` is
      unknown, `ddof` is not 0 or 1, `eps` is negative or not finite, `baseline="group"`
      gets `G < 2`, or there are fewer than `ddof + 1` rewards.
  """
  _check_rewards(rewards)
  if baseline not in ("batch", "group"):
    raise ValueError(f"baseline must be 'batch' or 'group', got {baseline!r}")
  _check_ddof_eps(ddof, eps)
  if baseline == "group" and rewards.shape[1] < 2:
    raise ValueError(f"baseline='group' needs at least 2 completions per group, got rewards "
                     f"of shape {checks.shape_of(rewards)}; use baseline='batch'")
  if rewards.size - ddof < 1:
    raise ValueError(f"ddof={ddof} needs more than {ddof} reward(s), got rewards of shape "
                     f"{checks.shape_of(rewards)}")
  if baseline == "group":
    centred = rewards - rewards[:, :1]
    values = centred - jnp.mean(centred, axis=1, keepdims=True)
  else:
    values = rewards - rewards[:1, :1]
  deviation = values - jnp.mean(values)
  return _divide(deviation, _std(deviation, (0, 1), ddof) + eps)
