"""The score-function surrogate and the losses built beside it.

* `losses`: `reinforce_loss` (the surrogate `-mean(log_prob * stop_gradient(reward - b))`),
  `ppo_clip_loss`, `value_loss`, `clipped_value_loss` and `entropy_bonus`, each with
  trace-time shape checks.
* `baselines`: baselines as functions (`leave_one_out`, `batch_mean`, `ema_update`).

Imports: `reinforce_jax._src` only.
"""

from reinforce_jax.core import baselines, losses
from reinforce_jax.core.baselines import (
    batch_mean,
    ema_update,
    leave_one_out,
)
from reinforce_jax.core.losses import (
    clipped_value_loss,
    entropy_bonus,
    ppo_clip_loss,
    reinforce_loss,
    value_loss,
)

__all__ = [
    "baselines",
    "batch_mean",
    "clipped_value_loss",
    "ema_update",
    "entropy_bonus",
    "leave_one_out",
    "losses",
    "ppo_clip_loss",
    "reinforce_loss",
    "value_loss",
]
