"""Experiment tracking: TensorBoard and Weights & Biases loggers as run-loop callbacks.

Each logger is a `reinforce_jax.experiments.loop.Callback`: it writes every metric of every
train step, with that step's number (1-based, as in `metrics.jsonl`), one series
per seed, and the run's config as hyperparameters. Both libraries are optional
extras, imported when a logger starts:

```python
history = rj.loop.run_loop(runner, state, keys, num_steps=1000, chunk=100, callbacks=[
    rj.loggers.TensorBoardLogger("runs/x/tensorboard", hparams=config.to_dict()),
    rj.loggers.WandbLogger("runs/x", config=config.to_dict(), project="reinforce-jax"),
])
```

TensorBoard: one run (a subfolder, `seed_0/`, `seed_1/`, ...) per seed, so the
seeds are separate curves of the same tag; the hyperparameters go to the
HParams dashboard (with the seed index) and, as JSON, to the Text dashboard.
W&B: one W&B run whose metrics are `seed_<i>/<metric>` (one panel per metric
and seed; a run per seed would start a W&B process per seed) and whose config
is the run's config; with `WANDB_MODE=offline` the run stays in
`<dir>/wandb/offline-run-*/` for a later `wandb sync`.

Non-finite values (a step where no episode finished has a NaN `mean_return`)
are not logged: `metrics.jsonl` writes them as null.

The logging libraries are imported when a logger is made; a missing one raises
`MissingExtraError` naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from reinforce_jax.experiments import run_folder
from reinforce_jax.experiments.loop import Callback, LoopContext

__all__ = [
    "metric_rows",
    "missing_extra",
    "MissingExtraError",
    "TensorBoardLogger",
    "WandbLogger",
]

# `--log` name -> (module to import, extra that installs it)
BACKENDS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}


class MissingExtraError(ImportError):
  """A logger's library is not installed; the message names the extra to install."""


def missing_extra(backend: str) -> str | None:
  """The one-line error for `backend` ("tensorboard" or "wandb") if its library is missing.

  Looks the module up without importing it.
  """
  module, extra = BACKENDS[backend]
  if importlib.util.find_spec(module) is None:
    return (f"--log {backend} needs {module}: pip install 'reinforce_jax[{extra}]'")
  return None


def _require(backend: str):
  message = missing_extra(backend)
  if message is not None:
    raise MissingExtraError(message)
  return importlib.import_module(BACKENDS[backend][0])


def _hparam_value(value: Any) -> bool | int | float | str:
  """A value TensorBoard's HParams plugin takes: bool, number or string (else its JSON)."""
  if isinstance(value, bool | int | float | str):
    return value
  return json.dumps(value)


def metric_rows(ctx: LoopContext) -> Iterator[tuple[int, int, dict[str, float]]]:
  """`(step, seed, {metric: value})` for every step and seed of the latest chunk.

  Each seed's rows go up to its own `steps_done` (as `loop.WriteMetrics`'s);
  non-finite values are left out.
  """
  steps_done, metrics = ctx.output.steps_done, ctx.output.metrics
  for i in range(int(steps_done.max())):
    for s in range(len(steps_done)):
      if i < steps_done[s]:
        row = {}
        for name, values in metrics.items():
          value = float(np.asarray(values[s, i], np.float64))
          if math.isfinite(value):
            row[name] = value
        yield ctx.chunk_start + i + 1, s, row


class _Logger(Callback):
  """Shared by the loggers: per-run names and `log_curves` for whole curves at once."""

  def __init__(self, run_names: Sequence[str] | None):
    self.run_names = None if run_names is None else list(run_names)

  def _name(self, index: int) -> str:
    return f"seed_{index}" if self.run_names is None else self.run_names[index]

  def log_curves(self, curves: Mapping[str, np.ndarray], *, start_step: int = 0) -> None:
    """Logs whole `[runs, steps]` curves per metric (a sweep's), step `start_step + 1` first.

    Wraps `on_start`, one `after_chunk` and `on_end`, for results that did not
    come through `run_loop`.
    """
    from reinforce_jax.rl.train import RunOutput

    curves = {k: np.asarray(v) for k, v in curves.items()}
    num_runs, num_steps = next(iter(curves.values())).shape
    ctx = LoopContext(num_steps=start_step + num_steps, start_step=start_step, chunk=num_steps,
                      step=start_step + num_steps, state=None, key=None,
                      chunk_start=start_step, chunks=1, num_seeds=num_runs, seed_axis=True)
    ctx.output = RunOutput(None, curves, np.full(num_runs, num_steps), np.ones(num_runs, bool))
    self.on_start(ctx)
    try:
      self.after_chunk(ctx)
    finally:
      ctx.status = "completed"
      self.on_end(ctx)


