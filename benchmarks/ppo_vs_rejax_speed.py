"""Compile and run time of reinforce_jax's PPO against rejax's PPO, at rejax's settings.

Both train the same gymnax environments (ours through `reinforce_jax.envs.GymnaxEnv`,
rejax's through gymnax's `LegacyStepAPIWrapper`) at rejax's published PPO
configuration (configs/gymnax/cartpole.yaml, benchmark/breakout_1m.yaml in
github.com/keraJLi/rejax): the same batch shape, epochs, minibatches, 64x64 tanh
actor and critic MLPs (LeCun-normal kernels, observations flattened),
element-wise gradient clipping then Adam, value clipping, advantages standardised
per minibatch, a time limit treated as a termination. Each library trains
`--seeds` seeds in ONE program, the path a user takes:

  * ours:  `jax.jit(jax.vmap(make_train(env, policy, optimizer, config)))(keys)`
  * rejax: `jax.jit(jax.vmap(lambda k: algo.train(rng=k)))(keys)` (evaluation off)

For each, measured separately in every round: Python tracing (`jit(...).trace`),
lowering to StableHLO (`.lower()`), XLA's compile (`.compile()`), and the steady
state run (the second call of the compiled program, blocked on). Rounds interleave
the candidates in one process (the machine is shared); medians and ratios of
medians are reported. The HLO size of both programs is reported too (instructions
before and after XLA's optimisation, `while` loops, fusions).

`--levers` adds variants of ours, each a single toggle of what the user-facing
path does (see `LEVERS`), so their cost in compile and run time reads off one table.
`--floor` adds `networks_only`: the actor's and critic's arithmetic alone (a forward
pass per rollout step, forward and backward per minibatch), a lower bound on the run
time of any implementation of this PPO on the machine.

    python benchmarks/ppo_vs_rejax_speed.py                       # CartPole, Breakout
    python benchmarks/ppo_vs_rejax_speed.py --envs CartPole-v1 --levers all --rounds 3
    python benchmarks/ppo_vs_rejax_speed.py --rounds 3 --floor

Results: `results/ppo_vs_rejax_speed-cpu-2core.json` (the library as it is),
`-before-cpu-2core.json` (the library before its minibatch gathers, single trace,
skipped bootstrap and unrolled keys everywhere; same script), and
`-levers-{cartpole,breakout}-cpu-2core.json` (one round of every lever). On a
shared machine compare the CPU-second columns and the ratios, not wall seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import re
import statistics
import sys
import time
from collections.abc import Callable

import common
import distrax
import jax
import jax.numpy as jnp
import optax

from reinforce_jax import envs as rj_envs
from reinforce_jax.rl import algorithms
from reinforce_jax.rl.config import TrainConfig
from reinforce_jax.rl.policies import CategoricalPolicy, Policy, as_policy, split_output
from reinforce_jax.rl.train import make_run, make_train, make_train_step
from reinforce_jax.xla import prng

# rejax's PPO settings (github.com/keraJLi/rejax at d751095), field for field.
CONFIGS = {
    "CartPole-v1": dict(num_envs=5, num_steps=100, num_epochs=5, num_minibatches=5,
                        learning_rate=0.00075, max_grad_norm=0.5, total_timesteps=100_000,
                        gamma=0.99, gae_lambda=0.95, clip_eps=0.2, ent_coef=0.01, vf_coef=0.5),
    "Breakout-MinAtar": dict(num_envs=32, num_steps=32, num_epochs=4, num_minibatches=4,
                             learning_rate=0.00025674088686342003, max_grad_norm=1.0,
                             total_timesteps=1_000_000, gamma=0.995, gae_lambda=0.95,
                             clip_eps=0.2, ent_coef=0.01, vf_coef=0.5),
}
SOURCES = {"CartPole-v1": "configs/gymnax/cartpole.yaml",
           "Breakout-MinAtar": "benchmark/breakout_1m.yaml"}


def legacy_env(env):
  """gymnax's five-value step for rejax, forwarding attribute reads to `env` (and
  surviving `copy.deepcopy`: the guard answers before `_env` is set)."""
  from gymnax.wrappers import LegacyStepAPIWrapper

  class Legacy(LegacyStepAPIWrapper):
    def __getattr__(self, name: str):
      if name.startswith("__") or name == "_env":
        raise AttributeError(name)
      return getattr(self._env, name)

  return Legacy(env)


@dataclasses.dataclass
class Setup:
  env_name: str
  iterations: int
  seeds: int

  @property
  def config(self) -> dict:
    return CONFIGS[self.env_name]

  @property
  def batch(self) -> int:
    return self.config["num_envs"] * self.config["num_steps"]


def rejax_train(setup: Setup) -> Callable:
  import gymnax
  import rejax

  env, params = gymnax.make(setup.env_name)
  c = {k: v for k, v in setup.config.items() if k != "total_timesteps"}
  steps = setup.iterations * setup.batch
  algo = rejax.PPO.create(env=legacy_env(env), env_params=params, agent_kwargs={
      "activation": "tanh"}, total_timesteps=steps, eval_freq=steps, **c)
  algo = algo.replace(eval_callback=lambda algo, ts, rng: jnp.zeros(()),
                      skip_initial_evaluation=True)
  return lambda key: algo.train(rng=key)


# --- ours, and the levers ------------------------------------------------------------------

LEVERS = {
    "jax_keys": "JAX's rolled threefry instead of xla.prng's unrolled hash (prng.disabled())",
    "no_guard": "make_run without the finiteness guard (no last-good-state select)",
    "no_metrics": "train steps in a fori_loop, metrics dropped (no metrics buffer)",
    "scan_run": "lax.scan over the train steps, metrics stacked, no guard",
    "jax_shuffle": "epochs shuffled with jax.random.permutation (key-value sorts)",
    "distrax_cat": "distrax.Categorical instead of the unrolled Categorical",
    "no_clip_value": "plain squared-error value loss (clip_value=False)",
    "orthogonal": "orthogonal (Gram-Schmidt) init instead of LeCun normal",
    "twin": "actor and critic as one TwinMLP (value='twin')",
    "unroll2": "make_train_step(..., unroll=2)",
}


def ours_parts(setup: Setup, lever: str | None = None):
  """`(env, module, optimizer, config, unroll)` at rejax's settings, with one lever."""
  import gymnax

  gym_env, gym_params = gymnax.make(setup.env_name)
  env = rj_envs.GymnaxEnv(gym_env, gym_params)
  c = setup.config
  config = TrainConfig(
      algo="ppo", num_envs=c["num_envs"], rollout_length=c["num_steps"],
      num_steps=setup.iterations, num_epochs=c["num_epochs"],
      num_minibatches=c["num_minibatches"], learning_rate=c["learning_rate"],
      gamma=c["gamma"], gae_lambda=c["gae_lambda"], clip_eps=c["clip_eps"],
      entropy_coef=c["ent_coef"], value_coef=c["vf_coef"], normalize_advantages=True,
      clip_value=lever != "no_clip_value", bootstrap_truncation=False)
  image = len(env.observation_shape) > 1
  module = CategoricalPolicy(
      env.num_actions, hidden=(64, 64), activation=jax.nn.tanh,
      value="twin" if lever == "twin" else "separate", flatten=image,
      initializer="orthogonal" if lever == "orthogonal" else "lecun_normal")
  optimizer = optax.chain(optax.clip(float(c["max_grad_norm"])), optax.adam(c["learning_rate"]))
  return env, module, optimizer, config, 2 if lever == "unroll2" else 1


