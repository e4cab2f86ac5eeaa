"""Score-function gradients for sequence models (issue 11).

A plain module of re-exports, one line per name, grouped by the module that owns it:

* `losses`: group advantages (RLOO, GRPO, Dr. GRPO), the policy-gradient surrogate with its
  token aggregations and PPO/DAPO/GSPO clipping, and the k1/k2/k3 KL estimators.
* `tabular`: a tabular autoregressive policy whose sequences can all be enumerated, so the exact
  gradient of an objective is known (used by `benchmarks/sequence_audit.py` and the tests).
* `sampling`, `train` (added by their owner): sampling with a KV-cache transformer, token
  log-probs, and a train step built on `losses`.
"""

from reinforce_jax.sequence.losses import (
    AGGREGATIONS,
    ESTIMATORS,
    KL_ESTIMATORS,
    aggregate,
    group_advantages,
    kl_penalty,
    policy_gradient_loss,
)
from reinforce_jax.sequence.tabular import SequenceTable, enumerate_sequences

__all__ = [
    "AGGREGATIONS",
    "ESTIMATORS",
    "KL_ESTIMATORS",
    "SequenceTable",
    "aggregate",
    "enumerate_sequences",
    "group_advantages",
    "kl_penalty",
    "policy_gradient_loss",
]
