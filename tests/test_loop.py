"""run_loop: chunks equal one call, the seed-axis convention, stops, checkpoints, callbacks."""

import io
import json
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reinforce_jax as rj
from reinforce_jax import loop
from reinforce_jax.experiments import checkpoints


class Toy(NamedTuple):
  params: jax.Array  # [] float32, the step count (NaN from `bad_step` on)
  step: jax.Array    # [] int32
  rate: jax.Array    # [] float32, each step's return per step done


def _toy_step(bad_step=None):
  """A train step whose metrics are known: step s returns `rate * s` in one episode."""

  def train_step(state, key):
    del key
    step = state.step + 1
    params = state.params + 1.0
    if bad_step is not None:
      params = jnp.where(step >= bad_step, jnp.nan, params)
    metrics = {"loss": params, "mean_return": state.rate * step.astype(jnp.float32),
               "num_episodes": jnp.int32(1)}
    return state._replace(params=params, step=step), metrics

  return train_step


def _toy(rate=1.0):
  return Toy(jnp.float32(0.0), jnp.int32(0), jnp.float32(rate))


def _toy_runner(chunk, *, bad_step=None, seeds=None):
  run = rj.make_run(_toy_step(bad_step), chunk)
  return jax.jit(run if seeds is None else jax.vmap(run, in_axes=(0, 0, None)))


def _seeds(rates):
  state = jax.vmap(_toy)(jnp.asarray(rates, jnp.float32))
  return state, jax.random.split(jax.random.key(0), len(rates))


class Recorder(loop.Callback):
  """Records each hook it sees as `(name, hook, step)`; optionally caps or stops."""

  def __init__(self, name, events, *, cap=None, stop_at=None):
    self.name, self.events, self.cap, self.stop_at = name, events, cap, stop_at
    self.status = f"stopped by {name}"

  def on_start(self, ctx):
    self.events.append((self.name, "on_start", ctx.step))

  def max_chunk(self, ctx):
    self.events.append((self.name, "max_chunk", ctx.step))
    return self.cap

  def before_chunk(self, ctx):
    self.events.append((self.name, "before_chunk", ctx.chunk_steps))

  def after_chunk(self, ctx):
    self.events.append((self.name, "after_chunk", ctx.step))
    return self.stop_at is not None and ctx.step >= self.stop_at

  def on_end(self, ctx):
    self.events.append((self.name, "on_end", ctx.status))


@pytest.fixture(scope="module")
def bandit_step():
  config = rj.TrainConfig(num_envs=8, num_steps=10)
  return rj.make_train_step(rj.envs.ContextualBandit(), rj.policies.CategoricalPolicy(2, hidden=()),
                            optax.adam(0.05), config)


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
@pytest.mark.parametrize("num_seeds", [None, 2])
def test_chunks_equal_one_call_bit_for_bit(bandit_step, num_seeds):
  init_fn, train_step = bandit_step
  if num_seeds is None:
    state, key = init_fn(jax.random.key(0)), jax.random.key(1)
    wrap = jax.jit
  else:
    state = jax.vmap(init_fn)(jax.random.split(jax.random.key(0), num_seeds))
    key = jax.random.split(jax.random.key(1), num_seeds)
    wrap = lambda run: jax.jit(jax.vmap(run, in_axes=(0, 0, None)))  # noqa: E731
  want = wrap(rj.make_run(train_step, 10))(state, key, 10)
  history, events = loop.History(), []
  result = rj.run_loop(wrap(rj.make_run(train_step, 4)), state, key, num_steps=10, chunk=4,
                       callbacks=[history, Recorder("r", events)])
  assert result.status == "completed" and result.step == 10
  assert [n for _, hook, n in events if hook == "before_chunk"] == [4, 4, 2]
  chex.assert_trees_all_equal(result.state, want.state)
  seeds = 1 if num_seeds is None else num_seeds
  assert history.metrics["loss"].shape == (seeds, 10)
  want_metrics = want.metrics if num_seeds else jax.tree.map(lambda m: m[None], want.metrics)
  chex.assert_trees_all_equal(history.metrics, jax.device_get(want_metrics))


def test_one_run_and_seeds_both_get_a_seed_axis():
  seen = []

  class Shapes(loop.Callback):
    def after_chunk(self, ctx):
      out = ctx.output
      seen.append((ctx.num_seeds, ctx.seed_axis, out.metrics["loss"].shape,
                   out.steps_done.shape, out.finite.shape, jnp.shape(ctx.state.step)))

  rj.run_loop(_toy_runner(4), _toy(), jax.random.key(0), num_steps=3, chunk=4,
              callbacks=[Shapes()])
  state, keys = _seeds([1.0, 2.0, 3.0])
  rj.run_loop(_toy_runner(4, seeds=3), state, keys, num_steps=3, chunk=4, callbacks=[Shapes()])
  # Metrics are cut to the steps done (3 of the buffer's 4); the state keeps its own layout.
  assert seen == [(1, False, (1, 3), (1,), (1,), ()), (3, True, (3, 3), (3,), (3,), (3,))]


