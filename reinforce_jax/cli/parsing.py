"""The `reinforce-jax` argument parser, its value checks, and the run config it asks for.

Everything here is free of JAX: a bad argument is reported in milliseconds, as one
line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from reinforce_jax.experiments.checkpoints import CONFIG_FILE
from reinforce_jax.experiments.presets import PRESETS, SEQUENCE_OPTIONS, Preset
from reinforce_jax.rl import hparams
from reinforce_jax.rl.config import ALGOS, BASELINE_KINDS, RUN_RANGES, TrainConfig

__all__ = ["build_parser"]

_INT32_MAX = 2**31 - 1  # step counters and array sizes are int32 in the compiled program
_UINT32_MAX = 2**32 - 1  # jax.random.key keeps 32 bits of the seed (without jax_enable_x64)
PROGRESS_CHUNKS = 50  # a run is trained in this many jitted chunks between progress updates

# `--log` backends: the module each needs and the extra that installs it
# (`reinforce_jax.experiments.loggers.BACKENDS`, repeated here because that module imports JAX).
LOG_EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}


class Parser(argparse.ArgumentParser):
  """Reports a usage error as one line and exits with status 2."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


# --- Values: how a setting is read from an argument and from config.json -------------
# Each kind of value has one `problem` (its type and range); `parse` (argparse's `type`, for
# an argument's text) and `read` (for a JSON value of a run's config.json) both end in it,
# so a resumed run's record passes exactly what the command line would take.


class _Value:
  """A setting's type and range."""

  def problem(self, value: Any) -> str | None:
    """What is wrong with `value` (of the right Python type), as `must be ...`; or None."""
    del value
    return None

  def parse(self, text: str) -> Any:
    """The value of an argument's `text`; raises `argparse.ArgumentTypeError`."""
    raise NotImplementedError

  def read(self, value: Any) -> Any:
    """`value` as read from JSON, if valid; raises `ValueError` with what it must be."""
    raise NotImplementedError


