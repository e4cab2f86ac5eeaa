"""A sequence loss of your own: clipped GRPO whose tokens are averaged over each group's length.

`make_sequence_train_step(..., loss_fn=...)` takes `loss_fn(log_probs, batch) -> scalar`:
`log_probs` [N, T] carry the gradient, `batch` (a `SequenceBatch`) holds the rewards, the
sampling log-probs and the mask. Dividing each completion's sum by its own length (GRPO)
favours short right answers and long wrong ones (Liu et al., 2025, arXiv:2503.20783); the
mean length of its group divides all its members alike. Prints the mean rewards of the
first and last 10 steps: `python examples/custom_sequence_loss.py [--steps 200]`.
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reinforce_jax.sequence import advantages, aggregation, importance, models, tasks, train

GROUP = 8


def per_group_length(values, mask):
  """Each completion's token sum over the mean length of its group, averaged over rows."""
  lengths = jnp.sum(mask, axis=1).reshape(-1, GROUP).mean(axis=1, keepdims=True)
  sums = jnp.sum(values, axis=1).reshape(-1, GROUP)
  return jnp.mean(sums / jnp.maximum(lengths, 1.0))


def loss_fn(log_probs, batch):
  adv = advantages.relative_advantages(batch.rewards.reshape(-1, GROUP), baseline="mean",
                                       scale="group").reshape(-1)
  ratio = importance.log_ratio(log_probs, batch.old_log_probs, batch.mask)
  objective = importance.ppo_objective(ratio, adv, batch.mask, eps_low=0.2, eps_high=0.28)
  return -aggregation.aggregate(objective, batch.mask, mode=per_group_length)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args()
  task = tasks.SortTask(num_digits=3, alphabet=5, num_prompts=16)
  model = models.CausalTransformer(task.vocab_size, task.prompt_length + task.max_new_tokens)
  config = train.SequenceConfig(max_new_tokens=task.max_new_tokens, eos_id=task.eos_id,
                                group_size=GROUP, clip_eps=0.2, num_updates=2)
  init_fn, train_step = train.make_sequence_train_step(
      task.sample_prompts, task.reward, train.transformer_policy(model), optax.adam(3e-3),
      config, loss_fn=loss_fn)
  step, state, rewards = jax.jit(train_step), init_fn(jax.random.key(0)), []
  for _ in range(args.steps):
    state, metrics = step(state, jax.random.key(1))
    rewards.append(float(metrics["mean_return"]))
  print(json.dumps({"first_reward": np.mean(rewards[:10]),
                    "final_reward": np.mean(rewards[-10:])}))


if __name__ == "__main__":
  main()
