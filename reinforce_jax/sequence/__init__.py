"""Score-function gradients for sequence models: RLOO, GRPO and relatives, audited exactly.

The subpackage re-exports, grouped by the module that owns it:

* `losses`: group advantages (RLOO, GRPO, Dr. GRPO), the policy-gradient surrogate with its
  token aggregations and PPO/DAPO/GSPO clipping, and the k1/k2/k3 KL estimators, by name;
  each a composition of the parts below, which a new variant composes directly:
  `advantages` (baselines, group/batch scales, REINFORCE++), `importance` (token, sequence
  and geometric-mean ratios; PPO/dual-clip/CISPO/SAPO/VESPO surrogates), `aggregation`
  (token reductions and row counts) and `regularizers` (KL estimators, entropy bonus).
* `presets`: TRL's and tunix's losses (`trl_loss`, `tunix_loss`) and advantages, built
  from the parts.
* `tabular`: a tabular autoregressive policy whose sequences can all be enumerated, so the exact
  gradient of an objective is known (used by `benchmarks/sequence_audit.py` and the tests).
* `sampling`: `sample` (groups of completions from any causal `apply_fn`, EOS masked, an
  optional KV cache) and teacher-forced `token_log_probs`.
* `models`: a small flax `CausalTransformer` with an explicit KV cache (`decoder`).
* `nnx_models` (imported on its own, not re-exported: it loads `flax.nnx`): any flax NNX
  causal language model as a `SequencePolicy` (`nnx_policy`), tunix's models among them
  (`tunix_policy`, with their key/value cache).
* `train`: `make_sequence_train_step`, the `(init_fn, train_step)` pair built on `losses`, and
  `sequence_loss`, the loss it differentiates (a `loss_fn` of your own may replace its policy term).
* `tasks`: `SortTask`, a verifiable task (`reinforce-jax train sort`).
* `off_policy`: sampler/trainer mismatch corrections (TIS, MIS, IcePop, TRL's vLLM
  importance-sampling modes) and DeepSeek-V3.2's off-policy sequence mask and unbiased KL.
* `shaping`: DAPO's overlong penalty, truncated-completion mask and dynamic sampling, ReMax
  baselines, top-entropy token selection, Clip-Cov and KL-Cov.

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
from reinforce_jax.sequence.off_policy import (
    Correction,
    icepop,
    importance_correction,
    masked_importance_sampling,
    off_policy_sequence_mask,
    truncated_importance_sampling,
    unbiased_kl,
)
from reinforce_jax.sequence.sampling import Completions, Decoder, sample, token_log_probs
from reinforce_jax.sequence.shaping import (
    DynamicSampling,
    clip_cov,
    dynamic_sampling_mask,
    greedy_completions,
    kl_cov,
    overlong_penalty,
    remax_advantages,
    token_covariance,
    top_entropy_mask,
    truncated_completion_mask,
)
from reinforce_jax.sequence.tabular import SequenceTable, enumerate_sequences
from reinforce_jax.sequence.tasks import SortTask
from reinforce_jax.sequence.train import (
    SequenceBatch,
    SequenceConfig,
    SequencePolicy,
    SequenceTrainState,
    make_sequence_train_step,
    sequence_loss,
    transformer_policy,
)

__all__ = [
    "AGGREGATIONS",
    "ESTIMATORS",
    "KL_ESTIMATORS",
    "CausalTransformer",
    "Completions",
    "Correction",
    "Decoder",
    "DynamicSampling",
    "SequenceBatch",
    "SequenceConfig",
    "SequencePolicy",
    "SequenceTable",
    "SequenceTrainState",
    "SortTask",
    "aggregate",
    "clip_cov",
    "decoder",
    "dynamic_sampling_mask",
    "enumerate_sequences",
    "greedy_completions",
    "group_advantages",
    "icepop",
    "importance_correction",
    "kl_cov",
    "kl_penalty",
    "make_sequence_train_step",
    "masked_importance_sampling",
    "off_policy_sequence_mask",
    "overlong_penalty",
    "policy_gradient_loss",
    "remax_advantages",
    "sample",
    "sequence_loss",
    "token_covariance",
    "token_log_probs",
    "top_entropy_mask",
    "transformer_policy",
    "truncated_completion_mask",
    "truncated_importance_sampling",
    "unbiased_kl",
]
