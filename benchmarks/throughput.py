"""Episodes per second of the jitted `train_step` for 1 to 65536 parallel environments.

For each size: compile time (ahead of time, separately); `jax.jit(train_step)`
with nothing else, called from a Python loop (what a user writes: the headline
row); beside it the tuned step (donated state, `recommended_compiler_options()`);
the same steps fused into one program (`make_run`, plain `jax.jit`); and the
shortest hand-written fused loop (`reference.py`, plain `jax.jit`), timed in
interleaved rounds. Writes JSON to benchmarks/results/ and prints a table.

    python benchmarks/throughput.py                       # the seed's bandit
    python benchmarks/throughput.py --env cartpole --rollout-length 128
"""

from __future__ import annotations

import argparse
import math

import common
import jax
import optax
import reference

import reinforce_jax as rj
from reinforce_jax.experiments.presets import PRESETS, make_policy


def measure_size(env_name, num_envs, rollout_length, key_impl, rounds, budget_s,
                 algo="reinforce", baseline="none", value_head="separate"):
  preset = PRESETS[env_name]
  env = preset.make_env()
  optimizer = optax.adam(1e-2)
  config = preset.configs[algo].replace(num_envs=num_envs, rollout_length=rollout_length,
                                        baseline=baseline)
  policy = make_policy(env, preset.hidden, value=value_head if config.uses_value else None)
  init_fn, train_step = rj.make_train_step(env, policy, optimizer, config)
  key = jax.random.key(0, impl=key_impl)
  state = common.block(jax.jit(init_fn)(key))
  compile_s, step = common.compile_seconds(jax.jit(train_step), state, key)
  python_loop = common.python_loop_timer(step, state, key)
  tuned = jax.jit(train_step, donate_argnums=0,
                  compiler_options=rj.recommended_compiler_options())
  _, tuned = common.compile_seconds(tuned, state, key)
  tuned_loop = common.python_loop_timer(tuned, common.block(jax.jit(init_fn)(key)), key)

  # Calibrate the number of calls so that one measurement lasts about budget_s.
  calls = max(3, min(5000, int(budget_s / python_loop(3))))

  run = jax.jit(rj.make_run(train_step, calls))
  run_compile_s, run = common.compile_seconds(run, state, key, calls)
  def fused_run():
    return common.timed(lambda: common.block(run(state, key, calls))) / calls

  candidates = {"train_step_python_loop": lambda: python_loop(calls),
                "train_step_python_loop_tuned": lambda: tuned_loop(calls),
                "make_run_fused": fused_run}
  if env_name == "bandit" and rollout_length == 1 and algo == "reinforce" and baseline == "none":
    loop = jax.jit(reference.make_fused_loop(num_envs, optimizer), static_argnums=3)
    params = reference.init_params()
    opt_state = optimizer.init(params)
    common.block(loop(params, opt_state, key, calls))
    candidates["reference_fused_loop"] = lambda: common.timed(
        lambda: common.block(loop(params, opt_state, key, calls))) / calls
  timings = common.interleaved_medians(candidates, rounds)
  steps_per_episode = 1 if env_name == "bandit" else None
  row = {
      "num_envs": num_envs, "rollout_length": rollout_length,
      "compile_s": {"train_step": compile_s, "make_run": run_compile_s},
      "calls_per_measurement": calls, "timings": timings,
  }
  step_s = timings["train_step_python_loop"]["median_s"]
  row["env_steps_per_s"] = num_envs * rollout_length / step_s
  row["env_steps_per_s_tuned"] = (
      num_envs * rollout_length / timings["train_step_python_loop_tuned"]["median_s"])
  if steps_per_episode:
    row["episodes_per_s"] = num_envs * rollout_length / steps_per_episode / step_s
  if "reference_fused_loop" in timings:
    row["ratio_python_loop_to_reference"] = step_s / timings["reference_fused_loop"]["median_s"]
  if rollout_length == 1:  # no loop in the step: XLA's cost analysis counts it exactly
    cost = common.program_cost(step)
    row["cost"] = cost
    row["achieved"] = {"bytes_per_s": cost["bytes_accessed"] / step_s,
                       "flops_per_s": cost["flops"] / step_s}
  return row