def test_callbacks_run_in_order_and_max_chunk_caps_the_chunk():
  events = []
  a, b = Recorder("a", events), Recorder("b", events, cap=3)
  result = rj.run_loop(_toy_runner(5), _toy(), jax.random.key(0), num_steps=7, chunk=5,
                       start_step=0, callbacks=[a, b])
  assert result.step == 7 and int(result.state.step) == 7
  chunk = [("a", "max_chunk", 0), ("b", "max_chunk", 0), ("a", "before_chunk", 3),
           ("b", "before_chunk", 3), ("a", "after_chunk", 3), ("b", "after_chunk", 3)]
  assert events[:2] == [("a", "on_start", 0), ("b", "on_start", 0)]
  assert events[2:8] == chunk
  assert [e for e in events if e[1] == "before_chunk"] == [
      ("a", "before_chunk", 3), ("b", "before_chunk", 3)] * 2 + [
      ("a", "before_chunk", 1), ("b", "before_chunk", 1)]
  assert events[-2:] == [("a", "on_end", "completed"), ("b", "on_end", "completed")]


def test_a_stopping_callback_ends_the_loop_with_its_status_after_all_saw_the_chunk():
  events = []
  stopper = Recorder("a", events, stop_at=4)
  result = rj.run_loop(_toy_runner(2), _toy(), jax.random.key(0), num_steps=10, chunk=2,
                       callbacks=[stopper, Recorder("b", events)])
  assert (result.status, result.step, result.stopped_by) == ("stopped by a", 4, stopper)
  assert ("b", "after_chunk", 4) in events and ("b", "after_chunk", 6) not in events


def test_early_stop_waits_for_every_seed():
  # Step s returns rate * s: over the last 3 episodes seed 0 (rate 1) averages s - 1, seed 1
  # (rate 2) 2s - 2. Threshold 10: seed 1 alone is there at step 6, both at step 11.
  state, keys = _seeds([1.0, 2.0])
  early = loop.EarlyStop(10.0, episodes=3)
  result = rj.run_loop(_toy_runner(4, seeds=2), state, keys, num_steps=100, chunk=4,
                       callbacks=[early])
  assert (result.status, result.step, result.stopped_by) == ("solved", 12, early)
  assert early.stopped_at[0] == 12
  np.testing.assert_allclose(early.means(), [11.0, 22.0])
  tracking = loop.EarlyStop(None, episodes=3)
  assert np.isnan(tracking.means(2)).all()  # no chunk yet: NaN per seed
  result = rj.run_loop(_toy_runner(4, seeds=2), state, keys, num_steps=20, chunk=4,
                       callbacks=[tracking])
  assert result.status == "completed" and tracking.stopped_at is None
  np.testing.assert_allclose(tracking.means(), [19.0, 38.0])


def test_non_finite_stops_first_and_keeps_the_last_good_state():
  events = []
  # Step 6 goes NaN; a callback that would stop at step 5 anyway loses to it.
  result = rj.run_loop(_toy_runner(4, bad_step=6), _toy(), jax.random.key(0), num_steps=20,
                       chunk=4, callbacks=[Recorder("a", events, stop_at=5)])
  assert (result.status, result.step) == ("non-finite", 5)
  assert float(result.state.params) == 5.0 and int(result.state.step) == 5
  assert result.output.finite.tolist() == [False] and result.stopped_by is None
  # Seeds: the healthy one ran on within the chunk; every seed's state is its last finite one.
  state, keys = _seeds([1.0, 1.0])
  state = state._replace(step=jnp.array([0, 2], jnp.int32))  # seed 1 meets step 6 first
  result = rj.run_loop(_toy_runner(4, bad_step=6, seeds=2), state, keys, num_steps=20, chunk=4)
  assert (result.status, result.step) == ("non-finite", 3)  # the steps every seed completed
  assert result.output.finite.tolist() == [True, False]
  assert result.state.step.tolist() == [4, 5] and result.state.params.tolist() == [4.0, 3.0]