def _distrax_policy(module) -> Policy:
  policy = as_policy(module)

  def apply(params, carry, obs):
    carry, output = policy.apply(params, carry, obs)
    dist, value = split_output(output)
    plain = distrax.Categorical(logits=dist.logits)
    return carry, plain if value is None else (plain, value)

  return policy._replace(apply=apply)


def ours_train(setup: Setup, lever: str | None = None) -> Callable:
  env, module, optimizer, config, unroll = ours_parts(setup, lever)
  if lever in (None, "jax_keys", "no_clip_value", "orthogonal", "twin", "unroll2"):
    return make_train(env, module, optimizer, config, unroll=unroll)
  policy = _distrax_policy(module) if lever == "distrax_cat" else module
  algorithm = algorithms.build(config.algorithm)
  if lever == "jax_shuffle":
    algorithm = algorithm._replace(
        schedule=algorithm.schedule._replace(permutation=jax.random.permutation))
  init_fn, train_step = make_train_step(
      env, policy, optimizer, algorithm, num_envs=config.num_envs,
      rollout_length=config.rollout_length)
  n = config.num_steps

  if lever in ("distrax_cat", "jax_shuffle"):
    run = make_run(train_step, n)
    return lambda key: run(init_fn(jax.random.split(key)[0]), jax.random.split(key)[1], n)
  if lever == "no_guard":
    def run(state, key):
      shapes = jax.eval_shape(train_step, state, key)[1]
      buffer = jax.tree.map(lambda s: jnp.zeros((n,) + s.shape, s.dtype), shapes)

      def body(i, carry):
        state, buffer = carry
        state, metrics = train_step(state, key)
        return state, jax.tree.map(lambda b, m: b.at[i].set(m), buffer, metrics)
      return jax.lax.fori_loop(0, n, body, (state, buffer))
  elif lever == "no_metrics":
    def run(state, key):
      return jax.lax.fori_loop(0, n, lambda i, s: train_step(s, key)[0], state)
  elif lever == "scan_run":
    def run(state, key):
      return jax.lax.scan(lambda s, _: train_step(s, key), state, None, length=n)
  else:
    raise ValueError(f"unknown lever {lever!r}; known: {sorted(LEVERS)}")

  def train(key):
    key_init, key_run = jax.random.split(key)
    return run(init_fn(key_init), key_run)

  return train