class _Int(_Value):
  def __init__(self, minimum: int, maximum: int = _INT32_MAX):
    self.minimum, self.maximum = minimum, maximum

  def problem(self, value: int) -> str | None:
    if value < self.minimum:
      return f"must be >= {self.minimum}"
    if value > self.maximum:
      return f"must be <= {self.maximum}"
    return None

  def parse(self, text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    problem = self.problem(value)
    if problem:
      raise argparse.ArgumentTypeError(f"{problem}, got {value}")
    return value

  def read(self, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
      raise ValueError("must be an integer")
    problem = self.problem(value)
    if problem:
      raise ValueError(problem)
    return value


def _float32(value: float) -> float:
  """`value` rounded to float32 (what the compiled program sees): inf when out of range."""
  try:
    return struct.unpack("f", struct.pack("f", value))[0]
  except OverflowError:
    return math.copysign(math.inf, value)


class _Float(_Value):
  """A float; `valid` sees the value as given and rounded to float32 (1e300 is not finite
  in float32, the dtype training uses)."""

  def __init__(self, valid: Callable[[float], bool], requirement: str):
    self.valid, self.requirement = valid, requirement

  def problem(self, value: float) -> str | None:
    if not self.valid(value):
      return f"must be {self.requirement}"
    if not self.valid(_float32(value)):
      return f"must be {self.requirement} (in float32)"
    return None

  def parse(self, text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    problem = self.problem(value)
    if problem:
      raise argparse.ArgumentTypeError(f"{problem}, got {text}")
    return value

  def read(self, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
      raise ValueError("must be a number")
    try:
      as_float = float(value)
    except OverflowError:  # an integer beyond float64
      as_float = math.copysign(math.inf, value)
    problem = self.problem(as_float)
    if problem:
      raise ValueError(problem)
    return value


class _Choice(_Value):
  def __init__(self, choices):
    self.choices = tuple(choices)

  def parse(self, text: str) -> str:
    if text not in self.choices:
      raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                       f"{', '.join(map(repr, self.choices))})")
    return text

  def read(self, value: Any) -> str:
    if not isinstance(value, str) or value not in self.choices:
      raise ValueError(f"must be one of {', '.join(self.choices)}")
    return value


class _Bool(_Value):
  def read(self, value: Any) -> bool:
    if not isinstance(value, bool):
      raise ValueError("must be true or false")
    return value


class _Layers(_Value):
  """Hidden layer sizes (recorded from the preset; no option sets them)."""

  def read(self, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _INT32_MAX
        for v in value):
      raise ValueError("must be a list of positive integers")
    return value


NONE = "none"  # what `--stop-at-return none` and `--compilation-cache none` parse to


class _Optional(_Value):
  """`inner`, or null in config.json (the option not given); with `word`, the argument
  `none` (any case) too, which parses to `NONE`."""

  def __init__(self, inner: _Value, *, word: bool = False):
    self.inner, self.word = inner, word

  def parse(self, text: str) -> Any:
    if self.word and text.strip().lower() == NONE:
      return NONE
    return self.inner.parse(text)

  def read(self, value: Any) -> Any:
    if value is None:
      return None
    try:
      return self.inner.read(value)
    except ValueError as e:
      raise ValueError(f"{e} or null") from None


def _int_in(minimum: int, maximum: int = _INT32_MAX):
  """The argument parser of an integer in [minimum, maximum]."""
  return _Int(minimum, maximum).parse


def _number(valid, requirement: str):
  """The argument parser of a float that `valid` accepts, as given and in float32."""
  return _Float(valid, requirement).parse


def _range_value(where: hparams.Range) -> _Float:
  """The value of a float declared with `where` (`reinforce_jax.rl.hparams.Range`)."""
  return _Float(where.contains, where.describe())


_FINITE = _Float(math.isfinite, "finite")


def _or_none(parse):
  """`parse`, or the word `none` (any case) as `NONE`."""
  def parse_or_none(text: str):
    return NONE if text.strip().lower() == NONE else parse(text)
  return parse_or_none


def _folder(text: str) -> str:
  if not text.strip():
    raise argparse.ArgumentTypeError("expected a folder or 'none', got an empty string")
  return text


def _path(text: str) -> str:
  if not text.strip():
    raise argparse.ArgumentTypeError("expected a path, got an empty string")
  return text


def _address(text: str) -> str:
  host, _, port = text.rpartition(":")
  if not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
    raise argparse.ArgumentTypeError(f"expected HOST:PORT (a port in 1..65535), got {text!r}")
  return text


def _list_of(parse):
  def parse_list(text: str) -> list[float]:
    return [parse(part) for part in text.split(",")]
  return parse_list


# --- The schema: every field of a run's config.json and the option that sets it ------


class Setting(NamedTuple):
  """A field of a run's `config.json` and the command-line option that sets it."""

  name: str  # the key in config.json (`TrainConfig`'s keyword), the option's dest
  flag: str | None  # the option (None: no option sets it; recorded for the record's sake)
  value: _Value  # its type and range, for the option's text and for config.json alike
  help: str = ""


class _Option(NamedTuple):
  """A command-line flag for a field of the config."""

  flag: str
  field: str  # the flat name (`TrainConfig`'s keyword, the key in config.json)
  parse: Callable[[str], Any] | None  # None: a bool flag (--x / --no-x)
  help: str


def _flag(name: str) -> str:
  return "--lr" if name == "learning_rate" else "--" + name.replace("_", "-")


def _users(name: str) -> str:
  """`; for ...`: the algorithms (and REINFORCE baselines) that have the setting `name`,
  unless every algorithm has it."""
  algos = [algo for algo, cls in hparams.ALGORITHMS.items()
           if name in hparams.hparam_ranges(cls) or name in hparams.static_fields(cls)]
  if len(algos) == len(hparams.ALGORITHMS):
    return ""
  algos += [f"reinforce --baseline {kind}" for kind, cls in hparams.BASELINES.items()
            if cls is not None and name in hparams.hparam_ranges(cls)]
  return f"; for {', '.join(algos)}"


def _help(text: str, name: str) -> str:
  return (text + _users(name)).replace("%", "%%")  # argparse formats help with %


def _float_settings() -> tuple[Setting, ...]:
  """A setting per sweepable float: the learning rate and every declared hyperparameter."""
  ranges = {"learning_rate": RUN_RANGES["learning_rate"], **hparams.all_hparam_ranges()}
  return tuple(Setting(name, _flag(name), _range_value(where),
                       where.help if name == "learning_rate" else _help(where.help, name))
               for name, where in ranges.items())


def _static_settings() -> tuple[Setting, ...]:
  """A setting per structural int or bool of an algorithm (PPO's epochs, minibatches...)."""
  fields = {}
  for cls in hparams.ALGORITHMS.values():
    fields.update(hparams.static_fields(cls))
  settings = []
  for name, field in fields.items():
    text = _help(hparams.static_help(field), name)
    if isinstance(field.default, bool):
      settings.append(Setting(name, _flag(name), _Bool(), text))
    elif isinstance(field.default, int):  # the declared ints count things: at least 1
      settings.append(Setting(name, _flag(name), _Int(1), text))
  return tuple(settings)


_FLOATS, _STATICS = _float_settings(), _static_settings()
# Every field of a run's config.json (a sequence task's settings are under "options":
# `SEQUENCE_SETTINGS`), in the order `TrainConfig.to_dict` and the run write them.
CONFIG_SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("env", None, _Choice(sorted(PRESETS))),  # the positional ENV
    Setting("seed", "--seed", _Int(0, _UINT32_MAX),
            f"random seed in [0, {_UINT32_MAX}] (default 0)"),
    Setting("num_seeds", "--num-seeds", _Int(1),
            "independent runs trained together in one program (default 1)"),
    Setting("stop_at_return", "--stop-at-return", _Optional(_FINITE, word=True),
            "stop once every seed's last 100 episodes average >= R (default: the preset's "
            "solved threshold, 475 for cartpole, none for the others; 'none' trains every "
            "step)"),
    Setting("checkpoint_every", "--checkpoint-every", _Optional(_Int(1)),
            "also save the training state every N steps (it is always saved when the run "
            "ends, Ctrl-C included)"),
    Setting("hidden", None, _Layers()),
    Setting("num_envs", "--num-envs", _Int(1), "parallel environments"),
    Setting("rollout_length", "--rollout-length", _Int(1),
            "environment steps per environment per train step"),
    Setting("num_steps", "--steps", _Int(0), "train steps"),
    _FLOATS[0],  # learning_rate
    Setting("max_grad_norm", "--max-grad-norm",
            _Optional(_range_value(RUN_RANGES["max_grad_norm"])), "clip the gradient norm"),
    Setting("anneal_lr", None, _Bool()),  # each preset's own (cartpole's ppo anneals)
    Setting("normalize_observations", None, _Bool()),  # the Python API's; presets: off
    Setting("algo", "--algo", _Choice(ALGOS), "reinforce, a2c or ppo (default: the preset's)"),
    Setting("baseline", "--baseline", _Choice(BASELINE_KINDS), "REINFORCE's baseline"),
    *_FLOATS[1:], *_STATICS)}
SEQUENCE_SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("estimator", "--estimator", _Choice(SEQUENCE_OPTIONS["estimator"]),
            "group advantage (default rloo: unbiased)"),
    Setting("group_size", "--group-size", _Int(1),
            "completions sampled per prompt (default 8)"),
    Setting("aggregation", "--aggregation", _Choice(SEQUENCE_OPTIONS["aggregation"]),
            "how token terms are summed (default sequence_sum: unbiased)"),
    Setting("kl_coef", "--kl-coef", _Float(lambda v: 0 <= v < math.inf, "in [0, inf)"),
            "weight of the k3 KL estimate to the initial policy (default 0)"),
)}