def test_checkpoints_land_every_n_steps_and_at_the_end(tmp_path, monkeypatch):
  saved, save = [], checkpoints.save
  monkeypatch.setattr(checkpoints, "save", lambda directory, step, state: (
      saved.append(step), save(directory, step, state)))
  events = []
  result = rj.run_loop(_toy_runner(4), _toy(), jax.random.key(0), num_steps=10, chunk=4,
                       callbacks=[loop.Checkpoint(tmp_path, every=3), Recorder("r", events)])
  assert saved == [3, 6, 9, 10]
  assert [n for _, hook, n in events if hook == "before_chunk"] == [3, 3, 3, 1]
  step, restored = checkpoints.restore(tmp_path, _toy())
  assert step == 10
  chex.assert_trees_all_equal(restored, result.state)
  # A resumed run does not write its starting checkpoint again; nothing on an error.
  saved.clear()
  rj.run_loop(_toy_runner(4), restored, jax.random.key(0), num_steps=10, chunk=4,
              start_step=10, callbacks=[loop.Checkpoint(tmp_path, every=3, saved_step=10)])
  assert saved == []

  class Boom(loop.Callback):
    def after_chunk(self, ctx):
      raise RuntimeError("boom")

  with pytest.raises(RuntimeError, match="boom"):
    rj.run_loop(_toy_runner(4), _toy(), jax.random.key(0), num_steps=10, chunk=4,
                callbacks=[loop.Checkpoint(tmp_path / "x"), Boom()])
  assert saved == [] and not (tmp_path / "x").exists()


def test_should_stop_and_ctrl_c_end_the_run_as_interrupted():
  polls = []
  result = rj.run_loop(_toy_runner(2), _toy(), jax.random.key(0), num_steps=10, chunk=2,
                       should_stop=lambda: polls.append(1) or len(polls) >= 2)
  assert (result.status, result.step) == ("interrupted", 4)

  class CtrlC(loop.Callback):
    def after_chunk(self, ctx):
      if ctx.step >= 4:
        raise KeyboardInterrupt

  events = []
  result = rj.run_loop(_toy_runner(2), _toy(), jax.random.key(0), num_steps=10, chunk=2,
                       callbacks=[CtrlC(), Recorder("r", events)])
  assert (result.status, result.step, int(result.state.step)) == ("interrupted", 4, 4)
  assert events[-1] == ("r", "on_end", "interrupted")


def test_ctrl_c_while_a_donating_runner_holds_the_state_propagates():
  donating = jax.jit(rj.make_run(_toy_step(), 2), donate_argnums=0)

  def runner(state, key, n):
    donating(state, key, n)  # the input buffers are gone; the interrupt comes before the result
    raise KeyboardInterrupt

  events = []
  state = jax.tree.map(jnp.array, _toy())  # buffers of its own, safe to donate
  with pytest.raises(KeyboardInterrupt):
    rj.run_loop(runner, state, jax.random.key(0), num_steps=4, chunk=2,
                callbacks=[Recorder("r", events)])
  assert events[-1] == ("r", "on_end", "running")