def networks_only(setup: Setup) -> Callable:
  """The actor's and critic's arithmetic of one training run, and nothing else.

  The same networks as `ours_train` (64x64 tanh MLPs, LeCun-normal, observations
  flattened) do what any PPO at these settings must: every iteration a forward
  pass of both networks on each of the `num_steps` batches of `num_envs`
  observations, one step after the other, then `num_epochs * num_minibatches`
  gradient steps on minibatches of the rollout. No environment, no sampling, no
  advantages, no optimiser state: a lower bound, on this machine and XLA, for the
  run time of any implementation that does this arithmetic.
  """
  import gymnax

  gym_env, gym_params = gymnax.make(setup.env_name)
  env = rj_envs.GymnaxEnv(gym_env, gym_params)
  c = setup.config
  image = len(env.observation_shape) > 1
  policy = as_policy(CategoricalPolicy(
      env.num_actions, hidden=(64, 64), activation=jax.nn.tanh, value="separate",
      flatten=image, initializer="lecun_normal"))
  steps, envs = c["num_steps"], c["num_envs"]
  minibatches = c["num_epochs"] * c["num_minibatches"]

  def forward(params, obs):
    dist, value = split_output(policy.apply(params, (), obs)[1])
    return dist.logits, value

  def loss(params, obs):
    logits, value = forward(params, obs)
    return jnp.sum(logits) + jnp.sum(jnp.square(value))

  def train(key):
    key_params, key_obs = jax.random.split(key)
    params = policy.init(key_params, jnp.zeros((envs, *env.observation_shape)))
    table = jax.random.bernoulli(key_obs, 0.1, (steps, envs, *env.observation_shape))
    table = table.astype(jnp.float32)
    batches = table.reshape((c["num_minibatches"], -1, *env.observation_shape))

    def iteration(params, _):
      def rollout_step(acc, obs):
        logits, value = forward(params, obs)
        return acc + jnp.sum(logits) + jnp.sum(value), None

      acc, _ = jax.lax.scan(rollout_step, 0.0, table)

      def update(params, i):
        grads = jax.grad(loss)(params, batches[i % c["num_minibatches"]])
        return jax.tree.map(lambda p, g: p - 1e-6 * g, params, grads), None

      params, _ = jax.lax.scan(update, params, jnp.arange(minibatches))
      return params, acc

    return jax.lax.scan(iteration, params, None, length=setup.iterations)

  return train


