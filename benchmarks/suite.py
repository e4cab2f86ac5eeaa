"""reinforce_jax's PPO beside rejax's PPO on a standard suite, at rejax's published settings.

Both libraries train on the same gymnax environments (and one Brax task, through
rejax's own adapter: see `make_env`) with rejax's own PPO configurations
(`configs/gymnax/*.yaml`, `benchmark/breakout_1m.yaml` and `configs/brax/hopper.yaml`
of github.com/keraJLi/rejax, transcribed in `CONFIGS` below), the same number of
environment steps, and each library's seeds vmapped in one jitted program.

Ours runs at rejax's settings, not its own defaults: the same batch shape,
epochs, minibatches, learning rate (constant), gamma, GAE lambda, clip range,
entropy and value coefficients; separate actor and critic MLPs of rejax's widths
and activation, every kernel LeCun-normal and every bias zero (plain flax
`nn.Dense`, rejax's networks); advantages standardised per minibatch; the value
loss clipped; a time limit treated as a termination (gymnax's single `done`,
which rejax reads); element-wise gradient clipping (`optax.clip`, rejax's
`max_grad_norm`) before Adam; observations normalised with one running
estimate shared by the batch where rejax's config asks for it. Each such
setting, and every difference that remains, is written into the JSON
(`settings`, `differences`). With `--ours-defaults` a third row trains ours with
the library's own implementation defaults (orthogonal init, truncation
bootstrapped from the value of the final observation, global-norm clipping) at
the same hyperparameters; with `--rejax-networks` one trains rejax's own actor and
critic modules in this library's loop.

Both runs are split into the same chunks of training iterations (rejax's
`train(train_state=...)` continues a state; ours is `make_run` on its train
step, which folds the step count into its key, so the chunks are one run).
Between chunks, outside the timed region, one common evaluator plays each
library's current policy for `--curve-episodes` (64) stochastic episodes per
seed, each library's observation statistics frozen
(`reinforce_jax.rl.evaluation.evaluate`); the last point is the final evaluation, 64 stochastic
episodes per seed. Learning curves are these
evaluation returns against environment steps and against cumulative training
wall time. Training wall time is the sum of the chunks' run times (compile
excluded: every program is compiled ahead of time with `lower().compile()`,
whose time is reported separately); the two libraries' chunks alternate in one
process, so they see the same machine load.

    python benchmarks/suite.py [--scale 1.0] [--envs CartPole-v1,Acrobot-v1] [--seeds 4]
        [--compile-rounds 1] [--merge results/suite-cpu-2core.json]

writes benchmarks/results/suite-<device>.json, .md and .png: per environment the
mean, standard error, worst seed, a one-sided permutation test of "ours' mean is
below rejax's", training and compile time per library, and learning curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import itertools
import json
import math
import pathlib
import subprocess
import time
from collections.abc import Callable
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

from reinforce_jax import envs as rj_envs
from reinforce_jax.envs.wrappers import Wrapper
from reinforce_jax.rl.config import TrainConfig
from reinforce_jax.rl.policies import (
  CategoricalPolicy,
  GaussianPolicy,
  Policy,
  as_policy,
  split_output,
)
from reinforce_jax.rl.train import make_run, make_train_step

REJAX_SOURCE = "github.com/keraJLi/rejax at d751095 (configs/gymnax/*.yaml, benchmark/*.yaml)"

# rejax's PPO configurations, field for field ("env" and "eval_freq" aside, which
# the suite reads as the environment and the evaluation interval).
_CLASSIC = dict(num_envs=5, num_steps=100, num_epochs=5, num_minibatches=5,
                learning_rate=0.00075, max_grad_norm=0.5, total_timesteps=100_000,
                eval_freq=1000, gamma=0.99, gae_lambda=0.95, clip_eps=0.2, ent_coef=0.01,
                vf_coef=0.5)
_BREAKOUT = dict(agent_kwargs={"activation": "tanh"}, num_envs=32, num_steps=32, num_epochs=4,
                 num_minibatches=4, learning_rate=0.00025674088686342003, max_grad_norm=1,
                 total_timesteps=1_000_000, eval_freq=50_000, gamma=0.995, gae_lambda=0.95,
                 clip_eps=0.2, ent_coef=0.01, vf_coef=0.5)
CONFIGS: dict[str, tuple[dict, str]] = {
    "CartPole-v1": ({"agent_kwargs": {"activation": "tanh"}, **_CLASSIC},
                    "configs/gymnax/cartpole.yaml"),
    "Acrobot-v1": ({"agent_kwargs": {"activation": "tanh"}, **_CLASSIC,
                    "normalize_observations": True}, "configs/gymnax/acrobot.yaml"),
    "MountainCar-v0": ({"agent_kwargs": {"activation": "tanh"}, **_CLASSIC, "num_envs": 10,
                        "num_steps": 20, "learning_rate": 2.5e-4, "gae_lambda": 0.98,
                        "ent_coef": 0.0}, "configs/gymnax/mountaincar.yaml"),
    "Pendulum-v1": ({"agent_kwargs": {"activation": "swish"}, "num_envs": 100, "num_steps": 100,
                     "num_epochs": 10, "num_minibatches": 10, "learning_rate": 0.001,
                     "max_grad_norm": 10, "total_timesteps": 150_000, "eval_freq": 2000,
                     "gamma": 0.995, "gae_lambda": 0.95, "clip_eps": 0.2, "ent_coef": 0.0,
                     "vf_coef": 0.5, "normalize_observations": True},
                    "configs/gymnax/pendulum.yaml"),
    "MountainCarContinuous-v0": ({"agent_kwargs": {"activation": "relu"}, "num_envs": 5,
                                  "num_steps": 100, "num_epochs": 10, "num_minibatches": 10,
                                  "learning_rate": 0.0003, "max_grad_norm": 10,
                                  "total_timesteps": 200_000, "eval_freq": 2000, "gamma": 0.9,
                                  "gae_lambda": 0.95, "clip_eps": 0.2, "ent_coef": 0.0,
                                  "vf_coef": 0.5}, "configs/gymnax/continuous_mountaincar.yaml"),
    "Breakout-MinAtar": (_BREAKOUT, "benchmark/breakout_1m.yaml"),
    "Asterix-MinAtar": (_BREAKOUT, "none in rejax: Breakout's (benchmark/breakout_1m.yaml)"),
    "Freeway-MinAtar": (_BREAKOUT, "none in rejax: Breakout's (benchmark/breakout_1m.yaml)"),
}
# rejax has no Brax config for this environment: hopper's PPO (configs/brax/hopper.yaml), at
# 1/20 of its 5,242,880 steps so that the row fits the suite's half hour on a 2-core CPU.
_HOPPER = dict(agent_kwargs={"activation": "tanh"}, num_envs=32, num_steps=32, num_epochs=9,
               num_minibatches=2, learning_rate=0.00025674088686342003, max_grad_norm=1,
               total_timesteps=5_242_880 // 20, eval_freq=32_768, gamma=0.995,
               gae_lambda=0.95, clip_eps=0.2, ent_coef=0.01, vf_coef=0.5,
               normalize_observations=True)
CONFIGS["brax/inverted_double_pendulum"] = (
    _HOPPER, "none in rejax: hopper's (configs/brax/hopper.yaml), total_timesteps / 20")
BRAX_ENVS = ("brax/inverted_double_pendulum",)
DEFAULT_ENVS = tuple(CONFIGS)
ACTIVATIONS = {"tanh": jax.nn.tanh, "relu": jax.nn.relu, "swish": jax.nn.swish}
LIBS = ("rejax", "ours")


# --- Environments ---------------------------------------------------------------------


def _legacy_wrapper_class():
  from gymnax.wrappers import LegacyStepAPIWrapper

  class Legacy(LegacyStepAPIWrapper):
    """gymnax's five-value step for rejax; attributes come from the wrapped environment.

    The guard keeps `copy.deepcopy` (rejax's `create` copies its config) from
    recursing: a copy is made before `_env` is set.
    """

    def __getattr__(self, name: str):
      if name.startswith("__") or name == "_env":
        raise AttributeError(name)
      return getattr(self._env, name)

  return Legacy


class ClipAction(Wrapper):
  """Clips continuous actions to the action space before the environment sees them (rejax
  clips its Gaussian's sample the same way; MountainCarContinuous charges the raw action)."""

  def __init__(self, env, low: float, high: float):
    super().__init__(env)
    self.low, self.high = low, high

  def reset(self, key, params=None):
    return self.env.reset(key, params)

  def step(self, key, state, action, params=None):
    return self.env.step(key, state, jnp.clip(action, self.low, self.high), params)


def make_env(name: str, **brax_kwargs):
  """`(env, params)`: gymnax's environment, or a Brax one through rejax's own adapter.

  rejax 0.1.3's `Brax2GymnaxEnv` predates gymnax 1.x, whose `step` asks
  `is_truncated(state)` for the time limit (reading `state.time`, which a Brax
  state lacks; see `brax_status`). The subclass here answers from Brax's
  `EpisodeWrapper` (`info["truncation"]`, 1000 steps) and reports only real
  terminations as `terminated`; gymnax's `step` then auto-resets with a fresh
  key. Both libraries and the evaluator step this same object. `brax_kwargs` go to
  `brax.envs.create` (e.g. `episode_length`).
  """
  if name not in BRAX_ENVS:
    import gymnax
    return gymnax.make(name)
  from brax import envs as brax_envs
  from rejax.compat.brax2gymnax import Brax2GymnaxEnv

  class TimeLimitedBrax(Brax2GymnaxEnv):
    def step_env(self, key, state, action, params):
      obs, state, reward, done, info = super().step_env(key, state, action, params)
      return obs, state, reward, jnp.logical_and(done, state.info["truncation"] == 0), info

    def is_truncated(self, state, params):
      return state.info["truncation"] > 0

  env = TimeLimitedBrax(brax_envs.create(name.split("/", 1)[1], auto_reset=False,
                                         **brax_kwargs))
  return env, env.default_params


def brax_status(name: str) -> str | None:
  """None if rejax's Brax adapter steps `name` beside the installed gymnax, else why not."""
  try:
    from rejax.compat import create
    env, params = create(name)
    _, state = env.reset(jax.random.key(0), params)
    env.step(jax.random.key(1), state, jnp.zeros(env.num_actions), params)
  except Exception as error:  # noqa: BLE001 - the reason is the result
    return (f"rejax 0.1.3's Brax adapter (rejax.compat.brax2gymnax.Brax2GymnaxEnv) cannot step "
            f"{name} under gymnax {importlib.metadata.version('gymnax')}: gymnax's "
            f"Environment.step calls is_truncated(state), which reads state.time, and a Brax "
            f"State has none ({type(error).__name__}: {str(error).splitlines()[0]})")
  return None


# --- The library options the rejax-settings row uses (the JSON's `features`) -----------

FEATURES = {
    "lecun_normal_init": "CategoricalPolicy/GaussianPolicy(initializer='lecun_normal')",
    "bootstrap_truncation": "PPO bootstrap_truncation=False",
    "normalize_observations": "TrainConfig(normalize_observations=True) where rejax's config "
                              "asks for it",
    "evaluate": "reinforce_jax.rl.evaluation.evaluate",
}


def library_revision() -> dict:
  """The commit reinforce_jax was measured at (the checkout it was imported from), and
  whether its files differed from it."""
  root = pathlib.Path(rj_envs.__file__).resolve().parents[2]
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "reinforce_jax"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return {"commit": None, "uncommitted_changes": None, "path": str(root)}
  return {"commit": head, "uncommitted_changes": bool(dirty), "path": str(root)}


# --- One environment's plan ------------------------------------------------------------


@dataclasses.dataclass
class Plan:
  env_name: str
  config: dict
  source: str
  iterations: int       # training iterations (rollout + update) of each run
  chunks: int           # equal chunks; an evaluation after each
  config_iterations: int  # what rejax's own train loop runs for this config

  @property
  def batch(self) -> int:
    return self.config["num_envs"] * self.config["num_steps"]

  @property
  def per_chunk(self) -> int:
    return self.iterations // self.chunks

  @property
  def env_steps(self) -> int:
    return self.iterations * self.batch


def make_plan(env_name: str, scale: float, curve_points: int) -> Plan:
  config, source = CONFIGS[env_name]
  batch = config["num_envs"] * config["num_steps"]
  # rejax's train: ceil(total / eval_freq) evaluations, each after
  # ceil(eval_freq / batch) whole iterations.
  full = (math.ceil(config["eval_freq"] / batch)
          * math.ceil(config["total_timesteps"] / config["eval_freq"]))
  iterations = max(1, round(full * scale))
  chunks = max(d for d in range(1, min(curve_points, iterations) + 1) if iterations % d == 0)
  if chunks < curve_points / 2 and iterations >= curve_points:
    chunks = curve_points
    iterations = max(chunks, round(iterations / chunks) * chunks)
  return Plan(env_name, dict(config), source, iterations, chunks, full)


# --- rejax --------------------------------------------------------------------------


def rejax_runner(plan: Plan, gym_env, gym_params):
  """`(init, chunk, evaluable)` for rejax: states of all seeds, vmapped."""
  import rejax

  config = {k: v for k, v in plan.config.items() if k not in ("total_timesteps", "eval_freq")}
  config["agent_kwargs"] = dict(config.get("agent_kwargs", {}))
  steps = plan.per_chunk * plan.batch
  algo = rejax.PPO.create(env=_legacy_wrapper_class()(gym_env), env_params=gym_params,
                          total_timesteps=steps, eval_freq=steps, **config)
  algo = algo.replace(eval_callback=lambda algo, ts, rng: jnp.zeros(()),
                      skip_initial_evaluation=True)
  init = jax.jit(jax.vmap(algo.init_state))
  chunk = jax.jit(jax.vmap(lambda ts: algo.train(train_state=ts)[0]))
  normalized = bool(config.get("normalize_observations", False))

  def apply(params, obs):
    return algo.actor.apply(params, obs, method="_action_dist")

  def evaluable(ts):
    """`(apply(params, obs) -> dist, params, stats or None)` of each seed's current policy."""
    stats = (ts.obs_rms_state.count, ts.obs_rms_state.mean, ts.obs_rms_state.var) \
        if normalized else None
    return apply, ts.actor_ts.params, stats

  return init, chunk, evaluable, algo


# --- reinforce_jax ---------------------------------------------------------------------


def ours_config(plan: Plan, *, rejax_settings: bool) -> TrainConfig:
  c = plan.config
  settings = dict(
      algo="ppo", num_envs=c["num_envs"], rollout_length=c["num_steps"],
      num_steps=plan.iterations, num_epochs=c["num_epochs"],
      num_minibatches=c["num_minibatches"], learning_rate=c["learning_rate"],
      gamma=c["gamma"], gae_lambda=c["gae_lambda"], clip_eps=c["clip_eps"],
      entropy_coef=c["ent_coef"], value_coef=c["vf_coef"], normalize_advantages=True,
      clip_value=True)
  if not rejax_settings:
    settings["max_grad_norm"] = float(c["max_grad_norm"])
  if rejax_settings:
    settings["bootstrap_truncation"] = False
  if c.get("normalize_observations"):
    settings["normalize_observations"] = True
  return TrainConfig(**settings)


def rejax_networks(gym_env, gym_params, c: dict) -> Policy:
  """rejax's own actor and critic modules (its `create_agent`) as this library's `Policy`."""
  import rejax

  agent = rejax.PPO.create_agent({"agent_kwargs": dict(c.get("agent_kwargs", {}))}, gym_env,
                                 gym_params)
  actor, critic = agent["actor"], agent["critic"]

  def init(key, obs):
    key_actor, key_critic = jax.random.split(key)
    return {"actor": actor.init(key_actor, obs, key_actor), "critic": critic.init(key_critic, obs)}

  def apply(params, carry, obs):
    return carry, (actor.apply(params["actor"], obs, method="_action_dist"),
                   critic.apply(params["critic"], obs))

  return Policy(init=init, apply=apply)


def ours_runner(plan: Plan, gym_env, gym_params, *, rejax_settings: bool,
                networks: str = "ours"):
  """`(init, chunk, evaluable)` for reinforce_jax at rejax's settings (or its own defaults);
  `networks="rejax"` trains rejax's own actor and critic modules in this library's loop."""
  c = plan.config
  env = rj_envs.GymnaxEnv(gym_env, gym_params)
  discrete = not hasattr(env.env.action_space(gym_params), "low")
  if not discrete:
    env = ClipAction(env, *env.action_bounds)
  config = ours_config(plan, rejax_settings=rejax_settings)
  activation = ACTIVATIONS[c.get("agent_kwargs", {}).get("activation", "swish")]
  hidden = tuple(c.get("agent_kwargs", {}).get("hidden_layer_sizes", (64, 64)))
  image = len(env.observation_shape) > 1
  common_kw = dict(hidden=hidden, activation=activation, value="separate", flatten=image,
                   initializer="lecun_normal" if rejax_settings else "orthogonal")
  if discrete:
    module = CategoricalPolicy(env.num_actions, **common_kw)
  else:
    module = GaussianPolicy(int(np.prod(env.action_shape)), init_log_std=0.0, **common_kw)
  if rejax_settings:  # rejax: optax.clip(max_grad_norm), element by element, then Adam
    optimizer = optax.chain(optax.clip(float(c["max_grad_norm"])),
                            optax.adam(c["learning_rate"]))
  else:
    from reinforce_jax.rl.train import make_optimizer
    optimizer = make_optimizer(config)
  if networks == "rejax":
    module = rejax_networks(gym_env, gym_params, c)
  init_fn, train_step = make_train_step(env, module, optimizer, config)
  run = make_run(train_step, plan.per_chunk)
  policy = as_policy(module)

  def init(keys):
    return jax.vmap(lambda k: (init_fn(jax.random.split(k)[0]), jax.random.split(k)[1]))(keys)

  def chunk(carry):
    state, key = carry
    return jax.vmap(lambda s, k: (run(s, k, plan.per_chunk).state, k))(state, key)

  def apply(params, obs):
    return split_output(policy.apply(params, (), obs)[1])[0]

  def evaluable(carry):
    state, _ = carry
    stats = state.obs_stats
    stats = (stats.count, stats.mean, stats.var) if config.normalize_observations else None
    return apply, state.params, stats

  return jax.jit(init), jax.jit(chunk), evaluable, config, module, optimizer


# --- The common evaluator ----------------------------------------------------------------


def _compiled_per_policy(build: Callable[[Callable], Any]):
  """`evaluate(apply, params, stats, keys)`, compiled ahead of time once per `apply`;
  `evaluate.compile_s[apply]` holds the seconds that took."""
  cache: dict[Any, Any] = {}

  def evaluate(apply, params, stats, keys):
    if apply not in cache:
      seconds, cache[apply] = common.compile_seconds(build(apply), params, stats, keys)
      evaluate.compile_s[apply] = seconds
    return np.asarray(cache[apply](params, stats, keys))

  evaluate.compile_s = {}
  return evaluate


def make_evaluator(gym_env, gym_params, num_episodes: int):
  """`evaluate(apply, params, stats, keys) -> [seeds, episodes]` returns through
  `reinforce_jax.rl.evaluation.evaluate`, one jitted program per policy function: stochastic
  actions, each seed's statistics frozen, continuous actions clipped to the action space
  (rejax's `act` does the same), every episode to its end (termination or the time limit)."""
  from reinforce_jax.rl import normalization
  from reinforce_jax.rl.evaluation import evaluate as rj_evaluate

  env = rj_envs.GymnaxEnv(gym_env, gym_params)
  space = gym_env.action_space(gym_params)
  if hasattr(space, "low"):
    env = ClipAction(env, float(np.min(space.low)), float(np.max(space.high)))
  def build(apply):
    def one(p, s, k):
      obs_stats = None if s is None else normalization.ObsStats(*s)
      return rj_evaluate(apply, p, env, k, num_episodes, greedy=False,
                         obs_stats=obs_stats).returns
    return jax.jit(jax.vmap(one))

  return _compiled_per_policy(build)


# --- Running one environment ----------------------------------------------------------------


def _timed(fn, *args) -> tuple[float, Any]:
  start = time.perf_counter()
  out = common.block(fn(*args))
  return time.perf_counter() - start, out


def _compile(jitted, *args) -> tuple[float, Any]:
  seconds, compiled = common.compile_seconds(jitted, *args)
  return seconds, compiled


def run_env(plan: Plan, args) -> dict:

  gym_env, gym_params = make_env(plan.env_name)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(args.seed),
                                             list(CONFIGS).index(plan.env_name)), args.seeds)
  rows = {}

  def build_runners() -> dict:
    runners = {"rejax": rejax_runner(plan, gym_env, gym_params)[:3],
               "ours": ours_runner(plan, gym_env, gym_params, rejax_settings=True)[:3]}
    if args.rejax_networks:
      runners["ours_rejax_networks"] = ours_runner(
          plan, gym_env, gym_params, rejax_settings=True, networks="rejax")[:3]
    if args.ours_defaults:
      runners["ours_defaults"] = ours_runner(plan, gym_env, gym_params,
                                             rejax_settings=False)[:3]
    return runners

  final_eval = make_evaluator(gym_env, gym_params, args.final_episodes)
  curve_eval = final_eval if args.curve_episodes == args.final_episodes else make_evaluator(
      gym_env, gym_params, args.curve_episodes)

  states, compiled, samples = {}, {}, {}
  for _ in range(args.compile_rounds):  # rounds interleave the libraries; medians reported
    # Fresh functions each round: JAX would answer a repeated compile from its cache.
    runners = build_runners()
    for name, (init, chunk, _) in runners.items():
      init_s, init_c = _compile(init, keys)
      states[name] = common.block(init_c(keys))
      chunk_s, compiled[name] = _compile(chunk, states[name])
      samples.setdefault(name, []).append((init_s, chunk_s))
  compile_s = {name: {"init_s": float(np.median([a for a, _ in rows])),
                      "chunk_s": float(np.median([b for _, b in rows])),
                      "total_s": float(np.median([a + b for a, b in rows])),
                      "rounds": len(rows)} for name, rows in samples.items()}

  eval_key = jax.random.fold_in(keys[0], 1)
  curves = {name: {"env_steps": [0], "train_s": [0.0], "returns": []} for name in runners}
  chunk_times = {name: [] for name in runners}
  eval_s = {name: 0.0 for name in runners}

  def evaluate(name, index, final=False):
    apply, params, stats = runners[name][2](states[name])
    eval_keys = jax.random.split(jax.random.fold_in(eval_key, index), args.seeds)
    start = time.perf_counter()
    returns = (final_eval if final else curve_eval)(apply, params, stats, eval_keys)
    eval_s[name] += time.perf_counter() - start
    return returns

  for name in runners:
    curves[name]["returns"].append(evaluate(name, 0).mean(axis=1).tolist())
  order = list(runners)
  for i in range(plan.chunks):
    for name in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
      seconds, states[name] = _timed(compiled[name], states[name])
      chunk_times[name].append(seconds)
    for name in runners:
      final = i == plan.chunks - 1
      returns = evaluate(name, i + 1, final=final)
      curve = curves[name]
      curve["env_steps"].append((i + 1) * plan.per_chunk * plan.batch)
      curve["train_s"].append(float(np.sum(chunk_times[name])))
      curve["returns"].append(returns.mean(axis=1).tolist())
      if final:
        rows[name] = summarize(returns, chunk_times[name], compile_s[name], plan,
                               args.seeds)
  for name in runners:
    apply = runners[name][2](states[name])[0]
    compiling = sum(e.compile_s.get(apply, 0.0) for e in {curve_eval, final_eval})
    rows[name]["eval_compile_s"] = compiling
    rows[name]["eval_s"] = eval_s[name] - compiling
    rows[name]["curve"] = curves[name]
  return rows


