"""Scaling over devices: the environment batch split over 1, 2, 4, ... local devices.

For each device count `n` the state is sharded with
`reinforce_jax.experiments.distributed.shard_state` (environments split, parameters
replicated) and the jitted `train_step` is called from a Python loop:

- strong scaling: the global batch stays `--num-envs`; ideal time is `t_1 / n`;
- weak scaling: each device keeps `--num-envs` environments (global `n` times
  larger); ideal time is `t_1`.

Timings for every `n` are interleaved rounds in one process. On a CPU, XLA's
host devices share the machine's cores: try
`XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/scaling.py`.

    python benchmarks/scaling.py [--env cartpole] [--num-envs 2048] [--rollout-length 128]
"""

from __future__ import annotations

import argparse

import common
import jax
import optax

import reinforce_jax as rj
from reinforce_jax.experiments.distributed import make_mesh, shard_state
from reinforce_jax.experiments.presets import PRESETS, make_policy


def make_case(env_name, algo, num_envs, rollout_length, num_devices, options):
  preset = PRESETS[env_name]
  env = preset.make_env()
  config = preset.configs[algo].replace(num_envs=num_envs, rollout_length=rollout_length)
  policy = make_policy(env, preset.hidden, value="separate" if config.uses_value else None)
  init_fn, train_step = rj.make_train_step(env, policy, optax.adam(1e-3), config)
  key = jax.random.key(0)
  state = shard_state(jax.jit(init_fn)(key), make_mesh(num_devices))
  # The YNNPACK option stays here: without it this Python loop of sharded steps
  # over 2 virtual CPU devices (2 cores) aborted in an all-reduce rendezvous in
  # 3 launches of 3 (jaxlib 0.10.2), with it none did.
  step = jax.jit(train_step, donate_argnums=0, compiler_options=options)
  compile_s, step = common.compile_seconds(step, state, key)
  return compile_s, common.python_loop_timer(step, state, key)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--env", choices=sorted(PRESETS), default="cartpole")
  parser.add_argument("--algo", choices=["reinforce", "a2c", "ppo"], default="reinforce")
  parser.add_argument("--num-envs", type=int, default=2048,
                      help="global batch (strong scaling) and per-device batch (weak)")
  parser.add_argument("--rollout-length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
  parser.add_argument("--out", help="JSON path (default benchmarks/results/...)")
  args = parser.parse_args()
  options = rj.recommended_compiler_options()
  counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= jax.local_device_count()]
  counts = [n for n in counts if args.num_envs % n == 0]
  cases, compile_s = {}, {}
  for n in counts:
    for mode, num_envs in (("strong", args.num_envs), ("weak", args.num_envs * n)):
      if mode == "weak" and n == 1:
        continue  # the same case as strong scaling on one device
      name = f"{mode}-{n}"
      compile_s[name], cases[name] = make_case(
          args.env, args.algo, num_envs, args.rollout_length, n, options)
  calls = {name: max(2, int(args.budget / measure(2))) for name, measure in cases.items()}
  timings = common.interleaved_medians(
      {name: (lambda m=measure, c=calls[name]: m(c)) for name, measure in cases.items()},
      args.rounds)
  base = timings["strong-1"]["median_s"]
  rows = []
  print(f"{args.env} {args.algo}, rollout length {args.rollout_length}, "
        f"{jax.local_device_count()} x {jax.devices()[0].device_kind}")
  print(f"{'devices':>7} {'mode':>6} {'global envs':>11} {'step ms':>9} {'env steps/s':>13} "
        f"{'efficiency':>10}")
  for n in counts:
    for mode in ("strong", "weak"):
      name = "strong-1" if n == 1 else f"{mode}-{n}"
      if n == 1 and mode == "weak":
        continue
      step_s = timings[name]["median_s"]
      global_envs = args.num_envs * (n if mode == "weak" else 1)
      ideal = base / n if mode == "strong" else base
      row = {"devices": n, "mode": mode, "global_envs": global_envs,
             "compile_s": compile_s[name], "timing": timings[name],
             "env_steps_per_s": global_envs * args.rollout_length / step_s,
             "efficiency": ideal / step_s}
      rows.append(row)
      print(f"{n:>7} {mode:>6} {global_envs:>11} {step_s * 1e3:>9.2f} "
            f"{row['env_steps_per_s']:>13,.0f} {row['efficiency']:>10.2f}", flush=True)
  path = common.write(f"scaling-{args.env}", {
      "env": args.env, "algo": args.algo, "num_envs": args.num_envs,
      "rollout_length": args.rollout_length, "compiler_options": options, "rows": rows},
      args.out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