def _option(setting: Setting) -> _Option:
  parse = None if isinstance(setting.value, _Bool) else setting.value.parse
  return _Option(setting.flag, setting.name, parse, setting.help)


# Floats take one value in `train` and a comma-separated list in `sweep`; structural
# settings take one value in both (they shape the compiled program).
SWEEPABLE_OPTIONS = tuple(map(_option, _FLOATS))
STATIC_OPTIONS = tuple(map(_option, _STATICS))
# The options of a run's config, as (flag, key in config.json): `--resume` refuses
# any of them with another value than the stored run's.
RUN_OPTIONS = tuple((s.flag, s.name) for s in CONFIG_SETTINGS.values() if s.flag is not None
                    and s.name not in ("num_steps", "stop_at_return", "checkpoint_every"))


def _add(command, setting: Setting, *, sweep: bool = False, **extra) -> None:
  """Adds the option of `setting` to `command` (a parser or an argument group)."""
  value = setting.value
  kwargs = {"dest": setting.name, "help": setting.help, **extra}
  if isinstance(value, _Bool):
    kwargs["action"] = argparse.BooleanOptionalAction
  elif isinstance(value, _Choice):
    kwargs["choices"] = list(value.choices)
  elif sweep:
    kwargs.update(type=_list_of(value.parse), metavar="V[,V...]",
                  help=f"{setting.help} (comma-separated values to sweep)")
  else:
    kwargs["type"] = value.parse
  command.add_argument(setting.flag, **kwargs)