def permutation_p(ours, rejax, *, samples: int = 20_000) -> float:
  """One-sided p-value of "ours' mean is below rejax's" under exchangeable seeds.

  The share of the ways to relabel the pooled per-seed returns into two groups of
  the observed sizes whose mean difference (ours - rejax) is at most the observed
  one: exact over every relabelling when there are at most 20 seeds in all, else
  `samples` random relabellings with a fixed key.
  """
  ours, rejax = np.asarray(ours, np.float64), np.asarray(rejax, np.float64)
  pooled, n = np.concatenate([ours, rejax]), len(ours)
  observed = ours.mean() - rejax.mean()
  if len(pooled) <= 20:
    groups = np.array(list(itertools.combinations(range(len(pooled)), n)))
  else:
    rng = np.random.default_rng(0)
    groups = np.stack([rng.permutation(len(pooled))[:n] for _ in range(samples)])
  in_ours = np.zeros((len(groups), len(pooled)), bool)
  np.put_along_axis(in_ours, groups, True, axis=1)
  diffs = (np.where(in_ours, pooled, 0).sum(1) / n
           - np.where(in_ours, 0, pooled).sum(1) / (len(pooled) - n))
  return float(np.mean(diffs <= observed + 1e-12 * max(1.0, abs(observed))))