class TensorBoardLogger(_Logger):
  """Writes TensorBoard event files (with tensorboardX): one subfolder per seed.

  Args:
    log_dir: the folder; seed `i`'s events go to `log_dir/seed_<i>/` (or
      `log_dir/<run_names[i]>/`).
    hparams: the run's config, shown in the HParams dashboard (values that are
      not a bool, number or string as their JSON) and as JSON text.
    run_names: a name per seed (a sweep's grid points); default `seed_<i>`.
    per_run_hparams: extra hyperparameters per run (a sweep's grid values).
    metric_prefix: put before every metric's name (TensorBoard groups tags by
      the part before the first `/`).
    root: the run folder `log_dir` lies in (default: `log_dir`'s parent). Before
      the event files are opened, neither `log_dir`, anything in it, nor a folder
      between `root` and it may be a symbolic link (tensorboardX would write
      through it).

  Raises:
    reinforce_jax.experiments.run_folder.SymlinkError: such a link is there.
  """

  def __init__(self, log_dir: str | os.PathLike, *, hparams: Mapping[str, Any] | None = None,
               run_names: Sequence[str] | None = None,
               per_run_hparams: Sequence[Mapping[str, Any]] | None = None,
               metric_prefix: str = "train/", root: str | os.PathLike | None = None):
    super().__init__(run_names)
    self.log_dir = os.fspath(log_dir)
    self.root = root
    run_folder.refuse_links(self.log_dir, root=root)  # refused before a run compiles
    self.hparams = dict(hparams or {})
    self.per_run_hparams = per_run_hparams
    self.metric_prefix = metric_prefix
    self.writers: list[Any] = []
    self._module = _require("tensorboard")

  def _open(self, num_runs: int, metric_names: Sequence[str]) -> None:
    from tensorboardX.summary import hparams as hparams_summary

    run_folder.refuse_links(self.log_dir, root=self.root)
    for index in range(num_runs):
      writer = self._module.SummaryWriter(os.path.join(self.log_dir, self._name(index)))
      values = {**self.hparams, "seed_index": index}
      if self.per_run_hparams is not None:
        values.update(self.per_run_hparams[index])
      values = {k: _hparam_value(v) for k, v in values.items()}
      # The HParams plugin's three summaries in the run's own folder (`add_hparams`
      # would write them to a new subfolder, a second run per seed).
      metrics = {self.metric_prefix + name: math.nan for name in metric_names}
      for summary in hparams_summary(values, metrics):
        writer.file_writer.add_summary(summary)
      writer.add_text("config", "```\n" + json.dumps(values, indent=2) + "\n```", 0)
      self.writers.append(writer)

  def after_chunk(self, ctx: LoopContext) -> None:
    if not self.writers:  # the seed count is known from the first chunk on
      self._open(ctx.num_seeds, list(ctx.output.metrics))
    for step, seed, row in metric_rows(ctx):
      for name, value in row.items():
        self.writers[seed].add_scalar(self.metric_prefix + name, value, step)
    for writer in self.writers:
      writer.flush()

  def on_end(self, ctx: LoopContext) -> None:
    del ctx
    for writer in self.writers:
      writer.close()
    self.writers = []


class WandbLogger(_Logger):
  """Logs to one Weights & Biases run: `seed_<i>/<metric>` at each train step.

  Args:
    dir: W&B writes its run folder to `dir/wandb/` (`wandb.init(dir=...)`).
    config: the run's config (`wandb.config`).
    run_names: a name per seed (a sweep's grid points); default `seed_<i>`.
    **init_kwargs: more `wandb.init` arguments (`project`, `name`, `group`,
      `mode`, ...). `WANDB_MODE=offline` in the environment keeps it local.
  """

  def __init__(self, dir: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
               run_names: Sequence[str] | None = None, **init_kwargs):
    super().__init__(run_names)
    self.dir = os.fspath(dir)
    self.config = dict(config or {})
    self.init_kwargs = {"project": "reinforce-jax", **init_kwargs}
    self.run = None
    self._module = _require("wandb")

  def on_start(self, ctx: LoopContext) -> None:
    del ctx
    os.makedirs(self.dir, exist_ok=True)  # wandb.init does not create `dir` itself
    self.run = self._module.init(dir=self.dir, config=self.config, **self.init_kwargs)

  def after_chunk(self, ctx: LoopContext) -> None:
    by_step: dict[int, dict[str, float]] = {}
    for step, seed, row in metric_rows(ctx):
      by_step.setdefault(step, {}).update(
          {f"{self._name(seed)}/{name}": value for name, value in row.items()})
    for step in sorted(by_step):
      self.run.log(by_step[step], step=step)

  def on_end(self, ctx: LoopContext) -> None:
    if self.run is not None:
      self.run.finish(exit_code=0 if ctx.error is None else 1)
    self.run = None
