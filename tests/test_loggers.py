"""TensorBoard and W&B loggers: every metric of every step, one series per seed, the config.

The event files are read back with TensorBoard's own reader, and the offline W&B
run with a reader of W&B's transaction log (`run-<id>.wandb`: LevelDB-log
framed `wandb_internal_pb2.Record` protobufs).
"""

import glob
import json
import os
import pathlib
import struct
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

import reinforce_jax as rj
from reinforce_jax import loggers, loop

RATES = (1.0, 2.0)  # seed s returns rate * step at step `step`


class Toy(NamedTuple):
  params: jax.Array  # [] float32, the step count
  step: jax.Array    # [] int32
  rate: jax.Array    # [] float32


def _toy_step(state, key):
  """A train step whose metrics are known: `loss` is the step, `mean_return` rate * step."""
  del key
  step = state.step + 1
  metrics = {"loss": state.params + 1.0, "mean_return": state.rate * step.astype(jnp.float32),
             "num_episodes": jnp.int32(1)}
  return state._replace(params=state.params + 1.0, step=step), metrics


def _run(callbacks, num_steps=10, chunk=4):
  rates = jnp.asarray(RATES, jnp.float32)
  state = Toy(jnp.zeros_like(rates), jnp.zeros(len(RATES), jnp.int32), rates)
  runner = jax.jit(jax.vmap(rj.make_run(_toy_step, chunk), in_axes=(0, 0, None)))
  keys = jax.random.split(jax.random.key(0), len(RATES))
  return loop.run_loop(runner, state, keys, num_steps=num_steps, chunk=chunk,
                       callbacks=callbacks)


def _scalars(run_dir):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(run_dir)
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
          for tag in events.Tags()["scalars"]}


def _hparams(run_dir):
  """The HParams plugin's session-start hyperparameters written in `run_dir`."""
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  from tensorboard.plugins.hparams import plugin_data_pb2

  for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
    for event in EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "hparams":
          data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
          if data.HasField("session_start_info"):
            return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                    for k, v in data.session_start_info.hparams.items()}
  return None


def test_tensorboard_every_step_one_run_per_seed_config_as_hparams(tmp_path):
  pytest.importorskip("tensorboardX")
  pytest.importorskip("tensorboard")
  config = {"learning_rate": 0.01, "algo": "ppo", "hidden": [64, 64], "anneal_lr": False}
  result = _run([loggers.TensorBoardLogger(tmp_path / "tb", hparams=config)])
  assert result.status == "completed"
  assert sorted(os.listdir(tmp_path / "tb")) == ["seed_0", "seed_1"]
  for seed, rate in enumerate(RATES):
    scalars = _scalars(str(tmp_path / "tb" / f"seed_{seed}"))
    assert sorted(scalars) == ["train/loss", "train/mean_return", "train/num_episodes"]
    assert scalars["train/mean_return"] == [(s, rate * s) for s in range(1, 11)]
    assert scalars["train/loss"] == [(s, float(s)) for s in range(1, 11)]
    hparams = _hparams(str(tmp_path / "tb" / f"seed_{seed}"))
    assert hparams == {"learning_rate": pytest.approx(0.01), "algo": "ppo",
                       "hidden": "[64, 64]", "anneal_lr": False, "seed_index": seed}


def test_tensorboard_log_curves_names_runs(tmp_path):
  pytest.importorskip("tensorboardX")
  pytest.importorskip("tensorboard")
  import numpy as np

  logger = loggers.TensorBoardLogger(tmp_path, run_names=["lr_0.1-seed_0", "lr_0.2-seed_0"],
                                     per_run_hparams=[{"learning_rate": 0.1},
                                                      {"learning_rate": 0.2}])
  curves = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]])
  logger.log_curves({"mean_return": curves})
  first = _scalars(str(tmp_path / "lr_0.1-seed_0"))["train/mean_return"]
  assert first == [(1, 1.0), (3, 3.0)]  # the NaN step (no finished episode) is left out
  assert _hparams(str(tmp_path / "lr_0.2-seed_0"))["learning_rate"] == pytest.approx(0.2)


def _wandb_records(path):
  """The protobuf records of a W&B transaction log (`run-<id>.wandb`)."""
  from wandb.proto import wandb_internal_pb2

  data = pathlib.Path(path).read_bytes()
  ident, magic, _ = struct.unpack("<4sHB", data[:7])
  assert (ident, magic) == (b":W&B", 0xBEE1)
  block, pos, pending = 32768, 7, b""
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if kind == 0:
      break
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # FULL or LAST: a whole record
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      pending = b""
      yield record


def read_wandb_run(out_dir):
  """`(run folder, config, {step: {key: value}})` of the one offline run in `out_dir/wandb/`."""
  (folder,) = glob.glob(os.path.join(str(out_dir), "wandb", "offline-run-*"))
  (log,) = glob.glob(os.path.join(folder, "run-*.wandb"))
  # `run.finish()` can return before W&B's service has flushed the log: wait for its
  # exit record.
  for _ in range(200):
    records = list(_wandb_records(log))
    if records and records[-1].WhichOneof("record_type") == "exit":
      break
    time.sleep(0.05)
  config, history = {}, {}
  for record in records:
    kind = record.WhichOneof("record_type")
    if kind == "run":
      config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
    elif kind == "config":
      config.update({u.key: json.loads(u.value_json) for u in record.config.update})
    elif kind == "history":
      row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
             for i in record.history.item}
      history[row["_step"]] = {k: v for k, v in row.items() if not k.startswith("_")}
  config.pop("_wandb", None)
  return folder, config, history


