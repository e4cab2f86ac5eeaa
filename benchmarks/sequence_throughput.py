"""Tokens per second of `reinforce_jax.sequence`: sampled (KV cache vs none) and trained.

Sampling: completions of `T` tokens after `P`-token prompts from a
`CausalTransformer`, with its key/value cache (`models.decoder`: the prompt
once, then one position per token) and without (every token reruns the model
over the whole `[N, P + T]` buffer). The two draw the same tokens (checked
here). Two shapes: the sort preset's (`P = T = 6`, where the cache buys
little) and a longer one (`P = 16, T = 64`, where recomputation grows with `T`).

Training: one full `train_step` of the sort preset (sample, score, update),
in completion tokens per second, beside the same step traced under
`prng.disabled()` (JAX's own threefry lowering instead of the unrolled keys).

    .venv/bin/python benchmarks/sequence_throughput.py [--rounds 5]

Writes `benchmarks/results/sequence_throughput-<device>.json`.
"""

from __future__ import annotations

import argparse

import common
import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax import prng
from reinforce_jax.experiments.presets import PRESETS
from reinforce_jax.sequence import models
from reinforce_jax.sequence.sampling import sample

SHAPES = {
    # name: (prompts B, group G, prompt P, new tokens T, d_model, layers)
    "sort": (32, 8, 6, 6, 64, 2),
    "long": (16, 4, 16, 64, 128, 4),
}


def _sampling(name: str, rounds: int) -> dict:
  b, g, p, t, d, layers = SHAPES[name]
  model = models.CausalTransformer(12, max_len=p + t, d_model=d, num_heads=4, num_layers=layers)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, p + t), jnp.int32))
  prompts = jax.random.randint(jax.random.key(1), (b, p), 0, 10)
  fns = {}
  for label, decoder in (("cached", models.decoder(model)), ("uncached", None)):
    fns[label] = jax.jit(lambda k, w, decoder=decoder: sample(
        k, model.apply, w, prompts, max_new_tokens=t, group_size=g, decoder=decoder))
  compile_s = {}
  for label, fn in fns.items():  # compiled before any call, so no cache is hit
    compile_s[label], fns[label] = common.compile_seconds(fn, jax.random.key(2), params)
  outs = {label: common.block(fn(jax.random.key(2), params)) for label, fn in fns.items()}
  same = bool(np.array_equal(outs["cached"].tokens, outs["uncached"].tokens))
  times = common.interleaved_medians(
      {label: (lambda fn=fn: common.timed(lambda: common.block(fn(jax.random.key(3), params)),
                                          repeats=3)) for label, fn in fns.items()}, rounds)
  tokens = b * g * t
  return {
      "shape": {"prompts": b, "group_size": g, "prompt_len": p, "new_tokens": t, "d_model": d,
                "layers": layers},
      "same_tokens": same,
      "compile_s": compile_s,
      "seconds": times,
      "tokens_per_s": {k: tokens / v["median_s"] for k, v in times.items()},
      "cache_speedup": times["uncached"]["median_s"] / times["cached"]["median_s"],
  }


def _training(rounds: int) -> dict:
  preset = PRESETS["sort"]
  config = preset.configs["reinforce"]
  init_fn, train_step = preset.build_step(config, dict(preset.options))
  step = jax.jit(train_step, donate_argnums=0)
  key = jax.random.key(1)
  with prng.disabled():  # the same step with JAX's own (rolled, on CPU) threefry
    jax_keys_step = jax.jit(lambda s, k: train_step(s, k), donate_argnums=0).lower(
        init_fn(jax.random.key(0)), key).compile()
  measure = common.python_loop_timer(step, init_fn(jax.random.key(0)), key)
  measure_jax_keys = common.python_loop_timer(jax_keys_step, init_fn(jax.random.key(0)), key)
  times = common.interleaved_medians({"train_step": lambda: measure(20),
                                      "train_step_jax_keys": lambda: measure_jax_keys(20)},
                                     rounds)
  tokens = config.num_envs * preset.options["group_size"] * (_task_tokens())
  return {"prompts": config.num_envs, "group_size": preset.options["group_size"],
          "completion_tokens_per_step": tokens, "seconds_per_step": times["train_step"],
          "seconds_per_step_jax_keys": times["train_step_jax_keys"],
          "time_ratio_jax_keys_to_shipped": (times["train_step_jax_keys"]["median_s"]
                                             / times["train_step"]["median_s"]),
          "trained_tokens_per_s": tokens / times["train_step"]["median_s"],
          "steps_per_s": 1 / times["train_step"]["median_s"]}


def _task_tokens() -> int:
  return PRESETS["sort"].make_env().max_new_tokens


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out")
  args = parser.parse_args()
  payload = {"sampling": {name: _sampling(name, args.rounds) for name in SHAPES},
             "training": _training(args.rounds)}
  for name, result in payload["sampling"].items():
    rates = result["tokens_per_s"]
    print(f"sampling {name}: cached {rates['cached']:,.0f} tok/s, uncached "
          f"{rates['uncached']:,.0f} tok/s ({result['cache_speedup']:.2f}x), same tokens: "
          f"{result['same_tokens']}")
  train = payload["training"]
  print(f"training sort: {train['trained_tokens_per_s']:,.0f} completion tok/s, "
        f"{train['steps_per_s']:.1f} steps/s; with JAX's own threefry "
        f"{train['time_ratio_jax_keys_to_shipped']:.2f}x the time")
  print(common.write("sequence_throughput", payload, args.out))


if __name__ == "__main__":
  main()
