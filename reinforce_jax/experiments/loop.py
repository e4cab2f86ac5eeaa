"""A thin driver over `make_run` chunks, with callbacks for logging, checkpoints and stopping.

`run_loop` calls a runner `runner(state, key, num_steps) -> RunOutput` (such as
`jax.jit(make_run(train_step, chunk))`, possibly vmapped over seeds) until
`num_steps` train steps are done, `chunk` or fewer at a time. Between calls it
hands each chunk's metrics, as numpy arrays, to callbacks that print, write,
checkpoint, profile or decide to stop. The command line's `run_experiment` is
built on it; research scripts can use it the same way:

```python
runner = jax.jit(rj.make_run(train_step, 100))
result = rj.run_loop(runner, init_fn(jax.random.key(0)), jax.random.key(1),
                     num_steps=1000, chunk=100,
                     callbacks=[rj.loop.PrintMetrics(), rj.loop.EarlyStop(475.0)])
result.status   # "completed", "solved", "non-finite" or "interrupted"
```

**One convention for one run and many seeds.** Callbacks always see a seed
axis: a runner of one run (`steps_done` of shape `[]`, metrics `[max_steps]`)
gets one added, so its metrics read `[1, steps]` and `steps_done` `[1]`, like
those of a runner vmapped over seeds (`[seeds, steps]`, `[seeds]`). The state
and the key are passed through as they are, never reshaped.

`LoopContext.step` counts the steps that every seed completed. The same key is
passed to every chunk: `make_run`'s step folds the state's step count into it,
so a run in chunks is bit-identical to the same run in one call.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from reinforce_jax.experiments import checkpoints
from reinforce_jax.experiments.episodes import (
    SOLVED_EPISODES,
    RecentEpisodes,
    final_returns,
    last_finite,
    mean_over_seeds,
)
from reinforce_jax.rl.train import RunOutput

__all__ = [
    "BoundedChunks",
    "Callback",
    "Checkpoint",
    "EarlyStop",
    "final_returns",
    "History",
    "LoopContext",
    "LoopResult",
    "PrintMetrics",
    "ProfileFirstChunk",
    "ProgressBar",
    "RecentEpisodes",
    "run_loop",
    "WriteMetrics",
]

@dataclasses.dataclass
class LoopContext:
  """What callbacks see; `run_loop` updates it in place, callbacks only read it.

  Attributes:
    num_steps: the step count the loop runs to.
    start_step: the step count it started from (a resumed run's checkpoint).
    chunk: the most steps one call of the runner takes.
    step: steps completed by every seed so far (`start_step` included).
    state: the latest state, in the runner's layout: after a chunk, its
      `RunOutput.state` (a seed that went non-finite keeps its last finite state).
    key: the key passed to every chunk.
    output: the latest chunk's `RunOutput`, with a seed axis always (see the
      module docstring): `metrics` numpy `[num_seeds, n]` (n: the most steps a
      seed completed in it; entries past a seed's `steps_done` are zero),
      `steps_done` numpy int `[num_seeds]`, `finite` numpy bool `[num_seeds]`;
      None before the first chunk.
    chunk_start: `step` before the latest chunk.
    chunk_steps: the steps asked of the latest (in `before_chunk`: the next) chunk.
    chunks: chunks completed.
    chunk_seconds: wall time of the latest chunk's runner call, its results on the
      host included (0.0 before the first chunk).
    num_seeds: the seed axis's size, None until the first chunk has run.
    seed_axis: whether the runner is vmapped over seeds (False: the loop added
      the axis), None until the first chunk has run.
    status: "running", then "completed", "non-finite", "interrupted" or a
      stopping callback's `status`.
    error: the exception leaving the loop, in `on_end` (None otherwise).
  """

  num_steps: int
  start_step: int
  chunk: int
  step: int
  state: Any
  key: Any
  output: RunOutput | None = None
  chunk_start: int = 0
  chunk_steps: int = 0
  chunks: int = 0
  chunk_seconds: float = 0.0
  num_seeds: int | None = None
  seed_axis: bool | None = None
  status: str = "running"
  error: BaseException | None = None

  @property
  def new_steps(self) -> int:
    """Steps every seed completed in the latest chunk."""
    return self.step - self.chunk_start


class Callback:
  """Hooks `run_loop` calls in the order of its `callbacks`; each default does nothing.

  Per chunk the loop asks every callback's `max_chunk`, calls every
  `before_chunk`, runs the chunk, updates the context, then calls every
  `after_chunk`. A callback whose `after_chunk` returns True stops the loop
  after that chunk with its `status` as the run's (the first such callback's,
  when several do). `on_end` runs however the loop ends, also when an
  exception leaves it (then `ctx.error` is set).
  """

  status: str = "stopped"  # the run's status when this callback stops it

  def on_start(self, ctx: LoopContext) -> None:
    """Before the first chunk."""

  def max_chunk(self, ctx: LoopContext) -> int | None:
    """The most steps (>= 1) the next chunk may take, or None for no limit."""
    del ctx
    return None

  def before_chunk(self, ctx: LoopContext) -> None:
    """Before each call of the runner (`ctx.chunk_steps` is the steps it will be asked)."""

  def after_chunk(self, ctx: LoopContext) -> bool | None:
    """After each chunk; True stops the loop."""

  def on_end(self, ctx: LoopContext) -> None:
    """After the last chunk, or when an exception leaves the loop (`ctx.error`)."""


class LoopResult(NamedTuple):
  state: Any                 # the final state (a non-finite seed's last finite one)
  step: int                  # steps completed by every seed, `start_step` included
  status: str                # "completed", "non-finite", "interrupted" or a callback's
  output: RunOutput | None   # the last chunk's, as callbacks saw it (None if none ran)
  stopped_by: Callback | None  # the callback that stopped the loop, if one did


def _alive(state) -> bool:
  """Whether no buffer of `state` was donated to a computation (and so deleted)."""
  return not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state))


def _host_output(output: RunOutput) -> tuple[RunOutput, bool]:
  """`output` with numpy metrics, `steps_done` and `finite` and a seed axis; whether it had one."""
  steps_done = np.asarray(output.steps_done)
  if steps_done.ndim > 1:
    raise ValueError(f"steps_done has shape {steps_done.shape}: run_loop takes a runner of one "
                     "run (shape []) or one vmapped over seeds ([seeds])")
  seed_axis = steps_done.ndim == 1
  metrics = jax.tree.map(np.asarray, output.metrics)
  finite = np.asarray(output.finite)
  if not seed_axis:
    metrics = jax.tree.map(lambda m: m[None], metrics)
    steps_done, finite = steps_done[None], finite[None]
  top = int(steps_done.max())
  metrics = jax.tree.map(lambda m: m[:, :top], metrics)
  return RunOutput(output.state, metrics, steps_done, finite), seed_axis


def run_loop(
    runner: Callable[[Any, Any, jax.Array], RunOutput],
    state: Any,
    key: Any,
    *,
    num_steps: int,
    chunk: int,
    start_step: int = 0,
    callbacks: Iterable[Callback] = (),
    should_stop: Callable[[], bool] | None = None,
) -> LoopResult:
  """Runs `runner` in chunks from `start_step` to `num_steps` steps, calling `callbacks`.

  Each chunk calls `runner(state, key, jnp.int32(n))` with `n <= chunk` (fewer
  to end on `num_steps`, or where a callback's `max_chunk` caps it), so a
  jitted runner compiles once. The loop ends:

  - "completed": `num_steps` steps are done;
  - "non-finite": a chunk stopped on a non-finite loss or parameters
    (`RunOutput.finite` false for some seed). `make_run` would retry the same
    step, so the loop always stops; the state is each seed's last finite one.
    This is checked first: it wins over a callback's stop;
  - a callback's `status` ("solved" for `EarlyStop`), when its `after_chunk`
    returns True;
  - "interrupted": `should_stop()`, polled after every chunk, returned true,
    or a `KeyboardInterrupt` arrived while `state` was intact. One raised
    while a runner that donates its input holds the state (its buffers
    deleted) propagates instead: there is no state to return.

  Args:
    runner: `(state, key, num_steps) -> RunOutput`, e.g. `jax.jit(make_run(
      train_step, chunk))` or `jax.jit(jax.vmap(make_run(...), in_axes=(0, 0, None)))`.
    state: the starting state, in the runner's layout.
    key: the key passed to every chunk (`[num_seeds]` keys for a seed-vmapped runner).
    num_steps: the step count to stop at (`start_step` included).
    chunk: the most steps one call takes (at most the runner's `max_steps`).
    start_step: the step count `state` is at (nonzero for a resumed run).
    callbacks: `Callback`s, called in this order.
    should_stop: polled after every chunk; true ends the run as "interrupted".

  Returns:
    A `LoopResult` with the final state, step count and status.

  Raises:
    ValueError: if `chunk` < 1, `start_step` is not in `[0, num_steps]`, a
      callback's `max_chunk` is below 1, or the runner's `steps_done` has more
      than one axis.
  """
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
  if not 0 <= start_step <= num_steps:
    raise ValueError(f"start_step={start_step} must be in [0, num_steps={num_steps}]")
  callbacks: Sequence[Callback] = tuple(callbacks)
  ctx = LoopContext(num_steps=num_steps, start_step=start_step, chunk=chunk, step=start_step,
                    state=state, key=key, chunk_start=start_step)
  stopped_by = None
  try:
    try:
      for callback in callbacks:
        callback.on_start(ctx)
      while ctx.step < num_steps:
        caps = [c for c in (cb.max_chunk(ctx) for cb in callbacks) if c is not None]
        if any(c < 1 for c in caps):
          raise ValueError(f"max_chunk must be at least 1, got {caps}")
        ctx.chunk_steps = min(chunk, num_steps - ctx.step, *caps)
        for callback in callbacks:
          callback.before_chunk(ctx)
        started = time.perf_counter()
        output, seed_axis = _host_output(runner(ctx.state, key, jnp.int32(ctx.chunk_steps)))
        ctx.chunk_seconds = time.perf_counter() - started
        # The state and the step count change together: a checkpoint pairs them.
        ctx.chunk_start, ctx.step = ctx.step, ctx.step + int(output.steps_done.min())
        ctx.state, ctx.output, ctx.chunks = output.state, output, ctx.chunks + 1
        ctx.num_seeds, ctx.seed_axis = len(output.steps_done), seed_axis
        # Every callback sees every chunk (a writer writes it, a checkpoint saves it) before
        # the loop decides; a list, not a generator, so none is skipped.
        stops = [cb for cb in callbacks if cb.after_chunk(ctx)]
        if not output.finite.all():
          ctx.status = "non-finite"
          break
        if stops:
          stopped_by = stops[0]
          ctx.status = stopped_by.status
          break
        if should_stop is not None and should_stop():
          ctx.status = "interrupted"
          break
      else:
        ctx.status = "completed"
    except KeyboardInterrupt:
      if not _alive(ctx.state):  # stopped between a chunk's start and its result
        raise
      ctx.status = "interrupted"
  except BaseException as error:
    ctx.error = error
    for callback in callbacks:
      callback.on_end(ctx)
    raise
  for callback in callbacks:
    callback.on_end(ctx)
  return LoopResult(ctx.state, ctx.step, ctx.status, ctx.output, stopped_by)


def _jsonable(x: Any):
  x = x.item() if hasattr(x, "item") else x
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


class EarlyStop(Callback):
  """Stops ("solved") once every seed's last `episodes` episodes average `threshold` or more.

  Gymnasium's definition of solved (CartPole-v1: 475 over 100 episodes). Reads
  the metrics `mean_return` and `num_episodes` of each step every seed
  completed. With `threshold=None` it only keeps the means (`means()`).

  Attributes:
    recent: the `RecentEpisodes` window, made at the first chunk (None before).
    stopped_at: `(step, time.perf_counter())` when it stopped the loop, else None.
  """

  status = "solved"

  def __init__(self, threshold: float | None, *, episodes: int = SOLVED_EPISODES):
    self.threshold, self.episodes = threshold, episodes
    self.recent: RecentEpisodes | None = None
    self.stopped_at: tuple[int, float] | None = None

  def after_chunk(self, ctx: LoopContext) -> bool:
    if self.recent is None:
      self.recent = RecentEpisodes(ctx.num_seeds, self.episodes)
    good, metrics = ctx.new_steps, ctx.output.metrics
    if good:
      self.recent.add(metrics["mean_return"][:, :good], metrics["num_episodes"][:, :good])
    if self.threshold is not None and np.all(self.recent.means() >= self.threshold):
      self.stopped_at = (ctx.step, time.perf_counter())
      return True
    return False

  def means(self, num_seeds: int = 0) -> np.ndarray:
    """`[num_seeds]` means, NaN until `episodes` have finished (before any chunk: `num_seeds`)."""
    return np.full(num_seeds, np.nan) if self.recent is None else self.recent.means()


class BoundedChunks(Callback):
  """Sizes chunks to take about `seconds` of wall time each, so the loop stays responsive.

  Between chunks the loop polls `should_stop` (the command line's Ctrl-C), writes
  metrics and saves checkpoints; one chunk of millions of steps would hold all of
  that off for minutes. The first chunk runs `first` steps; each later one is sized
  from the time per step the previous one took (`LoopContext.chunk_seconds`, which
  excludes the callbacks' own work), growing at most `growth`-fold from one chunk to
  the next, and never past the runner's `chunk`. Sizes depend on timings, but results
  do not: a run in chunks is bit-identical to the same run in one call.

  Args:
    seconds: the wall time to aim each chunk at.
    first: the steps of the first chunk.
    growth: the largest factor from one chunk's size to the next.

  Raises:
    ValueError: if `seconds` is not a positive finite number, `first` is not a
      positive integer, or `growth` is below 1.
  """

  def __init__(self, seconds: float = 1.0, *, first: int = 1, growth: float = 16.0):
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
      raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
      raise ValueError(f"first must be a positive integer, got {first!r}")
    if not (isinstance(growth, (int, float)) and math.isfinite(growth) and growth >= 1):
      raise ValueError(f"growth must be a finite number >= 1, got {growth!r}")
    self.seconds, self.first, self.growth = float(seconds), first, float(growth)
    self._next = first

  def on_start(self, ctx: LoopContext) -> None:
    del ctx
    self._next = self.first

  def max_chunk(self, ctx: LoopContext) -> int:
    del ctx
    return self._next

  def after_chunk(self, ctx: LoopContext) -> None:
    self._next = self.next_size(ctx.chunk_steps, ctx.chunk_seconds)

  def next_size(self, steps: int, seconds: float) -> int:
    """The next chunk's size after one of `steps` steps took `seconds`."""
    steps = max(steps, 1)
    per_step = seconds / steps
    fits = self.seconds / per_step if per_step > 0 else math.inf
    return max(1, int(min(fits, steps * self.growth, 2**31 - 1)))


class WriteMetrics(Callback):
  """Writes one JSON object per train step and seed: `step` (1-based), `seed`, the metrics.

  Non-finite values are written as null. Each seed's rows go up to its own
  `steps_done` (a seed past a non-finite one has rows beyond `ctx.step`). Rows
  of a chunk are written in one call and flushed, so the file never lags a
  checkpoint saved after it.

  Args:
    file: a path (opened in `on_start` with `mode`, closed in `on_end`) or an
      open text file (written and flushed; the caller closes it).
    mode: "w" or "a", for a path.
  """

  def __init__(self, file: str | os.PathLike | IO[str], *, mode: str = "w"):
    self.file, self.mode = file, mode
    self._log: IO[str] | None = None

  def on_start(self, ctx: LoopContext) -> None:
    del ctx
    if hasattr(self.file, "write"):
      self._log = self.file
    else:  # not a `with`: the file stays open across chunks; `on_end` closes it
      self._log = open(self.file, self.mode)  # noqa: SIM115

  def after_chunk(self, ctx: LoopContext) -> None:
    steps_done, metrics = ctx.output.steps_done, ctx.output.metrics
    lines = []
    for i in range(int(steps_done.max())):
      for s in range(len(steps_done)):
        if i < steps_done[s]:
          row = {"step": ctx.chunk_start + i + 1, "seed": s}
          row.update({k: _jsonable(v[s, i]) for k, v in metrics.items()})
          lines.append(json.dumps(row) + "\n")
    self._log.write("".join(lines))
    self._log.flush()

  def on_end(self, ctx: LoopContext) -> None:
    del ctx
    if self._log is not None and self._log is not self.file:
      self._log.close()
    self._log = None


class Checkpoint(Callback):
  """Saves the state with orbax (`experiments.checkpoints`) every `every` steps and at the end.

  Chunks are capped to end on the checkpoint steps. With `every_seconds`, a
  chunk that ends that long or longer after the latest save is saved too (so a
  killed process loses at most about that much training). The final state is
  saved when the loop ends without an exception (completed, stopped, non-finite,
  interrupted), unless that step is saved already.

  Args:
    directory: the checkpoints folder (`checkpoints.save`'s `directory`).
    every: save every that many steps (None: only at the end).
    every_seconds: also save after the first chunk that ends at least this many
      seconds of wall time after the latest save or the start (None: no timed saves).
    saved_step: the step of a checkpoint of the starting state already in
      `directory` (a resumed run), which is not written again.
  """

  def __init__(self, directory: str | os.PathLike, *, every: int | None = None,
               saved_step: int | None = None, every_seconds: float | None = None):
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
      raise ValueError(f"every must be a positive integer or None, got {every!r}")
    if every_seconds is not None and not (
        isinstance(every_seconds, (int, float)) and not isinstance(every_seconds, bool)
        and math.isfinite(every_seconds) and every_seconds > 0):
      raise ValueError(f"every_seconds must be a positive finite number or None, "
                       f"got {every_seconds!r}")
    self.directory, self.every, self.saved_step = directory, every, saved_step
    self.every_seconds = every_seconds
    self._saved_at = time.monotonic()

  def on_start(self, ctx: LoopContext) -> None:
    del ctx
    self._saved_at = time.monotonic()

  def _save(self, ctx: LoopContext) -> None:
    checkpoints.save(self.directory, ctx.step, ctx.state)
    self.saved_step, self._saved_at = ctx.step, time.monotonic()

  def max_chunk(self, ctx: LoopContext) -> int | None:
    return None if self.every is None else self.every - ctx.step % self.every

  def after_chunk(self, ctx: LoopContext) -> None:
    if ctx.step >= ctx.num_steps or ctx.step == self.saved_step:
      return  # the last step is saved in `on_end`
    due = self.every and ctx.step % self.every == 0
    late = (self.every_seconds is not None
            and time.monotonic() - self._saved_at >= self.every_seconds)
    if due or late:
      self._save(ctx)

  def on_end(self, ctx: LoopContext) -> None:
    if ctx.error is None and self.saved_step != ctx.step:
      self._save(ctx)


class ProfileFirstChunk(Callback):
  """Runs the first chunk under the JAX profiler, writing a trace into `log_dir`.

  View it with TensorBoard's profile plugin or Perfetto (a `.trace.json.gz` is
  written too). Put it first among the callbacks, so the trace ends with the
  chunk rather than with other callbacks' work.
  """

  def __init__(self, log_dir: str | os.PathLike):
    self.log_dir = str(log_dir)
    self._tracing = False

  def before_chunk(self, ctx: LoopContext) -> None:
    if ctx.chunks == 0:
      jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True)
      self._tracing = True

  def after_chunk(self, ctx: LoopContext) -> None:
    if self._tracing:
      jax.block_until_ready(ctx.state)
      self._stop()

  def on_end(self, ctx: LoopContext) -> None:
    del ctx
    if self._tracing:  # the first chunk raised
      self._stop()

  def _stop(self) -> None:
    self._tracing = False
    jax.profiler.stop_trace()


class ProgressBar(Callback):
  """A tqdm bar over the steps, showing the seeds' mean of the latest finite `metric`.

  Args:
    desc: the bar's label.
    disable: no bar at all.
    metric: the metric shown after the bar (if the run has it).
    file: where the bar is drawn.
    tqdm_class: `tqdm.auto.tqdm` or a compatible class.
  """

  def __init__(self, *, desc: str | None = None, disable: bool = False,
               metric: str = "mean_return", file: IO[str] | None = None,
               tqdm_class: type = tqdm):
    self.desc, self.disable, self.metric = desc, disable, metric
    self.file, self.tqdm_class = file, tqdm_class
    self.bar = None

  def on_start(self, ctx: LoopContext) -> None:
    self.bar = self.tqdm_class(total=ctx.num_steps, initial=ctx.step, desc=self.desc,
                               unit="step", disable=self.disable,
                               file=sys.stderr if self.file is None else self.file,
                               dynamic_ncols=True)

  def after_chunk(self, ctx: LoopContext) -> None:
    good = ctx.new_steps
    self.bar.update(good)
    if good and self.metric in ctx.output.metrics:
      recent = last_finite(mean_over_seeds(ctx.output.metrics[self.metric][:, :good]))
      if recent is not None:
        self.bar.set_postfix({self.metric: f"{recent:.3g}"})

  def on_end(self, ctx: LoopContext) -> None:
    del ctx
    if self.bar is not None:
      self.bar.close()


class PrintMetrics(Callback):
  """Prints one line per chunk: the step and the seeds' mean of each of `keys` at that step.

  Printed with `tqdm.write`, so it does not tear a `ProgressBar`.
  """

  def __init__(self, keys: Sequence[str] = ("loss", "mean_return"), *,
               file: IO[str] | None = None):
    self.keys, self.file = tuple(keys), file

  def after_chunk(self, ctx: LoopContext) -> None:
    good, metrics = ctx.new_steps, ctx.output.metrics
    if not good:
      return
    values = []
    for k in self.keys:
      if k in metrics:
        value = mean_over_seeds(np.asarray(metrics[k][:, good - 1], np.float64))
        values.append(f"{k}={float(value):.4g}")
    tqdm.write(f"step {ctx.step}: " + " ".join(values), file=self.file)


class History(Callback):
  """Keeps every metric of the steps every seed completed, `[num_seeds, steps]` numpy.

  `metrics` holds them after (and during) the run; a run of one seed has a
  seed axis of 1 too.
  """

  def __init__(self):
    self._chunks: list[dict[str, np.ndarray]] = []

  def after_chunk(self, ctx: LoopContext) -> None:
    good = ctx.new_steps
    self._chunks.append(jax.tree.map(lambda m: m[:, :good], ctx.output.metrics))

  @property
  def metrics(self) -> dict[str, np.ndarray]:
    if not self._chunks:
      return {}
    return jax.tree.map(lambda *ms: np.concatenate(ms, axis=1), *self._chunks)
