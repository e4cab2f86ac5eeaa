"""The seed's PyTorch loop against reinforce_jax on the same machine, in one run.

* `torch_seed`: the tutorial's loop verbatim (one episode per Python iteration:
  forward, sample, reward, `-log_prob * reward`, backward, Adam step), printing
  removed. Needs the torch extra: `pip install -e '.[torch]'`.
* `train_step_plain_jit`: what a user writes, `step = jax.jit(train_step)` with
  nothing else, called from a Python loop with 4096 parallel one-step episodes.
  This is the row the targets are for.
* `train_step_donated`: `jax.jit(train_step, donate_argnums=0)`: the state's
  buffers are reused instead of allocated on every call.
* `train_step_tuned`: the same step with a donated state and
  `reinforce_jax.recommended_compiler_options()`, reported beside it.
* `make_run_plain_jit`: the same steps fused into one program (`make_run`);
  `make_train_plain_jit`: the whole run from a key (`make_train`), and
  `make_train_vmap_4_seeds_per_seed`: `jax.vmap` of it over 4 seeds, per seed.
* `reference_fused_loop`: the shortest hand-written fused JAX loop doing the same
  work (benchmarks/reference.py) under plain `jax.jit`; `_tuned` with the
  compiler options; `_per_env_keys` also draws a key per environment, as a
  gymnax-style vmapped environment must.

Timings are interleaved rounds; medians and ratios come from this one run.

    python benchmarks/vs_pytorch_seed.py [--num-envs 4096] [--key-impl unsafe_rbg]
"""

from __future__ import annotations

import argparse

import common
import jax
import optax
import reference

import reinforce_jax as rj
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.rl.policies import CategoricalPolicy

TARGET_SPEEDUP_VS_TORCH = 10_000
TARGET_LOOP_TO_REFERENCE = 1.1  # the bar: 1.3


