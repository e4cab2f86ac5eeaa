"""Statistics of finished episodes: the final return of a run and the recent-episodes window.

The window is gymnasium's definition of solved (e.g. CartPole-v1: a mean return of 475
over 100 consecutive episodes); `experiments.loop.EarlyStop` stops a run on it.
"""

from __future__ import annotations

import collections

import numpy as np

__all__ = [
    "final_returns",
    "last_finite",
    "mean_over_seeds",
    "RecentEpisodes",
    "SOLVED_EPISODES",
]

SOLVED_EPISODES = 100  # gymnasium's reward threshold is a mean over 100 consecutive episodes


def last_finite(values: np.ndarray) -> float | None:
  """The last finite entry of a 1-D array, or None if there is none."""
  finite = values[np.isfinite(values)]
  return float(finite[-1]) if finite.size else None


def mean_over_seeds(values: np.ndarray) -> np.ndarray:
  """Mean over seeds, NaN (without a warning) where no seed has a finite value."""
  finite = np.isfinite(values)
  total = np.where(finite, values, 0.0).sum(axis=0)
  count = finite.sum(axis=0)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def final_returns(mean_return, num_episodes, last: int) -> np.ndarray:
  """Per seed, the mean return of the episodes finished in its last `last` steps that finished any.

  Args:
    mean_return: `[num_seeds, steps]` (or `[steps]`) metrics: each step's mean
      return over the episodes it finished (NaN or anything where it finished none).
    num_episodes: the same shape: how many episodes each step finished.
    last: how many of the steps that finished an episode to count (>= 1).

  Returns:
    `[num_seeds]` (or a scalar) episode-weighted means; NaN for a seed that
    finished no episode. A step that finished none is skipped, not read as a
    return of 0: an update through which every pole stays up is not a failure.
  """
  if isinstance(last, bool) or not isinstance(last, int | np.integer) or last < 1:
    raise ValueError(f"last must be an integer >= 1, got {last!r}")
  returns, episodes = np.asarray(mean_return, np.float64), np.asarray(num_episodes)
  if returns.shape != episodes.shape or returns.ndim not in (1, 2):
    raise ValueError(f"mean_return and num_episodes must both be [steps] or [num_seeds, steps], "
                     f"got {returns.shape} and {episodes.shape}")
  finals = []
  for seed_returns, seed_episodes in zip(np.atleast_2d(returns), np.atleast_2d(episodes),
                                         strict=True):
    idx = np.flatnonzero(seed_episodes > 0)[-last:]
    count = seed_episodes[idx].sum()
    finals.append((seed_returns[idx] * seed_episodes[idx]).sum() / count if count else np.nan)
  return np.array(finals) if returns.ndim == 2 else finals[0]


class RecentEpisodes:
  """Per seed, the mean return of the last `SOLVED_EPISODES` finished episodes.

  Fed one train step at a time with each seed's mean return and episode count
  of that step; a step's episodes are kept or dropped together, so the window
  holds at least `SOLVED_EPISODES` episodes once that many have finished.
  """

  def __init__(self, num_seeds: int, episodes: int = SOLVED_EPISODES):
    self.episodes = episodes
    self.windows = [collections.deque() for _ in range(num_seeds)]

  def add(self, mean_return: np.ndarray, num_episodes: np.ndarray) -> None:
    """`[num_seeds, steps]` arrays of one chunk, oldest step first."""
    for window, means, counts in zip(self.windows, mean_return, num_episodes, strict=True):
      for mean, count in zip(means, counts, strict=True):
        if count > 0 and np.isfinite(mean):
          window.append((float(mean) * int(count), int(count)))
          while sum(c for _, c in window) - window[0][1] >= self.episodes:
            window.popleft()

  def means(self) -> np.ndarray:
    """`[num_seeds]`: the window's mean return, NaN until `episodes` have finished."""
    out = np.full(len(self.windows), np.nan)
    for i, window in enumerate(self.windows):
      count = sum(c for _, c in window)
      if count >= self.episodes:
        out[i] = sum(total for total, _ in window) / count
    return out