def summarize(returns: np.ndarray, chunk_times, compile_s, plan, seeds) -> dict:
  per_seed = returns.mean(axis=1)
  train_s = float(np.sum(chunk_times))
  return {
      "final_return_per_seed": per_seed.tolist(),
      "mean": float(per_seed.mean()),
      "se": float(per_seed.std(ddof=1) / np.sqrt(len(per_seed))) if len(per_seed) > 1 else 0.0,
      "worst_seed": float(per_seed.min()),
      "finite": bool(np.all(np.isfinite(returns))),
      "train_s": train_s, "chunk_s": list(map(float, chunk_times)),
      "compile_s": compile_s,
      "env_steps_per_s": plan.env_steps * seeds / train_s,
  }


# --- Settings and differences, as written into the output ----------------------------------


def settings_for(plan: Plan, config: TrainConfig) -> dict:
  c = plan.config
  agent = c.get("agent_kwargs", {})
  return {
      "rejax_config": c, "rejax_config_source": plan.source,
      "field_map": {
          "num_envs": f"num_envs={config.num_envs}",
          "num_steps": f"rollout_length={config.rollout_length}",
          "total_timesteps/eval_freq": f"num_steps={config.num_steps} train steps "
                                       f"({plan.env_steps} env steps per seed)",
          "num_epochs": f"num_epochs={config.num_epochs}",
          "num_minibatches": f"num_minibatches={config.num_minibatches}",
          "learning_rate": f"optax.adam({c['learning_rate']}) (constant: no annealing)",
          "max_grad_norm": f"optax.clip({c['max_grad_norm']}) before Adam (element-wise, "
                           "as rejax; TrainConfig.max_grad_norm would clip the global norm)",
          "gamma": f"gamma={config.gamma}", "gae_lambda": f"gae_lambda={config.gae_lambda}",
          "clip_eps": f"clip_eps={config.clip_eps} (policy ratio and value, clip_value=True)",
          "ent_coef": f"entropy_coef={config.entropy_coef}",
          "vf_coef": f"value_coef={config.value_coef} (times 0.5 (V - target)^2, as rejax)",
          "agent_kwargs.activation": f"activation={agent.get('activation', 'swish')}",
          "agent_kwargs.hidden_layer_sizes": f"hidden={tuple(agent.get('hidden_layer_sizes', (64, 64)))}",  # noqa: E501
          "normalize_observations":
              f"normalize_observations={bool(c.get('normalize_observations'))}",
          "(rejax's PPO itself)": "normalize_advantages=True (per minibatch, std + 1e-8); "
                                  "separate actor and critic (value='separate'); "
                                  "bootstrap_truncation=False; initializer='lecun_normal' "
                                  "(every kernel; biases zero)",
      },
      "our_config": config.to_dict(),
  }