def read_record(folder: str | pathlib.Path) -> dict[str, Any]:
  """The `config.json` of the run in `folder`, every field checked as its option checks it.

  Each field of `CONFIG_SETTINGS` (and, for a sequence task's record, of
  `SEQUENCE_SETTINGS` under "options") must hold a value its command-line option
  would take (its type and range; null where the option was not given). Fields are
  not required here (`checks.stored_run` names those a complete record lacks).

  Raises:
    ValueError: no readable JSON object, an unknown field, or a field with an invalid
      value, naming the file, the field and the value.
  """
  path = pathlib.Path(folder) / CONFIG_FILE
  try:
    record = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ValueError(f"no readable {CONFIG_FILE} ({e})") from None
  if not isinstance(record, dict):
    raise ValueError(f"{path} is not a JSON object")
  if "env" in record:  # first: which task's record this is decides its fields
    _check_fields({"env": record["env"]}, CONFIG_SETTINGS, path, "")
  sequence = "env" in record and PRESETS[record["env"]].build_step is not None
  known = {**CONFIG_SETTINGS, **({"options": None} if sequence else {})}
  _check_fields(record, known, path, "")
  if sequence and "options" in record:
    if not isinstance(record["options"], dict):
      raise ValueError(f"{path} holds an invalid config: options is "
                       f"{_shown(record['options'])}, not a JSON object")
    _check_fields(record["options"], SEQUENCE_SETTINGS, path, "options.")
  return record


def _check_fields(record: dict, known: dict[str, Setting | None], path: pathlib.Path,
                  prefix: str) -> None:
  unknown = [key for key in record if key not in known]
  if unknown:
    raise ValueError(f"{path} holds an unknown field {prefix}{unknown[0]} (= "
                     f"{_shown(record[unknown[0]])}): no option sets it; it is not the "
                     "record of a run of this version")
  for key, value in record.items():
    setting = known[key]
    if setting is None:
      continue
    try:
      setting.value.read(value)
    except ValueError as e:
      by = f"{setting.flag} {e}" if setting.flag else f"it {e}"
      raise ValueError(f"{path} holds an invalid config: {prefix}{key} is {_shown(value)}, "
                       f"but {by}") from None


def _shown(value: Any, limit: int = 60) -> str:
  try:
    text = json.dumps(value)
  except (TypeError, ValueError):
    text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _add_run_options(command: argparse.ArgumentParser, *, sweep: bool = False) -> None:
  """Options shared by `train` and `sweep`: the task and its config."""
  command.add_argument("env", choices=sorted(PRESETS), metavar="ENV",
                       help="one of: " + ", ".join(f"{k} ({v.description})"
                                                   for k, v in sorted(PRESETS.items())))
  _add(command, CONFIG_SETTINGS["algo"])
  _add(command, CONFIG_SETTINGS["num_steps"], dest="steps")
  for name in ("num_envs", "rollout_length"):
    _add(command, CONFIG_SETTINGS[name])
  for setting in _FLOATS:
    _add(command, setting, sweep=sweep)
  for setting in _STATICS:
    _add(command, setting)
  for name in ("max_grad_norm", "baseline", "seed", "num_seeds"):
    _add(command, CONFIG_SETTINGS[name])
  command.add_argument("--out", type=_path,
                       help="output folder (default runs/ENV, runs/ENV-sweep); one that "
                            "already holds a run is refused unless --overwrite")
  command.add_argument("--compilation-cache", type=_or_none(_folder), metavar="DIR",
                       help="JAX's persistent compilation cache, so a repeated run skips "
                            "compiling (default: $REINFORCE_JAX_CACHE_DIR, else "
                            "~/.cache/reinforce_jax/xla; 'none' turns it off)")
  command.add_argument("--log", action="append", choices=list(LOG_EXTRAS), default=[],
                       help="also log to TensorBoard (event files in OUT/tensorboard/) or "
                            "Weights & Biases (OUT/wandb/; WANDB_MODE=offline keeps it local); "
                            "repeat for both. metrics.jsonl is always written")
  command.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out: delete its files (checkpoints "
                            "included; other files stay) before writing the new ones")


_SEQUENCE_FLAGS = {name: s.flag for name, s in SEQUENCE_SETTINGS.items()}


def _add_sequence_options(command: argparse.ArgumentParser) -> None:
  """The settings of a sequence task (sort): `reinforce_jax.sequence.train.SequenceConfig`."""
  group = command.add_argument_group("sequence tasks (sort)")
  for setting in SEQUENCE_SETTINGS.values():
    _add(group, setting)


