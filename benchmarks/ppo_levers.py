"""PPO throughput levers, side by side in one process (interleaved rounds).

PureJaxRL's CartPole PPO (`ppo_cartpole.py`'s config and optimizer), one seed,
`--updates` train steps fused in `make_run` under plain `jax.jit`, at 4 and
2048 environments. Each lever is a variant of the same program; the first row
is the library as shipped. Measured so far:

* `unroll=N` (`make_train_step(..., unroll=N)`): N loop iterations per compiled
  iteration in the rollout and in PPO's epoch and minibatch loops. Values are
  identical (checked here).
* `jax_keys`: the same program with JAX's own threefry lowering (a rolled
  `while` loop on CPU) instead of `reinforce_jax.xla.prng`'s unrolled hash, which
  `train_step` uses by default. The same numbers (checked here).
* `twin`: actor and critic as one `TwinMLP` (`value="twin"`): each layer one
  batched product over stacked weights instead of two products. The same
  networks as functions; its parameters are drawn differently, so its losses
  are not compared.
* `jax_shuffle`: the epochs shuffled with `jax.random.permutation` (sorts of
  key-value pairs) instead of `reinforce_jax.xla.prng.permutation` (sorts of one
  packed uint32 array), both drawn before the first epoch. Its minibatches
  differ, so its losses differ by more than rounding; its numbers are those
  of the commit before the change, which drew each epoch's order inside the
  epoch loop (`ab_commits.py` compares against that commit).

    python benchmarks/ppo_levers.py [--updates 20] [--variants shipped,jax_shuffle,twin]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import common
import jax
import numpy as np
import ppo_cartpole

import reinforce_jax as rj
from reinforce_jax.envs import CartPole
from reinforce_jax.rl.policies import CategoricalPolicy


def make_variant(num_envs: int, updates: int, unroll: int, value_head: str = "separate",
                 jax_keys: bool = False, jax_shuffle: bool = False):
  config = ppo_cartpole.purejaxrl_config(500_000, clip_value=True).replace(num_envs=num_envs)
  env, policy = CartPole(), CategoricalPolicy(2, hidden=(64, 64), value=value_head)
  algorithm = rj.algorithms.build(config.algorithm)
  if jax_shuffle:
    algorithm = algorithm._replace(
        schedule=algorithm.schedule._replace(permutation=jax.random.permutation))
  init_fn, train_step = rj.make_train_step(
      env, policy, ppo_cartpole.purejaxrl_optimizer(config), algorithm, num_envs=num_envs,
      rollout_length=config.rollout_length, unroll=unroll)
  key = jax.random.key(0)
  state = common.block(jax.jit(init_fn)(key))
  start = time.perf_counter()
  with rj.prng.disabled() if jax_keys else contextlib.nullcontext():
    run = jax.jit(rj.make_run(train_step, updates)).lower(state, key, updates).compile()
  compile_s = time.perf_counter() - start
  out = common.block(run(state, key, updates))

  def measure():
    return common.timed(lambda: common.block(run(state, key, updates))) / updates

  return config, compile_s, out, measure


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="4,2048")
  parser.add_argument("--variants", default="shipped,twin,unroll=2,unroll=4,unroll=8")
  parser.add_argument("--updates", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out")
  args = parser.parse_args()
  results = {"updates": args.updates, "sizes": {}}
  for num_envs in (int(n) for n in args.sizes.split(",")):
    updates = args.updates if num_envs <= 64 else max(2, args.updates // 10)
    candidates, rows, reference = {}, {}, None
    for name in ["shipped", *[v for v in args.variants.split(",") if v != "shipped"]]:
      unroll = int(name.split("=")[1]) if name.startswith("unroll=") else 1
      value_head = "twin" if name == "twin" else "separate"
      config, compile_s, out, measure = make_variant(
          num_envs, updates, unroll, value_head, jax_keys=name == "jax_keys",
          jax_shuffle=name == "jax_shuffle")
      loss = np.asarray(out.metrics["loss"])
      if reference is None:
        reference = loss
      same_program = value_head == "separate" and name != "jax_shuffle"
      rows[name] = {"compile_s": compile_s, "max_abs_loss_difference": (
          float(np.max(np.abs(loss - reference))) if same_program else None)}
      candidates[name] = measure
    timings = common.interleaved_medians(candidates, args.rounds)
    steps = num_envs * config.rollout_length
    base = timings["shipped"]["median_s"]
    print(f"{num_envs} envs x {config.rollout_length} steps, {updates} updates per measurement")
    for name, t in timings.items():
      rows[name].update(median_s_per_update=t["median_s"], env_steps_per_s=steps / t["median_s"],
                        time_ratio_to_shipped=t["median_s"] / base)
      r = rows[name]
      difference = r["max_abs_loss_difference"]
      print(f"  {name:10} {t['median_s'] * 1e3:8.2f} ms/update {r['env_steps_per_s']:>12,.0f} "
            f"env steps/s  x{r['time_ratio_to_shipped']:.2f} time  compile {r['compile_s']:.1f} s"
            f"  |d loss| {'n/a' if difference is None else f'{difference:.1e}'}")
    results["sizes"][str(num_envs)] = {"timings": timings, "rows": rows, "updates": updates}
  print(f"wrote {common.write('ppo_levers', results, args.out)}")


if __name__ == "__main__":
  main()
