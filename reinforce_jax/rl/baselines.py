"""Baselines for the policy-gradient algorithms, as values and as functions.

The values (`Constant`, `EMA`, `BatchMean`, `LeaveOneOut`, `Value`) are
hyperparameter dataclasses declared in `reinforce_jax.rl.hparams`, passed as
`algorithms.reinforce(baseline=...)`; the functions that compute them live in
`reinforce_jax.core.baselines`.
"""

from reinforce_jax.core.baselines import batch_mean, ema_update, leave_one_out
from reinforce_jax.rl.hparams import EMA, BatchMean, Constant, LeaveOneOut, Value

__all__ = ["EMA", "BatchMean", "Constant", "LeaveOneOut", "Value", "batch_mean", "ema_update",
           "leave_one_out"]
