"""Score-function gradients for sequence models: RLOO, GRPO and relatives, audited exactly.

The subpackage re-exports, grouped by the module that owns it:

* `losses`: group advantages (RLOO, GRPO, Dr. GRPO), the policy-gradient surrogate with its
  token aggregations and PPO/DAPO/GSPO clipping, and the k1/k2/k3 KL estimators.
* `tabular`: a tabular autoregressive policy whose sequences can all be enumerated, so the exact
  gradient of an objective is known (used by `benchmarks/sequence_audit.py` and the tests).
* `sampling`: `sample` (groups of completions from any causal `apply_fn`, EOS masked, an
  optional KV cache) and teacher-forced `token_log_probs`.
* `models`: a small flax `CausalTransformer` with an explicit KV cache (`decoder`).
* `train`: `make_sequence_train_step`, the `(init_fn, train_step)` pair built on `losses`.
* `tasks`: `SortTask`, a verifiable task (`reinforce-jax train sort`).

Imports: `reinforce_jax.xla` and `reinforce_jax._src`.
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
from reinforce_jax.sequence.models import CausalTransformer, decoder
from reinforce_jax.sequence.sampling import Completions, Decoder, sample, token_log_probs
from reinforce_jax.sequence.tabular import SequenceTable, enumerate_sequences
from reinforce_jax.sequence.tasks import SortTask
from reinforce_jax.sequence.train import (
    SequenceConfig,
    SequencePolicy,
    SequenceTrainState,
    make_sequence_train_step,
    transformer_policy,
)

__all__ = [
    "AGGREGATIONS",
    "ESTIMATORS",
    "KL_ESTIMATORS",
    "CausalTransformer",
    "Completions",
    "Decoder",
    "SequenceConfig",
    "SequencePolicy",
    "SequenceTable",
    "SequenceTrainState",
    "SortTask",
    "aggregate",
    "decoder",
    "enumerate_sequences",
    "group_advantages",
    "kl_penalty",
    "make_sequence_train_step",
    "policy_gradient_loss",
    "sample",
    "token_log_probs",
    "transformer_policy",
]