def add_fractions(rows, peaks):
  """Adds each row's fraction of the measured and datasheet peaks."""
  for row in rows:
    if "achieved" not in row:
      continue
    achieved = row["achieved"]
    row["fraction_of_peak"] = {
        "measured_bandwidth": achieved["bytes_per_s"] / peaks["measured_bytes_per_s"],
        "spec_bandwidth": (achieved["bytes_per_s"] / peaks["spec"]["bytes_per_s"]
                           if peaks["spec"]["bytes_per_s"] else None),
        "spec_fp32_flops": (achieved["flops_per_s"] / peaks["spec"]["fp32_flops_per_s"]
                            if peaks["spec"]["fp32_flops_per_s"] else None),
    }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--env", choices=sorted(PRESETS), default="bandit")
  parser.add_argument("--sizes", default=",".join(str(4**i) for i in range(9)),
                      help="comma-separated num_envs (default 1,4,...,65536)")
  parser.add_argument("--rollout-length", type=int, default=1)
  parser.add_argument("--algo", default="reinforce", choices=["reinforce", "a2c", "ppo"])
  parser.add_argument("--baseline", default="none",
                      help="REINFORCE's baseline (default none)")
  parser.add_argument("--value-head", default="separate", choices=["shared", "separate"],
                      help="for a2c, ppo and the value baseline (default separate)")
  parser.add_argument("--key-impl", default="threefry2x32",
                      choices=common.KEY_IMPLS)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--budget", type=float, default=0.25,
                      help="seconds per measurement (default 0.25)")
  parser.add_argument("--out", help="JSON path (default benchmarks/results/...)")
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  rows = []
  header = (f"{'num_envs':>9} {'compile s':>9} {'step us':>10} {'tuned us':>10} "
            f"{'fused us':>10} {'ref us':>9} {'loop/ref':>8} {'env steps/s':>13}")
  print(f"{args.env}, {args.algo}, baseline {args.baseline}, "
        f"rollout length {args.rollout_length}, {args.key_impl} keys, "
        f"{jax.devices()[0].device_kind}; step = plain jax.jit(train_step), tuned = donated "
        f"state + {rj.recommended_compiler_options() or 'no options'}")
  print(header)
  for n in sizes:
    row = measure_size(args.env, n, args.rollout_length, args.key_impl, args.rounds,
                       args.budget, args.algo, args.baseline, args.value_head)
    rows.append(row)
    t = row["timings"]
    ref = t.get("reference_fused_loop", {}).get("median_s", math.nan)
    print(f"{n:>9} {row['compile_s']['train_step']:>9.2f} "
          f"{t['train_step_python_loop']['median_s'] * 1e6:>10.1f} "
          f"{t['train_step_python_loop_tuned']['median_s'] * 1e6:>10.1f} "
          f"{t['make_run_fused']['median_s'] * 1e6:>10.1f} {ref * 1e6:>9.1f} "
          f"{row.get('ratio_python_loop_to_reference', math.nan):>8.2f} "
          f"{row['env_steps_per_s']:>13,.0f}", flush=True)
  peaks = {"measured_bytes_per_s": common.measured_bandwidth(), "spec": common.spec_peaks()}
  add_fractions(rows, peaks)
  for row in rows:
    if "fraction_of_peak" in row:
      f = row["fraction_of_peak"]
      spec = f"{f['spec_bandwidth']:.1%}" if f["spec_bandwidth"] is not None else "n/a"
      print(f"{row['num_envs']:>9}: {row['cost']['bytes_accessed'] / 1e6:.2f} MB and "
            f"{row['cost']['flops'] / 1e6:.2f} MFLOP per step -> "
            f"{row['achieved']['bytes_per_s'] / 1e9:.1f} GB/s = "
            f"{f['measured_bandwidth']:.1%} of the measured streaming bandwidth "
            f"({peaks['measured_bytes_per_s'] / 1e9:.1f} GB/s), {spec} of the datasheet's"
            + (" (over 100%: XLA counts intermediates that stay in cache)"
               if f["measured_bandwidth"] > 1 else ""))
  name = f"throughput-{args.env}"
  name += "" if args.algo == "reinforce" else f"-{args.algo}"
  name += "" if args.baseline == "none" else f"-{args.baseline}"
  name += f"-{args.value_head}" if args.baseline == "value" or args.algo != "reinforce" else ""
  name += "" if args.key_impl == "threefry2x32" else f"-{args.key_impl}"
  path = common.write(name, {"env": args.env, "algo": args.algo, "baseline": args.baseline,
                             "value_head": args.value_head,
                             "key_impl": args.key_impl,
                             "tuned_compiler_options": rj.recommended_compiler_options(),
                             "peaks": peaks,
                             "rows": rows}, args.out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