def sequence_options(args, preset: Preset) -> dict[str, Any] | None:
  """A sequence preset's settings: the preset's, a resumed run's, then the flags given.

  Raises:
    ValueError: for a sequence flag on another task, an algorithm the task lacks, a
      resumed run's record with an invalid value, a flag that contradicts the resumed
      run, or a group advantage without a group.
  """
  given = {k: getattr(args, k) for k in _SEQUENCE_FLAGS if getattr(args, k) is not None}
  if preset.build_step is None:
    if given:
      flag = _SEQUENCE_FLAGS[next(iter(given))]
      raise ValueError(f"{flag}: a setting of sequence tasks (sort), not of {args.env}")
    return None
  if args.algo is not None and args.algo not in preset.configs:
    raise ValueError(f"--algo {args.algo}: {args.env} trains with the sequence policy "
                     f"gradient ({', '.join(_SEQUENCE_FLAGS.values())}), algo "
                     f"{'/'.join(preset.configs)}")
  options = dict(preset.options or {})
  if args.resume:
    try:
      stored = read_record(args.resume).get("options", {})
    except ValueError as e:
      raise ValueError(f"--resume {args.resume}: {e}") from None
    for key, value in given.items():
      if key in stored and value != stored[key]:
        raise ValueError(f"{_SEQUENCE_FLAGS[key]} {value} contradicts the run in {args.resume} "
                         f"({key} {stored[key]}); a resumed run keeps its settings")
    options.update(stored)
  options.update(given)
  if options["estimator"] != "none" and options["group_size"] < 2:
    raise ValueError(f"--group-size {options['group_size']}: --estimator "
                     f"{options['estimator']} compares completions within a group; give at "
                     "least 2 (or --estimator none)")
  return options


def build_parser() -> argparse.ArgumentParser:
  parser = Parser(prog="reinforce-jax", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  train = commands.add_parser(
      "train", help="train a policy (REINFORCE, A2C or PPO)",
      description="Train a policy. Defaults come from the preset of ENV and --algo.")
  _add_run_options(train)
  _add(train, CONFIG_SETTINGS["stop_at_return"], metavar="R")
  train.add_argument("--devices", type=_int_in(1),
                     help="local devices to split the environments over (default: all)")
  train.add_argument("--distributed", action="store_true",
                     help="join a multi-process run (jax.distributed.initialize; the cluster "
                          "is detected on SLURM, TPU pods, MPI, or given by the next three)")
  train.add_argument("--coordinator", type=_address, metavar="HOST:PORT",
                     help="the coordinator's address")
  train.add_argument("--num-processes", type=_int_in(1), help="processes in the run")
  train.add_argument("--process-id", type=_int_in(0), help="this process's index")
  train.add_argument("--profile", type=_path, metavar="DIR",
                     help="write a jax.profiler trace of the first chunk of steps to DIR")
  _add(train, CONFIG_SETTINGS["checkpoint_every"], metavar="N")
  train.add_argument("--resume", type=_path, metavar="DIR",
                     help="continue the run in DIR from its latest checkpoint up to --steps; "
                          "options that contradict the stored run are refused")
  train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  _add_sequence_options(train)
  sweep = commands.add_parser(
      "sweep", help="train every combination of hyperparameter values x seeds in one program",
      description="Sweep hyperparameters (every combination of the listed values) and seeds "
                  "in one jit; write a table (sweep.csv, sweep.json) and a plot (sweep.png).")
  _add_run_options(sweep, sweep=True)
  sweep.add_argument("--devices", type=_int_in(1),
                     help="local devices to spread the runs over (default: all)")
  return parser


def run_config(args, preset, *, exclude=()):
  """The preset's config for `--algo` and `--baseline`, with the other options given.

  Raises:
    ValueError: for an option of a setting that this algorithm (and baseline)
      does not have: it would change nothing (`--clip-eps` for REINFORCE).
  """
  config = preset.configs[args.algo or preset.default_algo]
  if args.baseline is not None:
    config = config.replace(baseline=args.baseline)
  check_options_apply(args, config)
  overrides = {"num_steps": args.steps, **{key: getattr(args, key) for _, key in RUN_OPTIONS
                                           if key not in ("algo", "baseline", "seed",
                                                          "num_seeds")}}
  return config.replace(
      **{k: v for k, v in overrides.items() if v is not None and k not in exclude})


def check_options_apply(args, config: TrainConfig, where: str = "") -> None:
  """Raises ValueError naming the first hyperparameter option `config` has no use for."""
  settings = config.to_dict()
  options = (*SWEEPABLE_OPTIONS, *STATIC_OPTIONS)
  for option in options:
    if getattr(args, option.field) is not None and option.field not in settings:
      flags = ", ".join(o.flag for o in options if o.field in settings)
      raise ValueError(f"{option.flag}: {option.field} is not a hyperparameter of "
                       f"{where}{_describe(config)} (its options: {flags})")


def _describe(config: TrainConfig) -> str:
  if config.algo == "reinforce":
    return f"algo='reinforce' with baseline={config.baseline!r}"
  return f"algo={config.algo!r}"