def test_wandb_offline_run_holds_every_step_per_seed(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  result = _run([loggers.WandbLogger(tmp_path, config={"learning_rate": 0.01, "algo": "ppo"})])
  assert result.status == "completed"
  _, config, history = read_wandb_run(tmp_path)
  assert config == {"learning_rate": 0.01, "algo": "ppo"}
  assert sorted(history) == list(range(1, 11))
  for step, row in history.items():
    assert row == {f"seed_{s}/{name}": value for s, rate in enumerate(RATES)
                   for name, value in (("loss", step), ("mean_return", rate * step),
                                       ("num_episodes", 1))}


def test_missing_extra_names_it(monkeypatch):
  import importlib.util

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else real(name, *a))
  assert loggers.missing_extra("wandb") == (
      "--log wandb needs wandb: pip install 'reinforce_jax[wandb]'")
  with pytest.raises(loggers.MissingExtraError, match=r"reinforce_jax\[wandb\]"):
    loggers.WandbLogger("unused")


def _cli_log_run(tmp_path, monkeypatch, argv):
  pytest.importorskip("tensorboardX")
  pytest.importorskip("tensorboard")
  pytest.importorskip("wandb")
  from reinforce_jax import cli

  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  out = tmp_path / "run"
  assert cli.main([*argv, "--out", str(out), "--log", "tensorboard", "--log", "wandb"]) == 0
  return out


def test_cli_train_logs_to_both(tmp_path, monkeypatch):
  out = _cli_log_run(tmp_path, monkeypatch, ["train", "bandit", "--steps", "5", "--num-envs",
                                             "8", "--num-seeds", "2", "--no-progress"])
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 10  # metrics.jsonl is written as without --log
  for seed in (0, 1):
    scalars = _scalars(str(out / "tensorboard" / f"seed_{seed}"))
    want = [(r["step"], r["loss"]) for r in rows if r["seed"] == seed]
    assert [(s, pytest.approx(v)) for s, v in scalars["train/loss"]] == want
    assert {f"train/{k}" for k in rows[0] if k not in ("step", "seed")} == set(scalars)
    assert _hparams(str(out / "tensorboard" / f"seed_{seed}"))["env"] == "bandit"
  _, config, history = read_wandb_run(out)
  assert config["env"] == "bandit" and config["num_seeds"] == 2 and "learning_rate" in config
  assert sorted(history) == [1, 2, 3, 4, 5]
  for r in rows:
    assert history[r["step"]][f"seed_{r['seed']}/loss"] == pytest.approx(r["loss"])


def test_cli_sweep_logs_one_series_per_run(tmp_path, monkeypatch):
  out = _cli_log_run(tmp_path, monkeypatch, ["sweep", "bandit", "--lr", "0.1,0.3",
                                             "--steps", "4", "--num-envs", "8"])
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["run"], r["learning_rate"]) for r in rows] == [
      (s, r, lr) for s in range(1, 5) for r, lr in enumerate((0.1, 0.3))]
  assert sorted(os.listdir(out / "tensorboard")) == ["learning_rate_0.1-seed_0",
                                                     "learning_rate_0.3-seed_0"]
  scalars = _scalars(str(out / "tensorboard" / "learning_rate_0.3-seed_0"))
  assert [(s, pytest.approx(v)) for s, v in scalars["train/mean_return"]] == [
      (r["step"], r["mean_return"]) for r in rows if r["run"] == 1]
  _, _, history = read_wandb_run(out)
  first = history[4]["learning_rate_0.1-seed_0/mean_return"]
  assert first == pytest.approx(rows[-2]["mean_return"])


@pytest.mark.parametrize("command", [["train", "bandit"], ["sweep", "bandit", "--lr", "0.1"]])
def test_cli_missing_extra_exits_2_before_training(command, tmp_path, monkeypatch, capsys):
  import importlib.util

  from reinforce_jax import cli

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorboardX" else real(name, *a))
  with pytest.raises(SystemExit) as info:
    cli.main([*command, "--log", "tensorboard", "--out", str(tmp_path / "x")])
  err = capsys.readouterr().err
  assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
  assert "pip install 'reinforce_jax[tensorboard]'" in err
  assert not (tmp_path / "x").exists()


def test_cli_wandb_without_credentials_exits_2_before_training(tmp_path, monkeypatch, capsys):
  pytest.importorskip("wandb")
  from reinforce_jax import cli

  for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "bandit", "--log", "wandb", "--out", str(tmp_path / "x")])
  err = capsys.readouterr().err
  assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
  assert "WANDB_MODE=offline" in err and not (tmp_path / "x").exists()