def torch_seed_loop(num_episodes: int) -> float:
  """Seconds per episode of the seed tutorial's training loop."""
  import torch
  import torch.nn as nn
  import torch.optim as optim
  from torch.distributions import Categorical

  class PolicyNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.fc = nn.Linear(1, 2)

    def forward(self, x):
      return self.fc(x)

  policy = PolicyNet()
  optimizer = optim.Adam(policy.parameters(), lr=0.01)
  start = common.time.perf_counter()
  for _ in range(num_episodes):
    x = torch.tensor([[1.0]]) if torch.rand(1).item() > 0.5 else torch.tensor([[-1.0]])
    logits = policy(x)
    dist = Categorical(logits=logits)
    action = dist.sample()
    log_prob = dist.log_prob(action)
    correct = int((x.item() > 0 and action.item() == 1) or (x.item() < 0 and action.item() == 0))
    reward = torch.tensor(float(correct))
    loss = -log_prob * reward
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
  return (common.time.perf_counter() - start) / num_episodes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-envs", type=int, default=4096)
  parser.add_argument("--steps", type=int, default=400, help="train steps per measurement")
  parser.add_argument("--torch-episodes", type=int, default=1000)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--key-impl", default="threefry2x32",
                      choices=common.KEY_IMPLS)
  parser.add_argument("--out")
  args = parser.parse_args()
  try:
    import torch
    torch.manual_seed(0)
  except ImportError:
    torch = None
    print("torch is not installed (pip install -e '.[torch]'): skipping the seed's loop")

  env, policy = ContextualBandit(), CategoricalPolicy(2, hidden=())
  optimizer = optax.adam(0.01)
  config = rj.TrainConfig(num_envs=args.num_envs, rollout_length=1)
  init_fn, train_step = rj.make_train_step(env, policy, optimizer, config)
  key = jax.random.key(0, impl=args.key_impl)
  options = rj.recommended_compiler_options()
  state = common.block(jax.jit(init_fn)(key))
  steps = {"train_step_plain_jit": jax.jit(train_step),
           "train_step_donated": jax.jit(train_step, donate_argnums=0),
           "train_step_tuned": jax.jit(train_step, donate_argnums=0, compiler_options=options)}
  candidates = {}
  for name, step in steps.items():
    timer = common.python_loop_timer(step, state, key)
    candidates[name] = lambda timer=timer: timer(args.steps)
    state = common.block(jax.jit(init_fn)(key))  # the tuned step donates its state
  run = jax.jit(rj.make_run(train_step, args.steps))
  common.block(run(state, key, args.steps))
  candidates["make_run_plain_jit"] = lambda: common.timed(
      lambda: common.block(run(state, key, args.steps))) / args.steps
  # The whole run as one function of a key, alone and vmapped over seeds (per seed).
  whole = rj.make_train(env, policy, optimizer, config.replace(num_steps=args.steps))
  train, seeds = jax.jit(whole), jax.random.split(key, 4)
  train_seeds = jax.jit(jax.vmap(whole))
  common.block((train(key), train_seeds(seeds)))
  candidates["make_train_plain_jit"] = lambda: common.timed(
      lambda: common.block(train(key))) / args.steps
  candidates["make_train_vmap_4_seeds_per_seed"] = lambda: common.timed(
      lambda: common.block(train_seeds(seeds))) / args.steps / len(seeds)
  variants = [("reference_fused_loop", False, {}),
              ("reference_fused_loop_tuned", False, options),
              ("reference_fused_loop_per_env_keys", True, {})]
  for name, per_env, opts in variants:
    loop = jax.jit(reference.make_fused_loop(args.num_envs, optimizer, per_env_keys=per_env),
                   static_argnums=3, compiler_options=opts)
    params = reference.init_params()
    opt_state = optimizer.init(params)
    common.block(loop(params, opt_state, key, args.steps))
    candidates[name] = (lambda loop=loop, p=params, o=opt_state: common.timed(
        lambda: common.block(loop(p, o, key, args.steps))) / args.steps)
  if torch is not None:
    torch_seed_loop(50)  # warm-up
    candidates["torch_seed"] = lambda: torch_seed_loop(args.torch_episodes)
  timings = common.interleaved_medians(candidates, args.rounds)

  def median(name):
    return timings[name]["median_s"]

  episodes_per_s = {name: (1 if name == "torch_seed" else args.num_envs) / t["median_s"]
                    for name, t in timings.items()}
  results = {
      "num_envs": args.num_envs, "key_impl": args.key_impl, "timings": timings,
      "episodes_per_s": episodes_per_s,
      "ratio_plain_jit_to_reference": median("train_step_plain_jit") / median(
          "reference_fused_loop"),
      "ratio_donated_to_reference": median("train_step_donated") / median(
          "reference_fused_loop"),
      "ratio_tuned_to_reference_tuned": median("train_step_tuned") / median(
          "reference_fused_loop_tuned"),
      "ratio_make_run_to_reference": median("make_run_plain_jit") / median(
          "reference_fused_loop"),
      "ratio_make_train_to_reference": median("make_train_plain_jit") / median(
          "reference_fused_loop"),
      "ratio_make_train_vmap_per_seed_to_reference": median(
          "make_train_vmap_4_seeds_per_seed") / median("reference_fused_loop"),
      "ratio_plain_jit_to_reference_per_env_keys": median("train_step_plain_jit") / median(
          "reference_fused_loop_per_env_keys"),
      "tuned_compiler_options": options,
      "targets": {"speedup_vs_torch_seed": TARGET_SPEEDUP_VS_TORCH,
                  "ratio_plain_jit_to_reference": TARGET_LOOP_TO_REFERENCE},
  }
  if torch is not None:
    results["speedup_vs_torch_seed"] = {
        name: episodes_per_s[name] / episodes_per_s["torch_seed"]
        for name in ("train_step_plain_jit", "train_step_donated", "train_step_tuned",
                     "make_run_plain_jit")}
  print(f"{'':38} {'us/step':>10} {'episodes/s':>14}")
  for name, t in timings.items():
    print(f"{name:38} {t['median_s'] * 1e6:>10.1f} {episodes_per_s[name]:>14,.0f}")
  if torch is not None:
    speedup = results["speedup_vs_torch_seed"]
    print(f"speedup over the seed's PyTorch loop: plain jax.jit "
          f"{speedup['train_step_plain_jit']:,.0f}x (target >= {TARGET_SPEEDUP_VS_TORCH:,}x); "
          f"donated {speedup['train_step_donated']:,.0f}x; "
          f"tuned {speedup['train_step_tuned']:,.0f}x; "
          f"make_run {speedup['make_run_plain_jit']:,.0f}x")
  print(f"plain jax.jit(train_step) from Python / shortest fused loop (plain jax.jit): "
        f"{results['ratio_plain_jit_to_reference']:.2f} (target <= {TARGET_LOOP_TO_REFERENCE}, "
        f"bar 1.3)")
  print(f"  donated step / loop: {results['ratio_donated_to_reference']:.2f}; "
        f"tuned step / tuned loop: {results['ratio_tuned_to_reference_tuned']:.2f}; "
        f"make_run / loop: {results['ratio_make_run_to_reference']:.2f}; "
        f"make_train: {results['ratio_make_train_to_reference']:.2f}; vmap over 4 seeds, per "
        f"seed: {results['ratio_make_train_vmap_per_seed_to_reference']:.2f}; "
        f"plain step / loop with a key per environment: "
        f"{results['ratio_plain_jit_to_reference_per_env_keys']:.2f}")
  suffix = "" if args.key_impl == "threefry2x32" else f"-{args.key_impl}"
  print(f"wrote {common.write('vs_pytorch_seed' + suffix, results, args.out)}")


if __name__ == "__main__":
  main()