def test_write_metrics_rows_per_step_and_seed(tmp_path):
  state, keys = _seeds([1.0, 2.0])
  path = tmp_path / "metrics.jsonl"
  rj.run_loop(_toy_runner(2, bad_step=4, seeds=2), state, keys, num_steps=5, chunk=2,
              callbacks=[loop.WriteMetrics(path)])
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [(r["step"], r["seed"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
  assert [r["mean_return"] for r in rows] == [1.0, 2.0, 2.0, 4.0, 3.0, 6.0]
  # An open file is written and flushed, and left open for its owner.
  sink = io.StringIO()
  rj.run_loop(_toy_runner(2), _toy(), jax.random.key(0), num_steps=3, chunk=2,
              callbacks=[loop.WriteMetrics(sink)])
  assert not sink.closed and [json.loads(r)["step"] for r in sink.getvalue().splitlines()] == [
      1, 2, 3]


def test_progress_bar_and_print_metrics(capsys):
  updates = []

  class Bar:
    def __init__(self, **kwargs):
      updates.append(("init", kwargs["total"], kwargs["initial"]))

    def update(self, n):
      updates.append(("update", n))

    def set_postfix(self, postfix):
      updates.append(("postfix", postfix))

    def close(self):
      updates.append(("close",))

  rj.run_loop(_toy_runner(3), _toy(rate=2.0), jax.random.key(0), num_steps=5, chunk=3,
              callbacks=[loop.ProgressBar(tqdm_class=Bar), loop.PrintMetrics()])
  assert updates == [("init", 5, 0), ("update", 3), ("postfix", {"mean_return": "6"}),
                     ("update", 2), ("postfix", {"mean_return": "10"}), ("close",)]
  assert capsys.readouterr().out.splitlines() == ["step 3: loss=3 mean_return=6",
                                                  "step 5: loss=5 mean_return=10"]


def test_bad_arguments_raise():
  runner = _toy_runner(2)
  with pytest.raises(ValueError, match="chunk"):
    rj.run_loop(runner, _toy(), jax.random.key(0), num_steps=4, chunk=0)
  with pytest.raises(ValueError, match="start_step"):
    rj.run_loop(runner, _toy(), jax.random.key(0), num_steps=4, chunk=2, start_step=5)
  with pytest.raises(ValueError, match="max_chunk"):
    rj.run_loop(runner, _toy(), jax.random.key(0), num_steps=4, chunk=2,
                callbacks=[Recorder("r", [], cap=0)])
  with pytest.raises(ValueError, match="every"):
    loop.Checkpoint("unused", every=0)


def test_final_returns_weights_episodes_and_skips_steps_that_finished_none():
  # Seed 0: steps with (return, episodes) (10, 1), (nan, 0), (20, 3), (nan, 0), (40, 1).
  # The last 2 steps that finished any are (20, 3) and (40, 1): (60 + 40) / 4 = 25.
  mean_return = np.array([[10.0, np.nan, 20.0, np.nan, 40.0], [5.0, 5.0, 5.0, 5.0, 7.0]])
  num_episodes = np.array([[1, 0, 3, 0, 1], [2, 2, 2, 2, 2]])
  np.testing.assert_allclose(loop.final_returns(mean_return, num_episodes, last=2), [25.0, 6.0])
  np.testing.assert_allclose(loop.final_returns(mean_return[0], num_episodes[0], last=10),
                             (10 + 60 + 40) / 5)
  assert np.isnan(loop.final_returns(np.zeros(3), np.zeros(3, int), last=1))
  with pytest.raises(ValueError, match="last must be an integer >= 1"):
    loop.final_returns(mean_return, num_episodes, last=0)
  with pytest.raises(ValueError, match=r"\(2, 5\) and \(5,\)"):
    loop.final_returns(mean_return, num_episodes[0], last=1)


def test_bounded_chunks_sizes_each_chunk_from_the_time_per_step_of_the_last():
  bounded = loop.BoundedChunks(1.0, first=1, growth=16.0)
  ctx = loop.LoopContext(num_steps=10**9, start_step=0, chunk=10**6, step=0, state=None,
                         key=None)
  bounded.on_start(ctx)
  sizes = [bounded.max_chunk(ctx)]
  # 1 ms per step: grows 16-fold per chunk until a chunk would take a second.
  for _ in range(3):
    ctx.chunk_steps, ctx.chunk_seconds = sizes[-1], sizes[-1] * 1e-3
    bounded.after_chunk(ctx)
    sizes.append(bounded.max_chunk(ctx))
  assert sizes == [1, 16, 256, 1000]
  # The steps slow down to 10 ms: the next chunk shrinks at once.
  ctx.chunk_steps, ctx.chunk_seconds = 1000, 10.0
  bounded.after_chunk(ctx)
  assert bounded.max_chunk(ctx) == 100
  # A step slower than the budget still runs, one at a time; an instant one is capped.
  ctx.chunk_steps, ctx.chunk_seconds = 100, 500.0
  bounded.after_chunk(ctx)
  assert bounded.max_chunk(ctx) == 1
  ctx.chunk_steps, ctx.chunk_seconds = 1, 0.0
  bounded.after_chunk(ctx)
  assert bounded.max_chunk(ctx) == 16
  for bad in ({"seconds": 0.0}, {"seconds": float("inf")}, {"first": 0}, {"growth": 0.5}):
    with pytest.raises(ValueError, match=next(iter(bad))):
      loop.BoundedChunks(**{"seconds": 1.0, **bad})


def test_bounded_chunks_keep_the_run_bit_identical():
  events = []
  chunked = rj.run_loop(_toy_runner(64), _toy(), jax.random.key(0), num_steps=200, chunk=64,
                        callbacks=[loop.BoundedChunks(1e-9, first=3), Recorder("r", events)])
  whole = rj.run_loop(_toy_runner(200), _toy(), jax.random.key(0), num_steps=200, chunk=200)
  chex.assert_trees_all_equal(chunked.state, whole.state)
  sizes = [n for _, hook, n in events if hook == "before_chunk"]
  assert sizes[0] == 3 and set(sizes[1:-1]) == {1} and sum(sizes) == 200  # a tiny budget


@pytest.mark.parametrize(("every_seconds", "expected"), [(1e-9, [1, 2, 3]), (1e9, [3])])
def test_checkpoints_also_land_on_a_timer(tmp_path, monkeypatch, every_seconds, expected):
  saved = []
  monkeypatch.setattr(checkpoints, "save", lambda directory, step, state: saved.append(step))
  rj.run_loop(_toy_runner(1), _toy(), jax.random.key(0), num_steps=3, chunk=1,
              callbacks=[loop.Checkpoint(tmp_path, every_seconds=every_seconds)])
  assert saved == expected
  with pytest.raises(ValueError, match="every_seconds"):
    loop.Checkpoint(tmp_path, every_seconds=float("nan"))