# --- Measuring ------------------------------------------------------------------------------


def hlo_stats(lowered, compiled) -> dict:
  """Instruction counts of the program before and after XLA's optimisation."""
  text = compiled.as_text()
  instructions = re.findall(r"^\s*(?:ROOT )?%?[\w.\-]+ = ", text, flags=re.M)
  stable = lowered.as_text()
  return {"stablehlo_ops": len(re.findall(r"^\s*(?:%[\w#:]+(?:, %[\w#:]+)* = )?\"?\w+\.\w+",
                                          stable, flags=re.M)),
          "stablehlo_while": stable.count("stablehlo.while"),
          "hlo_instructions": len(instructions),
          "hlo_while": len(re.findall(r"\bwhile\(%", text)),
          "hlo_fusions": len(re.findall(r"\bfusion\(", text)),
          "hlo_chars": len(text)}


def measure_once(build: Callable[[], Callable], keys, context) -> tuple[dict, object]:
  """One fresh trace, lowering, compile and two runs (the second timed)."""
  clock, cpu = time.perf_counter, time.process_time
  with context():
    fn = build()
    jitted = jax.jit(jax.vmap(lambda k: fn(k)))
    t0, c0 = clock(), cpu()
    traced = jitted.trace(keys)
    t1, c1 = clock(), cpu()
    lowered = traced.lower()
  t2, c2 = clock(), cpu()
  compiled = lowered.compile()
  t3, c3 = clock(), cpu()
  out = common.block(compiled(keys))
  t4, c4 = clock(), cpu()
  out = common.block(compiled(keys))
  t5, c5 = clock(), cpu()
  # CPU seconds (all threads) beside wall seconds: on a shared machine they move less.
  return ({"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2,
           "first_run_s": t4 - t3, "run_s": t5 - t4, "trace_cpu_s": c1 - c0,
           "lower_cpu_s": c2 - c1, "compile_cpu_s": c3 - c2, "run_cpu_s": c5 - c4},
          (lowered, compiled, out))


def candidates(setup: Setup, levers: list[str],
               floor: bool = False) -> dict[str, tuple[Callable, Callable]]:
  out = {"rejax": (lambda: rejax_train(setup), contextlib.nullcontext),
         "ours": (lambda: ours_train(setup), contextlib.nullcontext)}
  if floor:
    out["networks"] = (lambda: networks_only(setup), contextlib.nullcontext)
  for lever in levers:
    context = prng.disabled if lever == "jax_keys" else contextlib.nullcontext
    out[f"ours:{lever}"] = (lambda lever=lever: ours_train(setup, lever), context)
  return out


def run_env(setup: Setup, levers: list[str], rounds: int, floor: bool = False) -> dict:
  keys = jax.random.split(jax.random.key(0), setup.seeds)
  cands = candidates(setup, levers, floor)
  samples: dict[str, list[dict]] = {name: [] for name in cands}
  stats = {}
  for r in range(rounds):
    for name, (build, context) in cands.items():
      times, (lowered, compiled, out) = measure_once(build, keys, context)
      samples[name].append(times)
      if r == 0:
        stats[name] = hlo_stats(lowered, compiled)
      print(f"  {setup.env_name} round {r} {name:>18}: " + " ".join(
          f"{k}={v:.3f}" for k, v in times.items()), file=sys.stderr, flush=True)
      del lowered, compiled, out
  result = {}
  for name, rows in samples.items():
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    med["trace_lower_compile_s"] = statistics.median(
        row["trace_s"] + row["lower_s"] + row["compile_s"] for row in rows)
    result[name] = {"median": med, "samples": rows, "hlo": stats[name]}
  base = result["rejax"]["median"]
  for row in result.values():
    med = row["median"]
    row["vs_rejax"] = {k: med[k] / base[k] for k in
                       ("trace_s", "lower_s", "compile_s", "trace_lower_compile_s", "run_s",
                        "trace_cpu_s", "compile_cpu_s")}
  return result


