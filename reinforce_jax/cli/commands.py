"""`reinforce-jax`: train a preset from the command line.

    reinforce-jax train bandit
    reinforce-jax train cartpole --num-seeds 5 --out runs/cartpole
    reinforce-jax train pendulum --algo ppo

Bad arguments exit with status 2 and one line on stderr, no traceback. They are
found before JAX is imported (this module and what it imports at the top are
free of JAX), so the line comes back in milliseconds; only what needs the
devices (their count and memory, a cluster, a checkpoint) is checked after.
Ctrl-C stops at the end of the current chunk of steps, saves the state and
exits with status 130 (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import signal
import sys

from reinforce_jax.cli import checks
from reinforce_jax.cli.parsing import (
    NONE,
    PROGRESS_CHUNKS,
    SWEEPABLE_OPTIONS,
    build_parser,
    run_config,
    sequence_options,
)
from reinforce_jax.experiments.checkpoints import CHECKPOINTS_DIR
from reinforce_jax.experiments.presets import PRESETS
from reinforce_jax.experiments.run_folder import FolderInUseError, lock_folder
from reinforce_jax.rl.config import sweep_grid

__all__ = ["build_parser", "main"]

def _start_jax(args) -> None:
  """Process-wide JAX settings, before the first computation."""
  from reinforce_jax.xla.compiler import default_cache_dir, use_compilation_cache

  cache = default_cache_dir() if args.compilation_cache is None else args.compilation_cache
  use_compilation_cache(None if cache == NONE else cache)


def _make_loggers(args, out: pathlib.Path, hparams: dict, **names) -> list:
  """The `--log` loggers of a run (or sweep) in `out`, with `hparams` as its config."""
  from reinforce_jax.experiments import loggers

  made = []
  for backend in dict.fromkeys(args.log):
    if backend == "tensorboard":
      made.append(loggers.TensorBoardLogger(out / "tensorboard", hparams=hparams, **names))
    else:
      made.append(loggers.WandbLogger(out, config=hparams, name=out.name,
                                      run_names=names.get("run_names")))
  return made


class _Interrupts:
  """Turns Ctrl-C (SIGINT) into a request that the run polls: it stops at a safe point.

  Python's own handler raises `KeyboardInterrupt` wherever the main thread is,
  where it can be lost (JAX's garbage-collection callback swallows it) or land
  in the middle of writing a file. The run polls the request between chunks of
  about a second. The first Ctrl-C also restores the operating system's default
  action, so a second one ends the process at once, even inside a long compile or
  computation (every file is written whole and renamed into place, so the folder
  keeps its last checkpoint). Nothing is installed outside the main thread, or
  where SIGINT is ignored (a background job of a non-interactive shell).
  """

  def __init__(self):
    self.count = 0
    self._previous = None

  def __enter__(self) -> _Interrupts:
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
      if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)

  def _handle(self, signum, frame) -> None:
    del frame
    self.count += 1
    if self.count > 1:  # a second signal that arrived before the first was handled
      raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)  # the next Ctrl-C ends the process at once

  def __call__(self) -> bool:
    return self.count > 0

  def check(self) -> None:
    """Raises `KeyboardInterrupt` if Ctrl-C came before the run has written anything."""
    if self.count:
      raise KeyboardInterrupt("before the first train step; nothing written")


def _out_of_memory(error: BaseException) -> bool:
  """Whether `error` is XLA's report of a failed device allocation."""
  import jax  # imported by then: only a computation raises this

  text = str(error)
  return isinstance(error, jax.errors.JaxRuntimeError) and (
      "RESOURCE_EXHAUSTED" in text or "Out of memory" in text)


def _first_line(error: BaseException, limit: int = 200) -> str:
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return line if len(line) <= limit else line[:limit - 3] + "..."


def _holding_folder(command):
  """Gives `command` an `ExitStack` that holds its run folder's lock until it returns."""
  @functools.wraps(command)
  def run(args, parser, interrupts: _Interrupts) -> int:
    with contextlib.ExitStack() as held:
      return command(args, parser, interrupts, held)
  return run


def _lock(args, parser, out: pathlib.Path, held: contextlib.ExitStack) -> None:
  """Takes the lock on run folder `out` for the rest of the command, or exits with status 2.

  Taken before anything in the folder is read, written or removed. A new run
  checks the folder again under the lock: a run that ended meanwhile may have
  filled it.
  """
  resume = getattr(args, "resume", None)
  flag = "--resume" if resume else "--out"
  try:
    lock = held.enter_context(lock_folder(out))
  except FolderInUseError as e:
    parser.error(f"{flag} {e}")
  if not resume:
    try:
      checks.check_new_folder(out, flag, overwrite=args.overwrite)
    except ValueError as e:
      lock.release()
      parser.error(str(e))


@_holding_folder
def _sweep(args, parser, interrupts: _Interrupts, held: contextlib.ExitStack) -> int:
  grid = {o.field: getattr(args, o.field) for o in SWEEPABLE_OPTIONS
          if getattr(args, o.field) is not None}
  if not grid:
    parser.error("nothing to sweep: give comma-separated values to at least one of "
                 + ", ".join(o.flag for o in SWEEPABLE_OPTIONS))
  seed = 0 if args.seed is None else args.seed
  num_seeds = args.num_seeds or 1
  out = pathlib.Path(args.out or f"runs/{args.env}-sweep")
  preset = PRESETS[args.env]
  if preset.build_step is not None:
    parser.error(f"sweep {args.env}: a sequence task trains with `reinforce-jax train` only")
  try:
    config = run_config(args, preset, exclude=grid)
    combos = sweep_grid(config, grid)
    checks.check_new_folder(out, "--out", overwrite=args.overwrite)
    checks.check_log_extras(args.log)
  except ValueError as e:
    parser.error(str(e))
  interrupts.check()
  _start_jax(args)  # before the first computation
  import jax  # imported after the cheap argument checks

  from reinforce_jax.experiments.runner import steps_per_call
  from reinforce_jax.experiments.sweep import run_sweep

  if args.devices is not None and args.devices > jax.local_device_count():
    parser.error(f"--devices {args.devices}: only {jax.local_device_count()} device(s)")
  devices = args.devices or jax.local_device_count()
  runs = len(combos) * num_seeds
  per_run = checks.run_bytes(preset, config,
                             steps_per_call=steps_per_call(max(config.num_steps, 1), 1))
  checks.check_memory(parser, jax, -(-runs // devices) * devices * per_run, devices=devices,
                what=f"{runs} runs of {config.num_envs} environments x {config.rollout_length} "
                     f"steps")
  _lock(args, parser, out, held)
  interrupts.check()
  if args.overwrite:
    checks.clear_run_files(out)
  sweep_loggers = _make_loggers(
      args, out, {"env": args.env, "seed": seed, "num_seeds": num_seeds, **config.to_dict()},
      run_names=[f"{'-'.join(f'{k}_{v:g}' for k, v in combo.items())}-seed_{s}"
                 for combo in combos for s in range(num_seeds)],
      per_run_hparams=[{**combo, "seed_index": s} for combo in combos for s in range(num_seeds)])
  try:
    result = run_sweep(args.env, config, grid, seed=seed, num_seeds=num_seeds,
                       devices=args.devices, out_dir=out, should_stop=interrupts,
                       loggers=sweep_loggers)
  except Exception as e:
    if not _out_of_memory(e):
      raise
    print(f"reinforce-jax: out of memory ({_first_line(e)}); nothing was written; lower "
          "--num-envs, --rollout-length, --num-seeds or the grid", file=sys.stderr)
    return 1
  axes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
  print(f"{args.env} {config.algo}: {result['runs']} runs ({axes} x {num_seeds} seeds) "
        f"of {config.num_steps} steps in one program on {result['devices']} device(s), "
        f"{result['wall_s']:.1f} s (compile {result['compile_s']:.1f} s)")
  width = [max(len(name), 8) for name in grid]
  print("  " + " ".join(f"{name:>{w}}" for name, w in zip(grid, width, strict=True))
        + f" {'final return':>13} {'std over seeds':>15}")
  for row in result["rows"]:
    best = " <- best" if all(row[n] == result["best"][n] for n in grid) else ""
    print("  " + " ".join(f"{row[name]:>{w}g}" for name, w in zip(grid, width, strict=True))
          + f" {row['final_return_mean']:>13.4g} {row['final_return_std']:>15.3g}{best}")
  print(f"  outputs in {out}/: sweep.csv, sweep.json, sweep.png")
  return 0


@_holding_folder
def _train(args, parser, interrupts: _Interrupts, held: contextlib.ExitStack) -> int:
  preset = PRESETS[args.env]
  seed = 0 if args.seed is None else args.seed
  num_seeds, checkpoint_every = args.num_seeds or 1, args.checkpoint_every
  stored_stop = None  # a resumed run's own stop setting
  out = pathlib.Path(args.resume or args.out or f"runs/{args.env}")
  try:
    checks.check_cluster_options(args)
    options = sequence_options(args, preset)
    if args.resume:
      config, seed, num_seeds, stored_every, stored_stop = checks.stored_run(args)
      checkpoint_every = checkpoint_every or stored_every
      checks.check_writable(out, "--resume")
    else:
      config = run_config(args, preset)
      checks.check_new_folder(out, "--out", overwrite=args.overwrite)
    if args.profile:
      checks.check_writable(pathlib.Path(args.profile), "--profile")
    checks.check_log_extras(args.log)
  except ValueError as e:
    parser.error(str(e))
  interrupts.check()
  _start_jax(args)  # before the first computation
  if args.distributed or args.coordinator:
    # before anything starts a backend (reading a checkpoint does)
    checks.join_cluster(args, parser)

  import jax  # imported after the cheap argument checks

  from reinforce_jax.experiments.checkpoints import CheckpointError, latest_step
  from reinforce_jax.experiments.runner import run_experiment, steps_per_call

  devices = args.devices or jax.device_count()
  if devices > jax.device_count():
    parser.error(f"--devices {devices}: only {jax.device_count()} device(s)")
  if config.num_envs % devices:
    parser.error(f"--num-envs {config.num_envs} must be divisible by --devices {devices}")
  per_call = steps_per_call(config.num_steps, PROGRESS_CHUNKS, checkpoint_every)
  need = num_seeds * checks.run_bytes(preset, config, steps_per_call=per_call)
  checks.check_memory(parser, jax, need, devices=devices,
                      what=f"{num_seeds} seed(s) of {config.num_envs} environments x "
                           f"{config.rollout_length} steps")
  if jax.process_index() == 0:  # the process that writes the files holds the folder
    _lock(args, parser, out, held)
  if args.resume:
    try:
      step = latest_step(out / CHECKPOINTS_DIR)
    except CheckpointError as e:
      parser.error(str(e))
    if step is None:
      parser.error(f"--resume {args.resume}: no complete checkpoint in {out / CHECKPOINTS_DIR}")
    if config.num_steps < step:
      parser.error(f"--steps {config.num_steps} is below the checkpoint's step {step} of the "
                   f"run in {args.resume}")
  interrupts.check()
  if args.overwrite and jax.process_index() == 0:
    checks.clear_run_files(out)
  stop_at_return = args.stop_at_return
  if stop_at_return is None:  # a resumed run keeps its own; a new one takes the preset's
    stop_at_return = stored_stop if args.resume else preset.solved_return
  elif stop_at_return == NONE:
    stop_at_return = None
  try:
    result = run_experiment(args.env, config, seed=seed, num_seeds=num_seeds,
                            out_dir=out, progress=not args.no_progress,
                            num_chunks=PROGRESS_CHUNKS,
                            stop_at_return=stop_at_return, devices=devices,
                            profile_dir=args.profile, checkpoint_every=checkpoint_every,
                            resume=bool(args.resume), should_stop=interrupts, options=options,
                            callbacks=_make_loggers(args, out, {
                                "env": args.env, "seed": seed, "num_seeds": num_seeds,
                                **config.to_dict()}) if jax.process_index() == 0 else ())
  except CheckpointError as e:
    parser.error(str(e))
  except Exception as e:
    if not _out_of_memory(e):
      raise
    try:
      saved = latest_step(out / CHECKPOINTS_DIR) if out.is_dir() else None
    except CheckpointError:
      saved = None
    kept = (f"{out} keeps its checkpoint of step {saved} (continue with --resume {out})"
            if saved is not None else "nothing was kept")
    print(f"reinforce-jax: out of memory ({_first_line(e)}); {kept}; lower --num-envs, "
          "--rollout-length or --num-seeds", file=sys.stderr)
    return 1
  returns = [r for r in result.final_mean_return if r is not None]
  print(f"{result.env} {config.algo}: {result.status} {result.steps_done} steps x "
        f"{config.num_envs} envs x "
        f"{config.rollout_length} env steps, {result.num_seeds} seed(s), "
        f"{result.wall_time_s:.1f} s (compile {result.compile_time_s:.1f} s)")
  if returns:
    print(f"  final mean return: {sum(returns) / len(returns):.4g} "
          f"(per seed: {', '.join(f'{r:.4g}' for r in returns)})")
  recent = [r for r in result.recent_mean_return if r is not None]
  if len(recent) == len(result.recent_mean_return) and recent:
    print(f"  mean return of the last 100 episodes: {min(recent):.4g} in the worst seed "
          f"(per seed: {', '.join(f'{r:.4g}' for r in recent)})")
  if result.expected_reward is not None:
    print("  exact expected reward of the learned policy: "
          + ", ".join(f"{r:.4f}" for r in result.expected_reward))
  if result.solved_at_step is not None:
    print(f"  every seed's last 100 episodes averaged {stop_at_return:g} or more at step "
          f"{result.solved_at_step}, "
          f"{result.solved_after_s:.1f} s after the start (compile included)")
  if result.files:
    print(f"  outputs in {result.out_dir}/: {', '.join(result.files)}")
  else:
    print(f"  process {jax.process_index()}: trained; process 0 writes the outputs")
  return {"completed": 0, "solved": 0, "non-finite": 1, "interrupted": 130}[result.status]


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  with _Interrupts() as interrupts:
    args = parser.parse_args(argv)
    try:
      if args.command == "sweep":
        return _sweep(args, parser, interrupts)
      return _train(args, parser, interrupts)
    except KeyboardInterrupt as e:
      print(f"reinforce-jax: interrupted{f' {e}' if str(e) else ''}", file=sys.stderr)
      return 130
    except OSError as e:  # a folder that stopped being writable, a full disk, ...
      parser.error(f"cannot write {e.filename or 'the outputs'}: {e.strerror or e}")


if __name__ == "__main__":
  sys.exit(main())
