"""Tokens per second of one GRPO loss-and-gradient: `reinforce_jax.sequence` against tunix.

Both sides differentiate the same loss of the same tiny random `tunix` Qwen3 on the same
batch, each under plain `jax.jit`, in one process:

* ours: `jax.value_and_grad(train.sequence_loss)`, the loss `make_sequence_train_step`
  differentiates, with `nnx_models.tunix_policy(model).apply` as the model (tunix's clipped
  GRPO settings: `clip_eps=0.2`, `aggregation="sequence_mean"`, k1 KL with `kl_coef=0.04`);
* tunix: `jax.value_and_grad(tunix.rl.algo_core.grpo_loss_fn)` on a `TrainExample` holding the
  same prompts, completions (padded after EOS with a pad token the model never samples),
  mask, advantages and old/reference log-probs, its `GRPOConfig` at the defaults
  (`beta=0.04`, `epsilon=0.2`, `loss_agg_mode="sequence-mean-token-mean"`,
  `kl_loss_mode="kl"`).

The batch: `B` sort prompts (4 digits of 0-4), `G` completions of each sampled from the model
(the old and reference log-probs are the model's own, so every ratio is 1 and the KL 0, as
in a first update), GRPO advantages of the sort reward. The two losses and gradients are
compared first (`agreement`), then timed: medians of interleaved rounds (the order rotated
from round to round), each round a few calls of each, in tokens (prompt and completion,
`B * G * (P + T)`) per second. A third row, `model_only`, times the model's forward and
backward pass alone (the gradient of the summed log-probs): the floor both losses sit on.
Each row also has XLA's count of the compiled program's FLOPs and bytes accessed (exact
here: the programs have no loops) and, beside the wall time, the median CPU time of this
process per call (all threads; on a shared CPU it is steadier than the wall time, which
includes waiting for the cores).

    .venv/bin/python benchmarks/sequence_vs_tunix.py [--prompts 32] [--group 8] [--width 64]

Writes `benchmarks/results/sequence_vs_tunix-<device>.json`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tunix.models.qwen3 import model as qwen3
from tunix.rl import algo_core
from tunix.rl import common as tunix_common
from tunix.rl.grpo import grpo_learner

from reinforce_jax.sequence import advantages as advantages_lib
from reinforce_jax.sequence import nnx_models, tasks, train
from reinforce_jax.sequence.sampling import sample, token_log_probs


def _model(vocab: int, width: int, layers: int, seed: int) -> qwen3.Qwen3:
  config = qwen3.ModelConfig(
      num_layers=layers, vocab_size=vocab, embed_dim=width, hidden_dim=2 * width,
      num_heads=4, head_dim=width // 4, num_kv_heads=2, rope_theta=10_000, norm_eps=1e-6)
  rngs = nnx.Rngs(seed)
  model = qwen3.Qwen3(config, rngs=rngs)
  for layer in model.layers:  # tunix starts the MLPs at zero (for a checkpoint to fill)
    for linear in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
      linear.kernel.set_value(nnx.initializers.lecun_normal()(rngs.params(), linear.kernel.shape))
  return model


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--prompts", type=int, default=32, help="B, prompts in the batch")
  parser.add_argument("--group", type=int, default=8, help="G, completions per prompt")
  parser.add_argument("--width", type=int, default=64, help="the model's embed_dim")
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--vocab", type=int, default=None,
                      help="the model's vocabulary (default: the task's 7 tokens and a pad)")
  parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
  parser.add_argument("--calls", type=int, default=10, help="calls per candidate per round")
  parser.add_argument("--out", default=None, help="the JSON path (default: results/)")
  args = parser.parse_args()

  task = tasks.SortTask(num_digits=4, alphabet=5, num_prompts=args.prompts)
  vocab = args.vocab or task.vocab_size + 1
  if vocab <= task.vocab_size:
    parser.error(f"--vocab must exceed the task's {task.vocab_size} tokens (one pads)")
  pad_id = vocab - 1  # a token the task never uses: tunix's padding
  model = _model(vocab, args.width, args.layers, seed=0)
  p, t, g = task.prompt_length, task.max_new_tokens, args.group
  policy = nnx_models.tunix_policy(model, max_len=p + t)
  params = jax.jit(policy.init)(jax.random.key(0))

  # The batch: sampled once from the model (never the pad token, which tunix would take for
  # padding), rewarded, GRPO advantages; old and reference log-probs are the model's own.
  def no_pad(w, tokens):
    return policy.apply(w, tokens).at[..., pad_id].set(-jnp.inf)

  prompts = task.sample_prompts(jax.random.key(1))
  out = jax.jit(lambda w: sample(jax.random.key(2), no_pad, w, prompts, max_new_tokens=t,
                                 eos_id=task.eos_id, group_size=g))(params)
  completions, mask = out.tokens[:, p:], out.mask[:, p:]
  rewards = task.reward(out.tokens[:, :p], completions, mask)
  advantages = advantages_lib.relative_advantages(
      rewards.reshape(-1, g), baseline="mean", scale="group", ddof=1).reshape(-1)
  old_log_probs = jax.jit(token_log_probs, static_argnums=0)(
      policy.apply, params, out.tokens, out.mask)[:, p:]
  batch = train.SequenceBatch(tokens=out.tokens, mask=mask, rewards=rewards,
                              advantages=advantages, old_log_probs=old_log_probs,
                              ref_log_probs=old_log_probs)
  example = tunix_common.TrainExample(
      prompt_ids=out.tokens[:, :p], prompt_mask=jnp.ones((out.tokens.shape[0], p), jnp.int32),
      completion_ids=jnp.where(mask > 0, completions, pad_id), completion_mask=mask,
      advantages=advantages, ref_per_token_logps=old_log_probs,
      old_per_token_logps=old_log_probs)

  config = train.SequenceConfig(max_new_tokens=t, eos_id=task.eos_id, group_size=g,
                                estimator="grpo", aggregation="sequence_mean", clip_eps=0.2,
                                kl_coef=0.04, kl_estimator="k1")
  algo_config = grpo_learner.GRPOConfig(num_generations=g)
  algo_config.temperature = 1.0  # what GRPOLearner sets from its rollout config

  def ours(params, batch):
    return jax.value_and_grad(lambda w: train.sequence_loss(policy.apply, w, batch, config),
                              has_aux=True)(params)

  graphdef, state = nnx.split(model)

  def theirs(state, example):
    return jax.value_and_grad(
        lambda s: algo_core.grpo_loss_fn(nnx.merge(graphdef, s), example, algo_config,
                                         pad_id, task.eos_id), has_aux=True)(state)

  fns, compile_s = {}, {}
  compile_s["reinforce_jax"], fns["reinforce_jax"] = common.compile_seconds(
      jax.jit(ours), params, batch)
  compile_s["tunix"], fns["tunix"] = common.compile_seconds(jax.jit(theirs), state, example)

  def model_only(params, batch):  # the floor: the model's forward and backward, no loss
    full = jnp.concatenate([jnp.zeros((batch.mask.shape[0], p)), batch.mask], axis=1)
    return jax.value_and_grad(lambda w: jnp.sum(token_log_probs(
        policy.apply, w, batch.tokens, full)))(params)

  compile_s["model_only"], fns["model_only"] = common.compile_seconds(
      jax.jit(model_only), params, batch)
  inputs = {"reinforce_jax": (params, batch), "tunix": (state, example),
            "model_only": (params, batch)}
  cost = {name: common.program_cost(fn) for name, fn in fns.items()}  # no loops: exact
  (our_loss, _), our_grads = common.block(fns["reinforce_jax"](params, batch))
  (their_loss, _), their_grads = common.block(fns["tunix"](state, example))
  our_g, their_g = _flat(our_grads), _flat(their_grads)
  agreement = {"loss": [float(our_loss), float(their_loss)],
               "max_abs_grad_diff": float(np.max(np.abs(our_g - their_g))),
               "grad_norm": [float(np.linalg.norm(our_g)), float(np.linalg.norm(their_g))]}

  cpu_s = {name: [] for name in fns}  # CPU seconds of this process (all its threads) per call

  def measure(name):
    fn, fn_args = fns[name], inputs[name]

    def once():
      start = time.process_time()
      seconds = common.timed(lambda: common.block(fn(*fn_args)), repeats=args.calls)
      cpu_s[name].append((time.process_time() - start) / args.calls)
      return seconds

    return once

  # Interleaved rounds, the order rotated each round so that no candidate always goes first.
  names, candidates = list(fns), {name: measure(name) for name in fns}
  wall_s = {name: [] for name in fns}
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      wall_s[name].append(candidates[name]())
  times = {name: {"median_s": float(np.median(v)), "min_s": min(v), "max_s": max(v),
                  "rounds": len(v)} for name, v in wall_s.items()}
  tokens = out.tokens.size
  for name, row in times.items():
    row["median_cpu_s"] = float(np.median(cpu_s[name]))
    row["tokens_per_s"] = tokens / row["median_s"]
    row["compile_s"] = compile_s[name]
    row.update(cost[name])
  ratio = times["tunix"]["median_s"] / times["reinforce_jax"]["median_s"]
  cpu_ratio = times["tunix"]["median_cpu_s"] / times["reinforce_jax"]["median_cpu_s"]
  payload = {
      "shape": {"prompts": args.prompts, "group_size": g, "prompt_len": p, "new_tokens": t,
                "vocab": vocab, "embed_dim": args.width, "layers": args.layers,
                "tokens_per_call": tokens},
      "agreement": agreement,
      "times": times,
      "speedup_vs_tunix": ratio,
      "cpu_time_speedup_vs_tunix": cpu_ratio,
      "tunix_version": importlib.metadata.version("google-tunix"),
      "rounds": args.rounds, "calls_per_round": args.calls,
      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  path = common.write("sequence_vs_tunix", payload, args.out)
  for name, row in times.items():
    print(f"{name:>14}: {row['tokens_per_s']:10,.0f} tokens/s (median {row['median_s'] * 1e3:.1f}"
          f" ms, min {row['min_s'] * 1e3:.1f} ms, CPU {row['median_cpu_s'] * 1e3:.1f} ms; "
          f"compile {row['compile_s']:.1f} s; {row['flops'] / 1e6:.1f} MFLOP, "
          f"{row['bytes_accessed'] / 1e6:.1f} MB accessed)")
  print(f"reinforce_jax / tunix: {ratio:.2f}x (CPU time {cpu_ratio:.2f}x); losses "
        f"{agreement['loss']}, max |grad diff| {agreement['max_abs_grad_diff']:.2e}; "
        f"wrote {path}")


if __name__ == "__main__":
  main()
