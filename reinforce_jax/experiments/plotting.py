"""Figures for a finished run (matplotlib, no display needed).

A figure given a path is written whole and renamed into place, and never through
a symbolic link (`reinforce_jax.experiments.run_folder`); one given an open binary
file is written to it.
"""

from __future__ import annotations

import io
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reinforce_jax.experiments import run_folder  # noqa: E402

__all__ = [
    "plot_bandit_policy",
    "plot_learning_curve",
    "plot_sweep",
]


def _save(fig, path) -> None:
  """Writes `fig` to `path` (a file path: as a whole file; or an open binary file), closes it."""
  try:
    if hasattr(path, "write"):
      fig.savefig(path, format="png")
    else:  # the format from the suffix, as `savefig(path)` takes it
      buffer = io.BytesIO()
      fig.savefig(buffer, format=os.path.splitext(os.fspath(path))[1][1:] or None)
      run_folder.write_bytes(path, buffer.getvalue())
  finally:
    plt.close(fig)


def plot_learning_curve(mean_return: np.ndarray, path, *, title: str) -> None:
  """Mean episode return per train step, one line per seed.

  Args:
    mean_return: `[S, N]` float, NaN where no episode finished.
    path: where to write the PNG (a file path, or an open binary file).
    title: figure title.
  """
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  steps = np.arange(1, mean_return.shape[1] + 1)
  for seed, curve in enumerate(mean_return):
    ok = np.isfinite(curve)
    ax.plot(steps[ok], curve[ok], lw=1, alpha=0.8, label=f"seed {seed}")
  if mean_return.shape[0] > 1:
    with np.errstate(all="ignore"), warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      ax.plot(steps, np.nanmean(mean_return, axis=0), color="k", lw=2, label="mean")
  ax.set_xlabel("train step")
  ax.set_ylabel("mean return of finished episodes")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if mean_return.shape[0] <= 10:
    ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, path)


def plot_bandit_policy(action_probs: np.ndarray, contexts: np.ndarray, path, *,
                       title: str) -> None:
  """Probability of each action in each context, averaged over seeds.

  Args:
    action_probs: `[S, C, A]` probabilities.
    contexts: `[C, D]` the observation shown in each context (for the labels).
    path: where to write the PNG (a file path, or an open binary file).
    title: figure title.
  """
  mean = action_probs.mean(axis=0)
  num_contexts, num_actions = mean.shape
  width = 0.8 / num_actions
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  x = np.arange(num_contexts)
  for a in range(num_actions):
    bars = ax.bar(x + (a - (num_actions - 1) / 2) * width, mean[:, a], width,
                  label=f"action {a}")
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
  labels = [", ".join(f"{v:g}" for v in c) for c in contexts]
  ax.set_xticks(x, [f"x = {label}" for label in labels])
  ax.set_ylim(0, 1.1)
  ax.set_ylabel("probability")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  _save(fig, path)


def plot_sweep(rows, path, *, title: str) -> None:
  """Mean learning curve per grid point (rows from `sweep.run_sweep`).

  Args:
    rows: `run_sweep`'s rows (`label`, `curve_mean`, `final_return_mean`, ...).
    path: where to write the PNG (a file path, or an open binary file).
    title: figure title.
  """
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for row in rows:
    curve = np.asarray(row["curve_mean"], dtype=float)
    steps = np.arange(1, len(curve) + 1)
    ok = np.isfinite(curve)
    ax.plot(steps[ok], curve[ok], label=f"{row['label']}: "
            f"{row['final_return_mean']:.3g} ± {row['final_return_std']:.2g}")
  ax.set_xlabel("train step")
  ax.set_ylabel("mean return of finished episodes")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, path)