def differences(continuous: bool, normalized: bool, image: bool,
                brax: bool = False) -> list[str]:
  out = [
      "Optimizers: rejax keeps two Adam states (actor, critic) and applies the actor's "
      "gradient, then the critic's, per minibatch; ours one Adam over both networks' "
      "parameters on the sum of the losses. The networks share no parameter and Adam and "
      "element-wise clipping act per parameter, so the updates are the same.",
      "Random numbers: each library draws its own keys (initial parameters, actions, "
      "minibatch order), so equal seeds are not equal runs.",
      "Minibatch shuffling: rejax jax.random.permutation per epoch; ours the library's "
      "prng.permutation (also uniform).",
  ]
  if normalized:
    out.append("Observation normalisation: rejax feeds the first observations of the run "
               "(the reset's) to the policy unnormalised; ours normalises them with the "
               "prior (mean 0, variance 1), i.e. unchanged up to 1e-8.")
  if continuous:
    out.append("Gaussian policy: both keep the unclipped sample for the log-probability and "
               "clip it to the action space for the environment; rejax's output layer and "
               "log-std (0) are as ours at lecun_normal init.")
  if image:
    out.append("MinAtar: both flatten the [10, 10, C] observation into one vector before the "
               "64x64 MLP (rejax's MLP reshapes; ours flatten=True): rejax's PPO has no "
               "convolutional torso.")
  if brax:
    out.append("Brax: both libraries and the evaluator step one environment object, rejax's "
               "Brax2GymnaxEnv with the time limit (1000 steps) read from Brax's "
               "EpisodeWrapper (suite.make_env); gymnax's auto-reset starts every episode "
               "from a fresh random state. rejax has no config for this environment: "
               "hopper's, at 1/20 of its steps.")
  return out


