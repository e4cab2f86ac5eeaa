"""The sequence train step: its state and metrics, make_run's guard, settings, learning."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reinforce_jax as rj
from reinforce_jax import cli, prng
from reinforce_jax.sequence import models, tasks
from reinforce_jax.sequence.train import (
    SequenceConfig,
    SequenceTrainState,
    make_sequence_train_step,
    transformer_policy,
)

TASK = tasks.SortTask(num_digits=3, alphabet=4, num_prompts=8)
MODEL = models.CausalTransformer(TASK.vocab_size, max_len=TASK.prompt_length + 4, d_model=16,
                                 num_heads=2, num_layers=1, mlp_ratio=2)


def _step(config=None, optimizer=None, policy=None):
  config = config or SequenceConfig(max_new_tokens=TASK.max_new_tokens, eos_id=TASK.eos_id,
                                    group_size=4)
  return make_sequence_train_step(TASK.sample_prompts, TASK.reward,
                                  policy or transformer_policy(MODEL),
                                  optimizer or optax.adam(3e-3), config)


@pytest.mark.slow  # ~15 s; make test-slow runs it
def test_the_step_gives_the_numbers_of_jax_keys():
  """The step draws with `prng`'s unrolled keys; JAX's own lowering gives the same step."""
  init_fn, train_step = _step()
  key = jax.random.key(0)
  state = init_fn(key)
  fast_out = jax.jit(train_step)(state, key)
  with prng.disabled():  # a fresh function, so it is traced again
    jax_out = jax.jit(lambda s, k: train_step(s, k))(state, key)
  jax.tree.map(np.testing.assert_array_equal, fast_out, jax_out)


def test_sort_reward():
  prompts = jnp.array([[2, 0, 1, TASK.sep_id]] * 3, jnp.int32)
  completions = jnp.array([[0, 1, 2, TASK.eos_id], [0, 2, 1, TASK.eos_id],
                           [0, TASK.eos_id, TASK.eos_id, TASK.eos_id]], jnp.int32)
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], jnp.float32)
  np.testing.assert_allclose(TASK.reward(prompts, completions, mask), [1.0, 0.5, 0.25])
  with pytest.raises(ValueError, match=r"completions and mask \[N, 4\].*\(3, 3\)"):
    TASK.reward(prompts, completions[:, :3], mask)


@pytest.mark.slow  # ~20 s; make test-slow runs it
def test_state_metrics_and_run_guard():
  init_fn, train_step = _step()
  state = init_fn(jax.random.key(0))
  assert isinstance(state, SequenceTrainState)
  run = jax.jit(rj.make_run(train_step, 4))
  out = run(state, jax.random.key(1), 4)
  assert int(out.steps_done) == 4 and bool(out.finite) and int(out.state.step) == 4
  metrics = out.metrics
  assert {"loss", "mean_return", "mean_length", "kl", "clip_fraction", "entropy",
          "grad_norm", "num_episodes"} <= set(metrics)
  assert all(v.shape == (4,) for v in metrics.values())
  np.testing.assert_array_equal(metrics["num_episodes"], 32)
  assert np.all((metrics["mean_return"] >= 0) & (metrics["mean_return"] <= 1))
  assert np.all((metrics["mean_length"] >= 1) & (metrics["mean_length"] <= 4))
  assert metrics["kl"][0] == pytest.approx(0.0, abs=1e-6)  # the reference is the start
  assert metrics["kl"][-1] > 0 and np.all(metrics["clip_fraction"] == 0)
  # A chunked run is bit-identical to the run in one call (the step is folded into the key).
  half = run(state, jax.random.key(1), 2)
  rest = run(half.state, jax.random.key(1), 2)
  np.testing.assert_array_equal(rest.metrics["loss"][:2], metrics["loss"][2:])
  # Non-finite parameters give a non-finite loss: the guard stops before committing a step.
  broken = state._replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
  stopped = run(broken, jax.random.key(1), 4)
  assert int(stopped.steps_done) == 0 and not bool(stopped.finite)


@pytest.mark.slow  # ~15 s; make test-slow runs it
def test_clipping_and_kl_settings_take_effect():
  config = SequenceConfig(max_new_tokens=TASK.max_new_tokens, eos_id=TASK.eos_id, group_size=4,
                          estimator="grpo", aggregation="token_mean", clip_eps=0.01,
                          num_updates=3, kl_coef=0.1)
  init_fn, train_step = _step(config, optax.sgd(1.0))
  state, metrics = jax.jit(train_step)(init_fn(jax.random.key(0)), jax.random.key(1))
  # Three large steps on one batch move ratios past a 1% clip range.
  assert metrics["clip_fraction"] > 0 and np.isfinite(metrics["loss"])


def test_settings_are_checked():
  with pytest.raises(ValueError, match="estimator must be one of"):
    SequenceConfig(max_new_tokens=4, estimator="ppo")
  with pytest.raises(ValueError, match="group_size must be at least 2"):
    SequenceConfig(max_new_tokens=4, group_size=1)
  with pytest.raises(ValueError, match="aggregation must be one of"):
    SequenceConfig(max_new_tokens=4, aggregation="mean")
  SequenceConfig(max_new_tokens=4, group_size=1, estimator="none")



# --- the command line: `reinforce-jax train sort` ---

def test_preset_names_match_the_losses():
  from reinforce_jax.experiments.presets import SEQUENCE_OPTIONS
  from reinforce_jax.sequence import losses

  assert set(SEQUENCE_OPTIONS["estimator"]) == set(losses.ESTIMATORS)
  assert set(SEQUENCE_OPTIONS["aggregation"]) == set(losses.AGGREGATIONS)


@pytest.mark.parametrize("argv, fragment", [
    (["train", "sort", "--estimator", "ppo"], "--estimator"),
    (["train", "sort", "--aggregation", "mean"], "--aggregation"),
    (["train", "sort", "--kl-coef", "-1"], "--kl-coef"),
    (["train", "sort", "--group-size", "1"], "--group-size 1"),
    (["train", "sort", "--algo", "ppo"], "--algo ppo"),
    (["train", "cartpole", "--estimator", "grpo"], "not of cartpole"),
    (["sweep", "sort", "--lr", "1e-3,3e-3"], "sequence task"),
])
def test_sort_flag_errors_exit_2_before_jax(argv, fragment, capsys, tmp_path):
  with pytest.raises(SystemExit) as info:
    cli.main([*argv, "--out", str(tmp_path / "run")])
  err = capsys.readouterr().err
  assert info.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "run").exists()


@pytest.mark.slow  # ~24 s of CLI runs; make test-slow runs it
def test_train_sort_writes_the_run_and_resumes(tmp_path, capsys):
  out = tmp_path / "sort"
  # One cache: the resumed run loads the first one's compiled program.
  common = ["--no-progress", "--compilation-cache", str(tmp_path / "cache"), "--num-envs", "4"]
  argv = ["train", "sort", "--steps", "2", "--group-size", "2", "--estimator", "grpo",
          "--aggregation", "token_mean", "--kl-coef", "0.01", "--out", str(out), *common]
  assert cli.main(argv) == 0
  stored = json.loads((out / "config.json").read_text())
  assert stored["options"] == {"estimator": "grpo", "group_size": 2,
                               "aggregation": "token_mean", "kl_coef": 0.01}
  assert (out / "learning_curve.png").exists() and (out / "checkpoints").is_dir()
  with pytest.raises(SystemExit):
    cli.main(["train", "sort", "--resume", str(out), "--estimator", "rloo", *common])
  assert "contradicts the run" in capsys.readouterr().err
  assert cli.main(["train", "sort", "--resume", str(out), "--steps", "3", *common]) == 0
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(0 <= r["mean_return"] <= 1 and r["num_episodes"] == 8 for r in rows)
