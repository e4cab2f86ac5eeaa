"""`reinforce-jax`: train a preset from the command line.

    reinforce-jax train bandit
    reinforce-jax train cartpole --num-seeds 5 --out runs/cartpole
    reinforce-jax train pendulum --algo ppo

Bad arguments exit with status 2 and one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys

from reinforce_jax.config import ALGOS, BASELINES, TrainConfig, sweep_grid
from reinforce_jax.presets import PRESETS


class _Parser(argparse.ArgumentParser):
  """Reports a usage error as one line and exits with status 2."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value
  return parse


def _number(valid, requirement: str):
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not valid(value):
      raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value
  return parse


_positive_float = _number(lambda v: math.isfinite(v) and v > 0, "finite and positive")
_unit_float = _number(lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
_non_negative_float = _number(lambda v: math.isfinite(v) and v >= 0, "finite and >= 0")


def _list_of(parse):
  def parse_list(text: str) -> list[float]:
    return [parse(part) for part in text.split(",")]
  return parse_list


# Options that take one value in `train` and a comma-separated list in `sweep`:
# (flag, TrainConfig field, parser, help).
_SWEEPABLE_OPTIONS = (
    ("--lr", "learning_rate", _positive_float, "Adam learning rate"),
    ("--gamma", "gamma", _unit_float, "discount in [0, 1]"),
    ("--gae-lambda", "gae_lambda", _unit_float, "GAE lambda in [0, 1] (a2c, ppo)"),
    ("--entropy-coef", "entropy_coef", _non_negative_float, "entropy bonus weight"),
    ("--value-coef", "value_coef", _non_negative_float, "value loss weight"),
    ("--clip-eps", "clip_eps", _non_negative_float, "PPO clipping range"),
)


def _add_run_options(command: argparse.ArgumentParser, *, sweep: bool = False) -> None:
  """Options shared by `train` and `sweep`: the task and its config."""
  command.add_argument("env", choices=sorted(PRESETS), metavar="ENV",
                       help="one of: " + ", ".join(f"{k} ({v.description})"
                                                   for k, v in sorted(PRESETS.items())))
  command.add_argument("--algo", choices=list(ALGOS),
                       help="reinforce, a2c or ppo (default: the preset's)")
  command.add_argument("--steps", type=_int_at_least(0), help="train steps")
  command.add_argument("--num-envs", type=_int_at_least(1), help="parallel environments")
  command.add_argument("--rollout-length", type=_int_at_least(1),
                       help="environment steps per environment per train step")
  for flag, field, parse, text in _SWEEPABLE_OPTIONS:
    if sweep:
      command.add_argument(flag, type=_list_of(parse), dest=field, metavar="V[,V...]",
                           help=f"{text}: comma-separated values to sweep")
    else:
      command.add_argument(flag, type=parse, dest=field, help=text)
  command.add_argument("--max-grad-norm", type=_positive_float, help="clip the gradient norm")
  command.add_argument("--baseline", choices=list(BASELINES), help="REINFORCE's baseline")
  command.add_argument("--seed", type=_int_at_least(0), default=0,
                       help="random seed (default 0)")
  command.add_argument("--num-seeds", type=_int_at_least(1), default=1,
                       help="independent runs trained together in one program (default 1)")
  command.add_argument("--out", help="output folder (default runs/ENV, runs/ENV-sweep)")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="reinforce-jax", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  train = commands.add_parser(
      "train", help="train a policy (REINFORCE, A2C or PPO)",
      description="Train a policy. Defaults come from the preset of ENV and --algo.")
  _add_run_options(train)
  train.add_argument("--stop-at-return", type=float, metavar="R",
                     help="stop once every seed's latest mean return is >= R")
  train.add_argument("--devices", type=_int_at_least(1),
                     help="local devices to split the environments over (default: all)")
  train.add_argument("--distributed", action="store_true",
                     help="join a multi-process run (jax.distributed.initialize; the cluster "
                          "is detected on SLURM, TPU pods, MPI, or given by the next three)")
  train.add_argument("--coordinator", metavar="HOST:PORT", help="the coordinator's address")
  train.add_argument("--num-processes", type=_int_at_least(1), help="processes in the run")
  train.add_argument("--process-id", type=_int_at_least(0), help="this process's index")
  train.add_argument("--profile", metavar="DIR",
                     help="write a jax.profiler trace of the first chunk of steps to DIR")
  train.add_argument("--checkpoint-every", type=_int_at_least(1), metavar="N",
                     help="save the training state (orbax) every N steps and at the end")
  train.add_argument("--resume", metavar="DIR",
                     help="continue the run in DIR from its latest checkpoint up to --steps")
  train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  sweep = commands.add_parser(
      "sweep", help="train every combination of hyperparameter values x seeds in one program",
      description="Sweep hyperparameters (every combination of the listed values) and seeds "
                  "in one jit; write a table (sweep.csv, sweep.json) and a plot (sweep.png).")
  _add_run_options(sweep, sweep=True)
  sweep.add_argument("--devices", type=_int_at_least(1),
                     help="local devices to spread the runs over (default: all)")
  return parser


def _config(args, preset, *, exclude=()):
  overrides = {
      "num_steps": args.steps, "num_envs": args.num_envs,
      "rollout_length": args.rollout_length, "max_grad_norm": args.max_grad_norm,
      "baseline": args.baseline,
      **{field: getattr(args, field) for _, field, _, _ in _SWEEPABLE_OPTIONS},
  }
  algo = args.algo or preset.default_algo
  return preset.configs[algo].replace(
      **{k: v for k, v in overrides.items() if v is not None and k not in exclude})


def _stored_run(args) -> tuple[TrainConfig, int, int, int | None]:
  """The config, seed, seed count and checkpoint interval of the run in `--resume DIR`."""
  import json

  from reinforce_jax.checkpoints import latest_step

  folder = pathlib.Path(args.resume)
  try:
    stored = json.loads((folder / "config.json").read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"--resume {args.resume}: no readable config.json ({e})") from None
  if stored.get("env") != args.env:
    raise ValueError(f"--resume {args.resume} holds a {stored.get('env')!r} run, not {args.env!r}")
  if latest_step(folder / "checkpoints") is None:
    raise ValueError(f"--resume {args.resume}: no complete checkpoint in {folder / 'checkpoints'}")
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  config = TrainConfig(**{k: v for k, v in stored.items() if k in fields})
  if args.steps is not None:
    config = config.replace(num_steps=args.steps)
  return config, stored["seed"], stored["num_seeds"], stored.get("checkpoint_every")


def _sweep(args, parser) -> int:
  grid = {field: getattr(args, field) for _, field, _, _ in _SWEEPABLE_OPTIONS
          if getattr(args, field) is not None}
  if not grid:
    parser.error("nothing to sweep: give comma-separated values to at least one of "
                 + ", ".join(flag for flag, *_ in _SWEEPABLE_OPTIONS))
  try:
    config = _config(args, PRESETS[args.env], exclude=grid)
    sweep_grid(config, grid)
  except ValueError as e:
    parser.error(str(e))
  import jax  # imported after the cheap argument checks

  from reinforce_jax.sweep import run_sweep

  if args.devices is not None and args.devices > jax.local_device_count():
    parser.error(f"--devices {args.devices}: only {jax.local_device_count()} device(s)")
  out = args.out or f"runs/{args.env}-sweep"
  result = run_sweep(args.env, config, grid, seed=args.seed, num_seeds=args.num_seeds,
                     devices=args.devices, out_dir=out)
  axes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
  print(f"{args.env} {config.algo}: {result['runs']} runs ({axes} x {args.num_seeds} seeds) "
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


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from reinforce_jax.compiler import avoid_cpu_deadlock

  avoid_cpu_deadlock()  # before the first computation (see reinforce_jax/compiler.py)
  if args.command == "sweep":
    return _sweep(args, parser)
  preset = PRESETS[args.env]
  seed, num_seeds, checkpoint_every = args.seed, args.num_seeds, args.checkpoint_every
  if args.distributed or args.coordinator:
    # Before anything touches a JAX backend (reading a checkpoint to resume does).
    from reinforce_jax.distributed import initialize
    initialize(args.coordinator, args.num_processes, args.process_id)
  try:
    if args.resume:
      config, seed, num_seeds, stored_every = _stored_run(args)
      checkpoint_every = checkpoint_every or stored_every
    else:
      config = _config(args, preset)
  except ValueError as e:
    parser.error(str(e))
  out = args.resume or args.out or f"runs/{args.env}"
  try:
    pathlib.Path(out).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    parser.error(f"cannot create output folder {out!r}: {e.strerror}")

  import jax  # imported after the cheap argument checks

  from reinforce_jax.experiment import run_experiment

  devices = args.devices or jax.device_count()
  if devices > jax.device_count():
    parser.error(f"--devices {devices}: only {jax.device_count()} device(s)")
  if config.num_envs % devices:
    parser.error(f"--num-envs {config.num_envs} must be divisible by --devices {devices}")

  from reinforce_jax.checkpoints import CheckpointError

  try:
    result = run_experiment(args.env, config, seed=seed, num_seeds=num_seeds,
                            out_dir=out, progress=not args.no_progress,
                            stop_at_return=args.stop_at_return, devices=devices,
                            profile_dir=args.profile, checkpoint_every=checkpoint_every,
                            resume=bool(args.resume))
  except CheckpointError as e:
    parser.error(str(e))
  returns = [r for r in result.final_mean_return if r is not None]
  print(f"{result.env} {config.algo}: {result.status} {result.steps_done} steps x "
        f"{config.num_envs} envs x "
        f"{config.rollout_length} env steps, {result.num_seeds} seed(s), "
        f"{result.wall_time_s:.1f} s (compile {result.compile_time_s:.1f} s)")
  if returns:
    print(f"  final mean return: {sum(returns) / len(returns):.4g} "
          f"(per seed: {', '.join(f'{r:.4g}' for r in returns)})")
  if result.expected_reward is not None:
    print("  exact expected reward of the learned policy: "
          + ", ".join(f"{r:.4f}" for r in result.expected_reward))
  if result.solved_at_step is not None:
    print(f"  every seed reached {args.stop_at_return:g} at step {result.solved_at_step}, "
          f"{result.solved_after_s:.1f} s after the start (compile included)")
  if result.files:
    print(f"  outputs in {result.out_dir}/: {', '.join(result.files)}")
  else:
    print(f"  process {jax.process_index()}: trained; process 0 writes the outputs")
  return {"completed": 0, "solved": 0, "non-finite": 1, "interrupted": 130}[result.status]


if __name__ == "__main__":
  sys.exit(main())