def print_table(env_name: str, result: dict) -> None:
  print(f"\n{env_name}  (medians; x = ours / rejax, <1 is faster)")
  print(f"{'candidate':>20} {'trace':>6} {'lower':>6} {'compile':>7} {'cpu':>6} {'total':>6} "
        f"{'run':>6} | {'trace x':>7} {'comp x':>6} {'cpu x':>6} {'total x':>7} {'run x':>6}"
        f" | {'hlo':>6} {'while':>5} {'fus':>5}")
  for name, row in result.items():
    m, x, h = row["median"], row["vs_rejax"], row["hlo"]
    print(f"{name:>20} {m['trace_s']:6.2f} {m['lower_s']:6.2f} {m['compile_s']:7.2f} "
          f"{m['compile_cpu_s']:6.2f} {m['trace_lower_compile_s']:6.2f} {m['run_s']:6.2f} | "
          f"{x['trace_s']:7.2f} {x['compile_s']:6.2f} {x['compile_cpu_s']:6.2f} "
          f"{x['trace_lower_compile_s']:7.2f} {x['run_s']:6.2f} | {h['hlo_instructions']:6d} "
          f"{h['hlo_while']:5d} {h['hlo_fusions']:5d}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--envs", default="CartPole-v1,Breakout-MinAtar")
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--scale", type=float, default=None,
                      help="fraction of rejax's total_timesteps to train (default: 1 for "
                           "CartPole, 0.1 for Breakout)")
  parser.add_argument("--levers", default="",
                      help=f"comma-separated variants of ours, or 'all': {', '.join(LEVERS)}")
  parser.add_argument("--floor", action="store_true",
                      help="also time the networks' arithmetic alone (`networks_only`)")
  parser.add_argument("--out")
  args = parser.parse_args()
  levers = list(LEVERS) if args.levers == "all" else [x for x in args.levers.split(",") if x]
  for lever in levers:
    if lever not in LEVERS:
      parser.error(f"--levers: unknown {lever!r}; known: {', '.join(LEVERS)}")
  jax.config.update("jax_enable_compilation_cache", False)
  results = {}
  for env_name in args.envs.split(","):
    if env_name not in CONFIGS:
      parser.error(f"--envs: unknown {env_name!r}; known: {', '.join(CONFIGS)}")
    scale = args.scale if args.scale is not None else (1.0 if env_name == "CartPole-v1" else 0.1)
    c = CONFIGS[env_name]
    iterations = max(1, round(scale * c["total_timesteps"] / (c["num_envs"] * c["num_steps"])))
    setup = Setup(env_name, iterations, args.seeds)
    result = run_env(setup, levers, args.rounds, args.floor)
    print_table(env_name, result)
    results[env_name] = {"source": SOURCES[env_name], "config": c, "iterations": iterations,
                         "env_steps_per_seed": iterations * setup.batch, "seeds": args.seeds,
                         "candidates": result}
  versions = {name: importlib.metadata.version(name) for name in ("rejax", "gymnax")}
  path = common.write("ppo_vs_rejax_speed", {
      "rounds": args.rounds, "levers": {k: LEVERS[k] for k in levers}, "peers": versions,
      "floor": networks_only.__doc__.split("\n")[0] if args.floor else None,
      "command": " ".join(["python", *sys.argv]), "results": results}, args.out)
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
