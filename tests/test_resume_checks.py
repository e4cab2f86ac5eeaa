"""What `reinforce-jax train ... --resume RUN` reads is checked: config.json as the options
check the same values, metrics.jsonl row by row, and the checkpoints (corrupt ones named as
such, with an intact older step offered); a checkpoint that cannot be written ends the run
with one line, at once. Each refusal is exit status 2 and one line on stderr."""

import errno
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from reinforce_jax import cli
from reinforce_jax.cli import parsing

STEPS = ["--steps", "40", "--no-progress"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
  """A 30-step bandit run with checkpoints of steps 20 and 30 (the last two kept)."""
  out = tmp_path_factory.mktemp("stored") / "run"
  assert cli.main(["train", "bandit", "--steps", "30", "--checkpoint-every", "10",
                   "--num-envs", "16", "--no-progress", "--out", str(out)]) == 0
  assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["20", "30"]
  return out


@pytest.fixture
def run(stored, tmp_path):
  """A copy of the stored run to tamper with."""
  return shutil.copytree(stored, tmp_path / "run")


def _refused(capsys, argv) -> str:
  """The one line of a refused command (exit status 2, no traceback)."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  err = capsys.readouterr().err
  assert info.value.code == 2, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  return err.strip()


def _resume_refused(capsys, run, env="bandit") -> str:
  return _refused(capsys, ["train", env, *STEPS, "--resume", str(run)])


def _edit_config(run, **changes) -> None:
  config = json.loads((run / "config.json").read_text())
  (run / "config.json").write_text(json.dumps({**config, **changes}))


# --- config.json ----------------------------------------------------------------------


@pytest.mark.parametrize("field, value, fragment", [
    ("seed", -1, "seed is -1, but --seed must be >= 0"),
    ("seed", 1e14, "seed is 100000000000000.0, but --seed must be an integer"),
    ("seed", 10**14, "seed is 100000000000000, but --seed must be <= 4294967295"),
    ("num_seeds", True, "num_seeds is true, but --num-seeds must be an integer"),
    ("checkpoint_every", "x", 'checkpoint_every is "x", but --checkpoint-every must be an '
                              "integer or null"),
    ("checkpoint_every", 0, "checkpoint_every is 0, but --checkpoint-every must be >= 1"),
    ("stop_at_return", "nan", 'stop_at_return is "nan", but --stop-at-return must be a number'),
    ("stop_at_return", math.nan, "stop_at_return is NaN, but --stop-at-return must be finite"),
    ("num_envs", "16", 'num_envs is "16", but --num-envs must be an integer'),
    ("num_envs", 2**40, "num_envs is 1099511627776, but --num-envs must be <= 2147483647"),
    ("num_steps", -1, "num_steps is -1, but --steps must be >= 0"),
    ("learning_rate", 1e300, "learning_rate is 1e+300, but --lr must be finite and positive "
                             "(in float32)"),
    ("gamma", 1.5, "gamma is 1.5, but --gamma must be in [0, 1]"),
    ("max_grad_norm", -1, "max_grad_norm is -1, but --max-grad-norm must be finite and "
                          "positive or null"),
    ("num_epochs", 0, "num_epochs is 0, but --num-epochs must be >= 1"),  # old records' field
    ("algo", "sarsa", 'algo is "sarsa", but --algo must be one of reinforce, a2c, ppo'),
    ("baseline", None, "baseline is null, but --baseline must be one of none,"),
    ("normalize_advantages", 1, "normalize_advantages is 1, but --normalize-advantages must be "
                                "true or false"),
    ("anneal_lr", "no", 'anneal_lr is "no", but it must be true or false'),
    ("hidden", [0], "hidden is [0], but it must be a list of positive integers"),
    ("env", 3, "env is 3, but it must be one of bandit,"),
])
def test_each_config_field_is_checked_as_its_option_checks_it(run, capsys, field, value,
                                                              fragment):
  _edit_config(run, **{field: value})
  before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
  line = _resume_refused(capsys, run)
  assert f"{run / 'config.json'} holds an invalid config: {fragment}" in line, line
  assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_unknown_fields_and_another_policy_are_refused(run, capsys):
  _edit_config(run, extra=1)
  line = _resume_refused(capsys, run)
  assert f"{run / 'config.json'} holds an unknown field extra (= 1)" in line, line
  _edit_config(run, extra=None)  # still there, as null
  assert "unknown field extra (= null)" in _resume_refused(capsys, run)
  config = json.loads((run / "config.json").read_text())
  del config["extra"]
  (run / "config.json").write_text(json.dumps({**config, "options": {"group_size": 2}}))
  assert "unknown field options" in _resume_refused(capsys, run)  # a sort task's, not bandit's
  (run / "config.json").write_text(json.dumps({**config, "hidden": [8]}))
  line = _resume_refused(capsys, run)
  assert "holds hidden [8], but the bandit policy's hidden layers are []" in line, line


def test_a_record_with_the_fields_of_older_versions_still_resumes(run):
  """Records from before `clip_value` and `anneal_lr` existed lack them; records from before
  hyperparameters were declared per algorithm hold every algorithm's (valid) settings."""
  config = json.loads((run / "config.json").read_text())
  del config["anneal_lr"]
  (run / "config.json").write_text(json.dumps({**config, "gae_lambda": 0.95, "clip_eps": 0.2,
                                               "num_epochs": 4, "clip_value": True}))
  assert cli.main(["train", "bandit", *STEPS, "--resume", str(run)]) == 0
  assert json.loads((run / "summary.json").read_text())["steps_done"] == 40


# JSON values, and the argument text each is as an option.
_PROBES = [-1, 0, 1, 2, 0.5, 1e-50, 3e38, 1e39, 1e300, 2**31, 2**32, math.nan, math.inf, "x",
           "ppo", "rloo", "token_mean", "ema"]


def _accepted_by_the_parser(flag: str, text: str, env: str) -> bool:
  try:
    parsing.build_parser().parse_args(["train", env, flag, text])
  except SystemExit:
    return False
  return True


def _accepted_in_the_record(setting, value) -> bool:
  try:
    setting.value.read(value)
  except ValueError:
    return False
  return True


def test_the_record_takes_exactly_the_values_the_options_take(capsys):
  """One schema: for every field with an option, a value is valid in config.json if and only
  if the option takes it (null aside: the option not given)."""
  checked = 0
  for settings, env in ((parsing.CONFIG_SETTINGS, "bandit"), (parsing.SEQUENCE_SETTINGS, "sort")):
    for setting in settings.values():
      if setting.flag is None or isinstance(setting.value, parsing._Bool):
        continue
      for value in _PROBES:
        text = value if isinstance(value, str) else str(value)
        assert _accepted_by_the_parser(setting.flag, text, env) == _accepted_in_the_record(
            setting, value), (setting.name, value)
        checked += 1
  capsys.readouterr()
  assert checked == len(_PROBES) * 24  # 20 run settings and 4 of the sort task


def _sort_record(run) -> None:
  """`run`'s record turned into a sort task's (as `train sort` writes it)."""
  config = json.loads((run / "config.json").read_text())
  (run / "config.json").write_text(json.dumps({
      **config, "env": "sort", "hidden": [64, 64],
      "options": {"estimator": "rloo", "group_size": 8, "aggregation": "sequence_sum",
                  "kl_coef": 0.0}}))


@pytest.mark.parametrize("option, value, fragment", [
    ("group_size", "x", 'options.group_size is "x", but --group-size must be an integer'),
    ("group_size", 0, "options.group_size is 0, but --group-size must be >= 1"),
    ("estimator", 3, "options.estimator is 3, but --estimator must be one of rloo,"),
    ("aggregation", "mean", 'options.aggregation is "mean", but --aggregation must be one of'),
    ("kl_coef", -1, "options.kl_coef is -1, but --kl-coef must be in [0, inf)"),
    ("kl_coef", "0", 'options.kl_coef is "0", but --kl-coef must be a number'),
])
def test_sort_options_are_checked_as_their_flags_check_them(run, capsys, option, value,
                                                             fragment):
  _sort_record(run)
  config = json.loads((run / "config.json").read_text())
  config["options"][option] = value
  (run / "config.json").write_text(json.dumps(config))
  line = _resume_refused(capsys, run, env="sort")
  assert f"{run / 'config.json'} holds an invalid config: {fragment}" in line, line


def test_sort_options_must_be_an_object_of_known_settings(run, capsys):
  _sort_record(run)
  config = json.loads((run / "config.json").read_text())
  for options, fragment in [([1], "options is [1], not a JSON object"),
                            ({**config["options"], "temperature": 1.0},
                             "unknown field options.temperature (= 1.0)")]:
    (run / "config.json").write_text(json.dumps({**config, "options": options}))
    assert fragment in _resume_refused(capsys, run, env="sort")
  (run / "config.json").write_text(json.dumps(
      {**config, "options": {**config["options"], "group_size": 1}}))
  assert "--group-size 1: --estimator rloo compares" in _resume_refused(capsys, run, env="sort")
  assert "holds a 'sort' run, not 'bandit'" in _resume_refused(capsys, run)  # options and all


@pytest.mark.slow  # a sort run compiles a transformer: ~20 s
def test_a_real_sort_record_resumes_and_a_tampered_one_is_refused(tmp_path, capsys):
  out = tmp_path / "sort"
  assert cli.main(["train", "sort", "--steps", "2", "--num-envs", "2", "--group-size", "2",
                   "--no-progress", "--out", str(out)]) == 0
  intact = (out / "config.json").read_text()
  config = json.loads(intact)
  config["options"]["group_size"] = [2]
  (out / "config.json").write_text(json.dumps(config))
  line = _refused(capsys, ["train", "sort", "--steps", "3", "--no-progress",
                           "--resume", str(out)])
  assert "options.group_size is [2], but --group-size must be an integer" in line, line
  (out / "config.json").write_text(intact)
  assert cli.main(["train", "sort", "--steps", "3", "--no-progress", "--resume", str(out)]) == 0


# --- metrics.jsonl ----------------------------------------------------------------------


@pytest.mark.parametrize("line_number, row, fragment", [
    (5, {"mean_return": [0.5]}, "line 5: 'mean_return' is [0.5], not a number or null"),
    (7, {"seed": 3}, "line 7: seed 3 is not a seed index of this run's 1 seed(s)"),
    (2, {"step": "2"}, 'line 2: step "2" is not an integer >= 1'),
    (3, {"loss": True}, "line 3: 'loss' is true, not a number or null"),
    (4, None, "line 4: [1, 2] is not a JSON object"),
])
def test_a_metrics_row_of_the_wrong_shape_is_named(run, capsys, line_number, row, fragment):
  metrics = run / "metrics.jsonl"
  lines = metrics.read_text().splitlines()
  bad = [1, 2] if row is None else {**json.loads(lines[line_number - 1]), **row}
  lines[line_number - 1] = json.dumps(bad)
  metrics.write_text("\n".join(lines) + "\n")
  line = _resume_refused(capsys, run)
  assert f"{metrics}, {fragment}" in line, line
  assert metrics.read_text() == "\n".join(lines) + "\n"  # left as it was


# --- checkpoints ------------------------------------------------------------------------


def _garble(folder) -> None:
  for path in (folder / "default" / "d").iterdir():
    path.write_bytes(b"garbled")


def _truncate(folder) -> None:
  manifest = folder / "default" / "manifest.ocdbt"
  manifest.write_bytes(manifest.read_bytes()[:10])


def _delete_default(folder) -> None:
  shutil.rmtree(folder / "default")


@pytest.mark.parametrize("damage, why", [
    (_garble, "its metadata cannot be read"),
    (_truncate, "its metadata cannot be read"),
    (_delete_default, "its folder 'default', which holds the state, is missing"),
])
def test_a_corrupt_checkpoint_is_named_and_an_intact_older_one_offered(run, capsys, damage,
                                                                       why):
  newest = run / "checkpoints" / "30"
  damage(newest)
  line = _resume_refused(capsys, run)
  assert f"checkpoint step 30 in {newest} is corrupt ({why}" in line, line
  assert line.endswith(f"step 20 is intact: remove the folder {newest} to resume from it"), line
  for hidden in ("tree structures", "Composite", "Event loop"):
    assert hidden not in line
  shutil.rmtree(newest)  # as the message says: the run resumes from step 20
  assert cli.main(["train", "bandit", *STEPS, "--resume", str(run)]) == 0
  assert json.loads((run / "summary.json").read_text())["steps_done"] == 40


def test_no_intact_checkpoint_is_said_so(run, capsys):
  _delete_default(run / "checkpoints" / "30")
  _garble(run / "checkpoints" / "20")
  line = _resume_refused(capsys, run)
  assert f"checkpoint step 30 in {run / 'checkpoints' / '30'} is corrupt" in line, line
  assert line.endswith("; no older checkpoint is intact"), line


def test_a_mismatched_checkpoint_is_not_called_corrupt(run, capsys):
  _edit_config(run, num_envs=32)  # valid, but not the checkpoint's state
  line = _resume_refused(capsys, run)
  assert "cannot be restored into this run's state ('" in line and "corrupt" not in line, line
  assert "float32" in line or "int32" in line, line


# --- a checkpoint that cannot be written ---------------------------------------------------


def _run_resume(script: str, run, *, prefix=()) -> subprocess.CompletedProcess:
  """Resumes `run` to step 40 in a fresh process after `script`; within 120 s, or fails."""
  code = script + textwrap.dedent(f"""
      from reinforce_jax import cli
      cli.main(["train", "bandit", "--steps", "40", "--no-progress", "--resume", {str(run)!r}])
  """)
  try:
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
  except subprocess.TimeoutExpired:
    pytest.fail("the run did not end after a failed checkpoint write")


def _as_a_user_without_root_powers() -> tuple[str, ...] | None:
  """A command prefix that runs without root's power to write anywhere, or None."""
  if os.geteuid() != 0:
    return ()
  setpriv = shutil.which("setpriv")
  if setpriv is None:
    return None
  prefix = (setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search")
  probe = subprocess.run([*prefix, "true"], capture_output=True)
  return prefix if probe.returncode == 0 else None


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_a_read_only_checkpoints_folder_exits_2_at_once(run):
  prefix = _as_a_user_without_root_powers()
  if prefix is None:
    pytest.skip("root writes into a read-only folder anyway")
  os.chmod(run / "checkpoints", 0o500)
  try:
    done = _run_resume("", run, prefix=prefix)
  finally:
    os.chmod(run / "checkpoints", 0o700)
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.strip().splitlines() == [
      f"reinforce-jax: error: cannot write {run / 'checkpoints' / '40.orbax-checkpoint-tmp'}: "
      "Permission denied"], done.stderr[-3000:]


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_a_failed_checkpoint_write_exits_2_at_once(run):
  """Orbax's own save fails to create its folder (as in a read-only or full file system),
  whoever runs the test."""
  refuse = textwrap.dedent("""
      import errno, os
      makedirs = os.makedirs
      def refuse(path, *args, **kwargs):
        if ".orbax-checkpoint-tmp" in str(path):
          raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return makedirs(path, *args, **kwargs)
      os.makedirs = refuse
  """)
  done = _run_resume(refuse, run)
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.strip().splitlines() == [
      f"reinforce-jax: error: cannot write {run / 'checkpoints' / '40.orbax-checkpoint-tmp'}: "
      "Permission denied"], done.stderr[-3000:]


def test_a_save_that_raises_oserror_exits_2(run, capsys, monkeypatch):
  from reinforce_jax.experiments import checkpoints

  def full(directory, step, state):
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))

  monkeypatch.setattr(checkpoints, "save", full)
  line = _resume_refused(capsys, run)
  assert line == (f"reinforce-jax: error: cannot write {run / 'checkpoints'}: No space left on "
                  "device"), line