# --- Output ----------------------------------------------------------------------------------


def _fmt(x: float) -> str:
  return f"{x:,.1f}" if abs(x) < 1e4 else f"{x:,.0f}"


def verdict(ours: dict, rejax: dict) -> str:
  if ours["mean"] < rejax["mean"] - 2 * rejax["se"] or ours["worst_seed"] < rejax["worst_seed"]:
    return "behind" if ours["mean"] < rejax["mean"] - 2 * rejax["se"] else "worst seed behind"
  return "ok"


def markdown(results: dict) -> str:
  lines = [f"# reinforce_jax PPO vs rejax {results['versions'].get('rejax', '')} PPO",
           "",
           f"{results['seeds']} seeds per library, vmapped in one program; final return = "
           f"mean of {results['final_episodes']} stochastic evaluation episodes per seed; "
           "mean ± standard error over seeds; worst seed; training wall time without "
           "compilation (the libraries' chunks alternate in one process); compile = "
           "lower+compile of the init and chunk programs. Scale "
           f"{results['scale']} of rejax's budgets. Device: {results['device']['kind']} "
           f"({results['host']['cpu_count']} cores).",
           "",
           "| env | env steps/seed | rejax | ours | ours − rejax | worst rejax | worst ours "
           "| train s rejax | train s ours | ours/rejax train | compile s rejax | compile s ours "
           "| ours/rejax compile | p (ours < rejax) | verdict |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
  extra = []
  for env_name, entry in results["envs"].items():
    if "skipped" in entry:
      lines.append(f"| {env_name} | – | skipped | skipped | | | | | | | | | | | see note |")
      extra.append(f"* {env_name}: {entry['skipped']}")
      continue
    r, o = entry["rows"]["rejax"], entry["rows"]["ours"]
    lines.append(
        f"| {env_name} | {entry['env_steps_per_seed']:,} | {_fmt(r['mean'])} ± {_fmt(r['se'])} "
        f"| {_fmt(o['mean'])} ± {_fmt(o['se'])} | {_fmt(o['mean'] - r['mean'])} "
        f"| {_fmt(r['worst_seed'])} | {_fmt(o['worst_seed'])} | {r['train_s']:.1f} "
        f"| {o['train_s']:.1f} | {o['train_s'] / r['train_s']:.2f} "
        f"| {r['compile_s']['total_s']:.1f} | {o['compile_s']['total_s']:.1f} "
        f"| {o['compile_s']['total_s'] / r['compile_s']['total_s']:.2f} "
        f"| {permutation_p(o['final_return_per_seed'], r['final_return_per_seed']):.2f} "
        f"| {verdict(o, r)} |")
  if any("ours_defaults" in e.get("rows", {}) for e in results["envs"].values()):
    lines += ["", "Ours with the library's own defaults (orthogonal init, truncation "
              "bootstrapped, global-norm clipping), same hyperparameters:", "",
              "| env | ours (defaults) | worst | train s | compile s |",
              "|---|---:|---:|---:|---:|"]
    for env_name, entry in results["envs"].items():
      d = entry.get("rows", {}).get("ours_defaults")
      if d:
        lines.append(f"| {env_name} | {_fmt(d['mean'])} ± {_fmt(d['se'])} "
                     f"| {_fmt(d['worst_seed'])} | {d['train_s']:.1f} "
                     f"| {d['compile_s']['total_s']:.1f} |")
  lines += ["", "verdict: `behind` where ours' mean < rejax's mean − 2 SE; `worst seed behind` "
            "where ours' worst seed is below rejax's worst seed. p (ours < rejax): one-sided "
            "permutation test of the mean difference over the per-seed returns (exact over "
            "every relabelling of the pooled seeds); small where ours is behind by more "
            "than the seeds' spread explains. For two algorithms that learn alike, ours' "
            "worst seed falls below rejax's with probability 1/2 at any seed count.", ""]
  if extra:
    lines += ["Skipped:", "", *extra, ""]
  rounds = {n: e["rows"]["ours"]["compile_s"].get("rounds", 1)
            for n, e in results["envs"].items() if "rows" in e}
  if any(r > 1 for r in rounds.values()):
    lines += ["Compile times are one compile per library, except (median of interleaved "
              "rounds): " + ", ".join(f"{n} ({r})" for n, r in rounds.items() if r > 1) + ".",
              ""]
  if "brax_adapter" in results:
    lines += ["Brax: " + results["brax_adapter"] + ".", ""]
  if "merged" in results:
    lines += [f"Environments rerun in this run: {', '.join(results['merged']['envs_rerun'])}; "
              f"the others from {results['merged']['earlier_date']} (same seeds and scale).",
              ""]
  lines += ["Configs: " + results["rejax_source"] + "; per env in the JSON (`settings`).",
            "", "Library options used: " + "; ".join(results["features"].values()) + ".",
            "", "Remaining differences:", ""]
  lines += [f"* {d}" for d in results["differences_common"]]
  return "\n".join(lines) + "\n"


def figure(results: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  done = [(n, e) for n, e in results["envs"].items() if "rows" in e]
  if not done:
    return
  fig, axes = plt.subplots(len(done), 2, figsize=(10, 2.6 * len(done)), squeeze=False)
  colors = {"rejax": "tab:orange", "ours": "tab:blue", "ours_defaults": "tab:green",
            "ours_rejax_networks": "tab:purple"}
  for row, (env_name, entry) in enumerate(done):
    for name, data in entry["rows"].items():
      curve = data["curve"]
      returns = np.asarray(curve["returns"])  # [points, seeds]
      mean = returns.mean(axis=1)
      se = returns.std(axis=1, ddof=1) / np.sqrt(returns.shape[1]) if returns.shape[1] > 1 \
          else np.zeros_like(mean)
      for col, x in enumerate((curve["env_steps"], curve["train_s"])):
        ax = axes[row, col]
        ax.plot(x, mean, color=colors[name], label=name)
        ax.fill_between(x, mean - se, mean + se, color=colors[name], alpha=0.2)
        ax.set_title(env_name, fontsize=9)
        ax.set_xlabel("env steps per seed" if col == 0 else "training wall time, s")
    axes[row, 0].set_ylabel("eval return")
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--scale", type=float, default=1.0,
                      help="multiplier on rejax's env-step budgets (e.g. 0.01 for CI)")
  parser.add_argument("--envs", default=",".join(DEFAULT_ENVS),
                      help="comma-separated subset of: " + ", ".join(DEFAULT_ENVS))
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--curve-points", type=int, default=10)
  parser.add_argument("--curve-episodes", type=int, default=64,
                      help="episodes per seed at each curve point (64: the final "
                           "evaluation's program serves them all)")
  parser.add_argument("--final-episodes", type=int, default=64)
  parser.add_argument("--rejax-networks", action="store_true",
                      help="also train rejax's own actor and critic modules in our loop")
  parser.add_argument("--ours-defaults", action="store_true",
                      help="also train ours with the library's own defaults")
  parser.add_argument("--out", help="JSON path (the .md and .png go beside it)")
  parser.add_argument("--compile-rounds", type=int, default=1,
                      help="compile each library's programs this many times, interleaved, "
                           "and report the medians")
  parser.add_argument("--merge", help="an earlier suite JSON (same --seeds and --scale) whose "
                                      "other environments join this run's in the output")
  args = parser.parse_args(argv)
  names = [n for n in args.envs.split(",") if n]
  unknown = [n for n in names if n not in DEFAULT_ENVS]
  if unknown:
    parser.error(f"--envs: unknown {unknown}; known: {list(DEFAULT_ENVS)}")
  if args.scale <= 0 or not math.isfinite(args.scale):
    parser.error(f"--scale must be a positive number, got {args.scale}")
  if args.compile_rounds < 1:
    parser.error(f"--compile-rounds must be at least 1, got {args.compile_rounds}")
  if args.seeds < 2:
    parser.error(f"--seeds must be at least 2 (a standard error needs two), got {args.seeds}")

  versions = {}
  for package in ("rejax", "gymnax", "brax"):
    versions[package] = importlib.metadata.version(package)
  results = {"scale": args.scale, "seeds": args.seeds, "seed": args.seed,
             "final_episodes": args.final_episodes, "curve_episodes": args.curve_episodes,
             "rejax_source": REJAX_SOURCE, "package_versions": versions, "features": FEATURES,
             "reinforce_jax": library_revision(),
             "evaluator": "reinforce_jax.rl.evaluation.evaluate",
             "curves": ("evaluation returns (curve_episodes stochastic episodes per seed, "
                        "the last point final_episodes) after each of the equal chunks, "
                        "against env steps per seed and cumulative training wall time"),
             "envs": {}}
  for name in names:
    if name in BRAX_ENVS:
      results["brax_adapter"] = (
          (brax_status(name) or "rejax's adapter steps it as installed")
          + "; the suite steps it through make_env's subclass of that adapter")
    plan = make_plan(name, args.scale, args.curve_points)
    start = time.perf_counter()
    rows = run_env(plan, args)
    gym_env = make_env(name)[0]
    continuous = hasattr(gym_env.action_space(gym_env.default_params), "low")
    config = ours_config(plan, rejax_settings=True)
    results["envs"][name] = {
        "env_steps_per_seed": plan.env_steps, "iterations": plan.iterations,
        "chunks": plan.chunks, "rejax_config_iterations": plan.config_iterations,
        "rows": rows, "settings": settings_for(plan, config),
        "p_ours_below_rejax": permutation_p(rows["ours"]["final_return_per_seed"],
                                            rows["rejax"]["final_return_per_seed"]),
        "differences": differences(continuous, bool(plan.config.get("normalize_observations")),
                                   "MinAtar" in name, name in BRAX_ENVS),
        "wall_s": time.perf_counter() - start}
    r, o = rows["rejax"], rows["ours"]
    print(f"{name:26} rejax {r['mean']:9.1f} ± {r['se']:6.1f} (worst {r['worst_seed']:8.1f}, "
          f"train {r['train_s']:6.1f} s, compile {r['compile_s']['total_s']:5.1f} s) | ours "
          f"{o['mean']:9.1f} ± {o['se']:6.1f} (worst {o['worst_seed']:8.1f}, train "
          f"{o['train_s']:6.1f} s, compile {o['compile_s']['total_s']:5.1f} s) "
          f"[{time.perf_counter() - start:.0f} s]", flush=True)
    for extra in set(rows) - {"rejax", "ours"}:
      e = rows[extra]
      print(f"{'':26} {extra} {e['mean']:9.2f} ± {e['se']:6.2f} (worst {e['worst_seed']:8.2f}, "
            f"train {e['train_s']:6.1f} s)", flush=True)
  results["differences_common"] = differences(False, False, False)
  if args.merge:
    prior = json.loads(pathlib.Path(args.merge).read_text())
    if (prior["seeds"], prior["scale"]) != (args.seeds, args.scale):
      parser.error(f"--merge: {args.merge} has seeds={prior['seeds']}, scale={prior['scale']}; "
                   f"this run seeds={args.seeds}, scale={args.scale}")
    envs = {**prior["envs"], **results["envs"]}
    results["envs"] = {n: envs[n] for n in DEFAULT_ENVS if n in envs}
    results["merged"] = {"from": args.merge, "envs_rerun": names,
                         "earlier_reinforce_jax": prior.get("reinforce_jax"),
                         "earlier_date": prior.get("date")}
    for key in ("brax_adapter",):
      if key in prior and key not in results:
        results[key] = prior[key]
  path = common.write("suite", results, args.out)
  results = {**common.environment(), **results}
  results["versions"] = {**results["versions"], **versions}
  path.with_suffix(".md").write_text(markdown(results))
  figure(results, path.with_suffix(".png"))
  print(f"wrote {path}, {path.with_suffix('.md').name}, {path.with_suffix('.png').name}")
  return path


if __name__ == "__main__":
  main()
