"""The installed peers' GRPO-family losses, run for real, for the sequence parity tests.

Each peer's own loss code runs unchanged on a small batch of per-token logits `[B, L, V]`:

* TRL (`trl.GRPOTrainer._compute_loss`, torch): the trainer is built without its `__init__`
  (which needs a pretrained model and a dataset) and given the attributes `_compute_loss`
  reads, set from a real `GRPOConfig` the way `__init__` sets them; the model is a stand-in
  that keeps the contract of TRL's fused LM head (`model(..., labels=..., fused_lm_head=True)`
  returns the next-token `log_probs` and `entropy`, 0 where the label is -100) with the logits
  as a leaf tensor, so `loss.backward()` gives d loss / d logits. The real
  `_get_per_token_logps_and_entropies` and a real `accelerate.Accelerator` (one CPU process)
  sit between them.
* tunix (`tunix.rl.algo_core.grpo_loss_fn`, JAX): the model is an NNX module whose call
  returns the given logits (at the positions that predict the completion), and the gradient
  is `nnx.grad` with respect to them. tunix casts the log-probs to float32 itself, so its side
  is float32 whatever the logits' dtype.

Configurations: `trl_configs()` and `tunix_configs()` enumerate what each peer accepts for the
loss (each a frozen dataclass with an `id`); `trl_loss_and_grad` and `tunix_loss_and_grad` run
one.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import tempfile
from typing import Any

import numpy as np

__all__ = [
    "Mapping",
    "ParityBatch",
    "TrlConfig",
    "TunixConfig",
    "make_batch",
    "ours_loss_and_grad",
    "relative_errors",
    "token_log_probs",
    "trl_configs",
    "trl_loss_and_grad",
    "trl_mapping",
    "tunix_configs",
    "tunix_loss_and_grad",
    "tunix_mapping",
]

# The lengths of the batch's rows: an empty row, a full-length row and partial ones.
LENGTHS = (0, 5, 3, 1, 4, 2)
VOCAB = 4


@dataclasses.dataclass(frozen=True)
class ParityBatch:
  """One batch of completions, in float64 numpy.

  Attributes:
    logits: `[B, L, V]` the logits that score each completion token.
    tokens: `[B, L]` int completion tokens.
    mask: `[B, L]` 0/1, 1 on real tokens (row 0 empty, row 1 full).
    old_log_probs: `[B, L]` the sampling policy's log-probs (finite on padding too).
    ref_log_probs: `[B, L]` the reference policy's log-probs.
    advantages: `[B]` one advantage per completion, of both signs.
    sampler_weights: `[B, L]` positive per-token weights (a sampler/trainer correction).
    sampler_log_probs: `[B, L]` a sampler's log-probs, `old_log_probs - log(sampler_weights)`
      (so that the trainer/sampler ratio per token is about `sampler_weights`).
  """

  logits: np.ndarray
  tokens: np.ndarray
  mask: np.ndarray
  old_log_probs: np.ndarray
  ref_log_probs: np.ndarray
  advantages: np.ndarray
  sampler_weights: np.ndarray
  sampler_log_probs: np.ndarray


def token_log_probs(logits: np.ndarray, tokens: np.ndarray, temperature: float = 1.0):
  """`log softmax(logits / temperature)` at `tokens`, in numpy float64."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(-1, keepdims=True)
  log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return np.take_along_axis(log_softmax, tokens[..., None], axis=-1)[..., 0]


def make_batch(seed: int = 55, lengths: tuple[int, ...] = LENGTHS, vocab: int = VOCAB,
               spread: float = 0.5) -> ParityBatch:
  """A fixed random batch whose ratios to the old policy straddle the usual clip ranges.

  With the defaults, every clipping region is reached at both levels: per token and per
  sequence (length-normalised), ratios above 1 + 0.28 with positive advantages, below 0.8 with
  negative ones, above 1.5 with negative ones (TRL's delta, tunix's dual clip), and ratios
  inside the range with either sign.

  Args:
    seed: numpy seed.
    lengths: each row's number of real tokens; the padded length is their maximum.
    vocab: the vocabulary size `V`.
    spread: standard deviation of `log pi - log pi_old` (and of `log pi - log pi_ref`).

  Returns:
    A `ParityBatch`.
  """
  rng = np.random.RandomState(seed)
  num, length = len(lengths), max(lengths)
  logits = rng.normal(size=(num, length, vocab))
  tokens = rng.randint(0, vocab, size=(num, length))
  mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)
  log_probs = token_log_probs(logits, tokens)
  old = log_probs + spread * rng.normal(size=(num, length))
  ref = log_probs + spread * rng.normal(size=(num, length))
  advantages = rng.normal(size=num)
  advantages[2], advantages[3] = abs(advantages[2]) + 0.1, -abs(advantages[3]) - 0.1
  weights = rng.uniform(0.5, 1.5, size=(num, length))
  # float32-representable, so that a float32 peer and a float64 one start from the same numbers.
  as32 = lambda x: np.asarray(x, np.float32).astype(np.float64)  # noqa: E731
  weights, old = as32(weights), as32(old)
  return ParityBatch(as32(logits), tokens, mask, old, as32(ref), as32(advantages), weights,
                     as32(old - np.log(weights)))


# ------------------------------------------------------------------------------------------
# TRL
# ------------------------------------------------------------------------------------------

TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo")
# The loss types whose ratio is PPO-clipped with epsilon_low/high (and capped by delta).
TRL_CLIPPED = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


@dataclasses.dataclass(frozen=True)
class TrlConfig:
  """One `GRPOConfig` setting of the fields `GRPOTrainer._compute_loss` reads.

  `max_completion_length=None` means the batch's padded length; `on_policy` leaves
  `old_per_token_logps` out of the inputs (TRL then uses the detached current log-probs);
  `vllm_is` turns on `use_vllm` with `vllm_importance_sampling_correction` in mode
  `vllm_mode` with bounds `vllm_clip = (clip_min, clip_max)`, and passes the batch's
  `sampler_log_probs` as `sampling_per_token_logps` and the `importance_sampling_ratio` TRL
  computes from them.
  """

  loss_type: str
  importance_sampling_level: str = "token"
  beta: float = 0.0
  use_bias_correction_kl: bool = False
  delta: float | None = None
  epsilon: float = 0.2
  epsilon_high: float | None = None
  top_entropy_quantile: float = 1.0
  off_policy_mask_threshold: float | None = None
  entropy_coef: float = 0.0
  max_completion_length: int | None = None
  on_policy: bool = False
  vllm_is: bool = False
  vllm_mode: str = "sequence_mask"  # GRPOConfig's default
  vllm_clip: tuple[float | None, float | None] = (None, 3.0)  # GRPOConfig's defaults
  sapo_temperatures: tuple[float, float] | None = None  # (pos, neg); None: TRL's defaults
  vespo_shape: tuple[float, float, float, float] | None = None  # k/lambda pos, k/lambda neg

  @property
  def id(self) -> str:
    parts = [self.loss_type, self.importance_sampling_level, f"beta{self.beta:g}"]
    if self.beta:
      parts.append("biascorr" if self.use_bias_correction_kl else "nobiascorr")
    if self.loss_type in TRL_CLIPPED or self.loss_type == "cispo":
      parts.append(f"eps{self.epsilon:g}-{self.epsilon_high if self.epsilon_high else 'same'}")
    if self.delta is not None:
      parts.append(f"delta{self.delta:g}")
    if self.top_entropy_quantile < 1.0:
      parts.append(f"topent{self.top_entropy_quantile:g}")
    if self.off_policy_mask_threshold is not None:
      parts.append(f"opsm{self.off_policy_mask_threshold:g}")
    if self.entropy_coef:
      parts.append(f"entcoef{self.entropy_coef:g}")
    if self.max_completion_length is not None:
      parts.append(f"maxlen{self.max_completion_length}")
    if self.on_policy:
      parts.append("onpolicy")
    if self.vllm_is:
      parts.append(f"vllmis-{self.vllm_mode}")
      if self.vllm_clip != (None, 3.0):
        parts.append("clip{}-{}".format(*self.vllm_clip))
    if self.sapo_temperatures is not None:
      parts.append("sapotemp{:g}-{:g}".format(*self.sapo_temperatures))
    if self.vespo_shape is not None:
      parts.append("vespo{:g}-{:g}-{:g}-{:g}".format(*self.vespo_shape))
    return "trl-" + "-".join(parts)


def trl_configs() -> list[TrlConfig]:
  """Every loss setting TRL 1.16's `GRPOTrainer._compute_loss` distinguishes.

  The core grid is loss_type x importance_sampling_level x {beta 0; beta > 0 with and without
  `use_bias_correction_kl`} x, where the loss type reads them, {delta None, 1.5} x {epsilon
  0.2 symmetric, 0.2/0.28}; (cispo reads only epsilon_high, its cap: 0.2 or 4.0; sapo and
  vespo read neither). Settings that a loss type does not read would repeat a configuration
  and are left out. On top, each switch that changes the loss once (entropy-quantile mask,
  off-policy sequence mask, entropy bonus, `max_completion_length` above the padded length,
  on-policy inputs, vLLM importance-sampling correction in its default mode, or for VESPO,
  which takes only token modes, `"token_truncate"`) on every loss type, and SAPO's
  temperatures and VESPO's Gamma shapes away from their defaults. Then the weights in more
  settings: each vLLM mode with bounds that bite on both sides, the KL term beside a
  sequence-level correction, the off-policy mask against the sampler's log-probs, an
  interpolated entropy quantile, and the entropy bonus restricted to the high-entropy tokens.
  """
  out = []
  for loss_type, level in itertools.product(TRL_LOSS_TYPES, ("token", "sequence")):
    betas = [(0.0, False), (0.04, False), (0.04, True)]
    if loss_type in TRL_CLIPPED:
      deltas, epsilons = (None, 1.5), ((0.2, None), (0.2, 0.28))
    elif loss_type == "cispo":
      deltas, epsilons = (None,), ((0.2, None), (0.2, 4.0))
    else:
      deltas, epsilons = (None,), ((0.2, None),)
    for (beta, bias), delta, (eps, eps_high) in itertools.product(betas, deltas, epsilons):
      out.append(TrlConfig(loss_type, level, beta, bias, delta, eps, eps_high))
  for loss_type in TRL_LOSS_TYPES:
    out.append(TrlConfig(loss_type, top_entropy_quantile=0.5))
    out.append(TrlConfig(loss_type, off_policy_mask_threshold=0.0))
    out.append(TrlConfig(loss_type, entropy_coef=0.01))
    out.append(TrlConfig(loss_type, on_policy=True))
    out.append(TrlConfig(loss_type, vllm_is=True,
                         vllm_mode="token_truncate" if loss_type == "vespo" else "sequence_mask"))
  out.append(TrlConfig("sapo", sapo_temperatures=(0.5, 2.0)))
  out.append(TrlConfig("sapo", "sequence", sapo_temperatures=(0.5, 2.0)))
  out.append(TrlConfig("vespo", vespo_shape=(1.0, 2.0, 2.0, 1.0)))
  out.append(TrlConfig("dr_grpo", max_completion_length=8))
  out.append(TrlConfig("dr_grpo", "sequence", beta=0.04, max_completion_length=8))
  # Bounds that bite on both sides and keep some rows: the batch's token ratios lie in
  # [0.51, 1.46], its sequence ratios in [0.41, 1.93].
  token_clip, sequence_clip = (0.8, 1.25), (0.5, 1.8)
  for mode in ("token_truncate", "token_mask"):
    out.append(TrlConfig("dapo", vllm_is=True, vllm_mode=mode, vllm_clip=token_clip))
  for mode in ("sequence_truncate", "sequence_mask"):
    out.append(TrlConfig("dapo", vllm_is=True, vllm_mode=mode, vllm_clip=sequence_clip))
  # VESPO folds a masked token's ratio (0, taken as 1e-8) into its sequence's: a row with one
  # masked token weighs about nothing, so these bounds keep two rows whole.
  out.append(TrlConfig("vespo", vllm_is=True, vllm_mode="token_mask", vllm_clip=(0.55, 1.44)))
  out.append(TrlConfig("grpo", "sequence", beta=0.04, use_bias_correction_kl=True,
                       vllm_is=True, vllm_mode="sequence_truncate", vllm_clip=sequence_clip))
  out.append(TrlConfig("dapo", off_policy_mask_threshold=0.0, vllm_is=True,
                       vllm_mode="token_truncate"))
  out.append(TrlConfig("grpo", top_entropy_quantile=0.2))
  # Quantile 0 keeps the tokens at the float32-rounded maximum entropy: with float64 entropies
  # none here (the KL term keeps the gradient alive).
  out.append(TrlConfig("grpo", beta=0.04, top_entropy_quantile=0.0))
  out.append(TrlConfig("dapo", top_entropy_quantile=0.5, entropy_coef=0.01))
  return out


class _FusedHeadStandIn:
  """Builds (lazily, torch imported on first use) a module with TRL's fused-head contract."""

  @staticmethod
  @functools.cache
  def cls():
    import torch

    class LogitsModel(torch.nn.Module):
      """`model(input_ids, attention_mask, labels, fused_lm_head=True)` with leaf logits.

      `logits[:, j]` scores the label at `j + 1` (TRL shifts the labels by one); the outputs
      are 0 where the label is -100, as TRL's `FusedCausalLMOutput` documents.
      """

      def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits))

      def forward(self, input_ids, attention_mask=None, labels=None, fused_lm_head=False,
                  **kwargs):
        del input_ids, attention_mask, kwargs
        assert fused_lm_head and labels is not None
        labels = labels[:, 1:]
        assert labels.shape == self.logits.shape[:2], (labels.shape, self.logits.shape)
        keep = labels != -100
        log_softmax = torch.log_softmax(self.logits, dim=-1)
        log_probs = log_softmax.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        return _Outputs(log_probs.masked_fill(~keep, 0.0), entropy.masked_fill(~keep, 0.0))

    return LogitsModel


@dataclasses.dataclass
class _Outputs:
  log_probs: Any
  entropy: Any


@functools.cache
def _trl_base() -> dict:
  """The `GRPOConfig` arguments every setting shares."""
  folder = tempfile.mkdtemp(prefix="trl_parity_")
  return dict(output_dir=folder, report_to="none", use_cpu=True, bf16=False)


def _trl_args(config: TrlConfig, length: int):
  """A real `GRPOConfig` (its checks run) holding `config`."""
  from trl import GRPOConfig

  return GRPOConfig(
      **_trl_base(),
      loss_type=config.loss_type,
      importance_sampling_level=config.importance_sampling_level,
      beta=config.beta,
      use_bias_correction_kl=config.use_bias_correction_kl,
      delta=config.delta,
      epsilon=config.epsilon,
      epsilon_high=config.epsilon_high,
      top_entropy_quantile=config.top_entropy_quantile,
      off_policy_mask_threshold=config.off_policy_mask_threshold,
      entropy_coef=config.entropy_coef,
      max_completion_length=config.max_completion_length or length,
      use_vllm=config.vllm_is,
      vllm_importance_sampling_correction=config.vllm_is,
      vllm_importance_sampling_mode=config.vllm_mode,
      vllm_importance_sampling_clip_min=config.vllm_clip[0],
      vllm_importance_sampling_clip_max=config.vllm_clip[1],
      **_trl_shapes(config),
  )


def _trl_shapes(config: TrlConfig) -> dict:
  """SAPO's temperatures and VESPO's Gamma shapes, by their `GRPOConfig` names."""
  out = {}
  if config.sapo_temperatures is not None:
    names = ("sapo_temperature_pos", "sapo_temperature_neg")
    out.update(zip(names, config.sapo_temperatures, strict=True))
  if config.vespo_shape is not None:
    names = ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")
    out.update(zip(names, config.vespo_shape, strict=True))
  return out


def _trl_trainer(args, model):
  """A `GRPOTrainer` without `__init__`, holding what `_compute_loss` reads, set from `args`
  as `GRPOTrainer.__init__` sets it (one process, no gradient accumulation)."""
  from accelerate import Accelerator
  from trl import GRPOTrainer

  trainer = object.__new__(GRPOTrainer)
  trainer.args = args
  # After the config: building a `TrainingArguments` resets accelerate's shared state.
  trainer.accelerator = Accelerator(cpu=True)
  trainer.model = model
  trainer.loss_type = args.loss_type
  trainer.beta = args.beta
  trainer.epsilon_low = args.epsilon
  trainer.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
  trainer.importance_sampling_level = args.importance_sampling_level
  trainer.max_completion_length = args.max_completion_length
  trainer.top_entropy_quantile = args.top_entropy_quantile
  trainer.off_policy_mask_threshold = args.off_policy_mask_threshold
  trainer.use_vllm = args.use_vllm
  trainer.vllm_importance_sampling_correction = args.vllm_importance_sampling_correction
  trainer.vllm_importance_sampling_mode = args.vllm_importance_sampling_mode
  trainer.vllm_importance_sampling_clip_min = args.vllm_importance_sampling_clip_min
  trainer.vllm_importance_sampling_clip_max = args.vllm_importance_sampling_clip_max
  trainer.router_aux_loss_coef = 0.0
  trainer.aux_loss_enabled = False
  trainer.entropy_coef = args.entropy_coef
  trainer.use_adaptive_entropy = args.use_adaptive_entropy
  trainer._entropy_bonus_enabled = trainer.entropy_coef != 0.0 or trainer.use_adaptive_entropy
  trainer._last_world_entropy = float("inf")
  trainer._entropy_window_stats = None
  trainer._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
  trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
  return trainer


def trl_loss_and_grad(batch: ParityBatch, config: TrlConfig,
                      dtype: str = "float64") -> tuple[float, np.ndarray]:
  """TRL's loss on `batch` under `config` and its gradient with respect to `batch.logits`.

  Args:
    batch: the inputs.
    config: the TRL setting.
    dtype: torch dtype name for the logits and every float input.

  Returns:
    `(loss, grad)`, `grad` of shape `[B, L, V]`.
  """
  import torch

  torch_dtype = getattr(torch, dtype)
  num, length = batch.tokens.shape
  args = _trl_args(config, length)
  model = _FusedHeadStandIn.cls()(np.asarray(batch.logits, np.float64)).to(torch_dtype)
  model.train()
  trainer = _trl_trainer(args, model)
  t = functools.partial(torch.as_tensor, dtype=torch_dtype)
  mask = torch.as_tensor(batch.mask, dtype=torch.long)
  inputs = {
      # One prompt token: the model's first logits row scores the first completion token.
      "prompt_ids": torch.zeros((num, 1), dtype=torch.long),
      "prompt_mask": torch.ones((num, 1), dtype=torch.long),
      "completion_ids": torch.as_tensor(batch.tokens, dtype=torch.long),
      "completion_mask": mask,
      "advantages": t(batch.advantages),
      "ref_per_token_logps": t(batch.ref_log_probs),
      # What GRPOTrainer passes: the generation batch's token count (one process, one step).
      "num_items_in_batch": t(batch.mask.sum()),
  }
  if not config.on_policy:
    inputs["old_per_token_logps"] = t(batch.old_log_probs)
  if config.vllm_is:
    inputs["sampling_per_token_logps"] = t(batch.sampler_log_probs)
    inputs["importance_sampling_ratio"] = _trl_sampling_ratio(
        trainer, t(batch.old_log_probs), inputs["sampling_per_token_logps"], mask)
  loss = trainer._compute_loss(model, inputs)
  loss.backward()
  return float(loss.detach()), model.logits.grad.detach().double().numpy()


def _trl_sampling_ratio(trainer, old, sampler, mask):
  """`importance_sampling_ratio` as `GRPOTrainer._generate_and_score_completions` computes it
  from `old_per_token_logps` and `sampling_per_token_logps` (that method also generates, so
  its few lines for the ratio are restated here, with the trainer's settings)."""
  import torch

  diff = torch.nan_to_num((old - sampler) * mask, nan=0.0)
  mode = trainer.vllm_importance_sampling_mode
  if mode in ("sequence_mask", "sequence_truncate"):
    diff = diff.sum(dim=-1, keepdim=True)
  ratio = torch.exp(diff)
  low = trainer.vllm_importance_sampling_clip_min
  high = trainer.vllm_importance_sampling_clip_max
  if mode in ("sequence_truncate", "token_truncate"):
    return torch.clamp(ratio, min=low, max=high)
  low = -math.inf if low is None else low
  high = math.inf if high is None else high
  return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


# ------------------------------------------------------------------------------------------
# tunix
# ------------------------------------------------------------------------------------------

TUNIX_AGG_MODES = ("token-mean", "sequence-mean-token-mean", "sequence-mean-token-scale",
                   "seq-mean-token-sum", "sequence-mean-token-sum-norm")
TUNIX_LOSS_ALGOS = ("grpo", "gspo-token")
TUNIX_KL_MODES = ("kl", "mse_kl", "low_var_kl")


@dataclasses.dataclass(frozen=True)
class TunixConfig:
  """One setting of the fields `tunix.rl.algo_core.grpo_loss_fn` reads.

  `config_class` is the tunix class that holds it: `"grpo"` (`GRPOConfig`: epsilon_high is
  epsilon), `"dapo"` (`DAPOConfig`: beta None, its own epsilon_high), `"drgrpo"`
  (`DrGRPOConfig`). `epsilon_c` (dual clip) and `temperature` are attributes the loss reads
  with `getattr` / the learner sets from the rollout config. `ref` passes reference
  log-probs (tunix logs the KL even at beta 0); `on_policy` leaves the old log-probs out;
  `sampler_weights` passes the batch's `sampler_weights` as `sampler_is_weights`.
  """

  loss_agg_mode: str
  loss_algo: str = "grpo"
  beta: float | None = 0.0
  kl_loss_mode: str = "kl"
  kl_clamp_value: float | None = None
  epsilon: float = 0.2
  epsilon_high: float | None = None
  epsilon_c: float | None = None
  temperature: float = 1.0
  config_class: str = "grpo"
  ref: bool = True
  on_policy: bool = False
  sampler_weights: bool = False

  @property
  def id(self) -> str:
    parts = [self.config_class, self.loss_agg_mode, self.loss_algo,
             "betaNone" if self.beta is None else f"beta{self.beta:g}"]
    if self.beta:
      parts.append(self.kl_loss_mode)
    if self.kl_clamp_value is not None:
      parts.append(f"klclamp{self.kl_clamp_value:g}")
    parts.append(f"eps{self.epsilon:g}-{self.epsilon_high if self.epsilon_high else 'same'}")
    if self.epsilon_c is not None:
      parts.append(f"dualclip{self.epsilon_c:g}")
    if self.temperature != 1.0:
      parts.append(f"temp{self.temperature:g}")
    if not self.ref:
      parts.append("noref")
    if self.on_policy:
      parts.append("onpolicy")
    if self.sampler_weights:
      parts.append("samplerweights")
    return "tunix-" + "-".join(parts)


def tunix_configs() -> list[TunixConfig]:
  """Every loss setting tunix 0.1.7's `grpo_loss_fn` distinguishes.

  The core grid is loss_agg_mode x loss_algo x {beta 0; beta > 0 with each kl_loss_mode} x
  {no dual clip, epsilon_c=1.5} x {GRPOConfig's symmetric epsilon 0.2, DAPOConfig's 0.2/0.28
  (beta None there)}. On top: the KL clamp, a rollout temperature, on-policy inputs, sampler
  importance weights (also beside the KL term, and with GSPO-token's ratio and the dual
  clip), and `DrGRPOConfig`'s default mode.
  """
  out = []
  for mode, algo in itertools.product(TUNIX_AGG_MODES, TUNIX_LOSS_ALGOS):
    for epsilon_c in (None, 1.5):
      out.append(TunixConfig(mode, algo, 0.0, epsilon_c=epsilon_c))
      for kl_mode in TUNIX_KL_MODES:
        out.append(TunixConfig(mode, algo, 0.04, kl_mode, epsilon_c=epsilon_c))
      out.append(TunixConfig(mode, algo, None, epsilon_high=0.28, epsilon_c=epsilon_c,
                             config_class="dapo", ref=False))
  for mode in TUNIX_AGG_MODES:
    out.append(TunixConfig(mode, "grpo", 0.04, "low_var_kl", kl_clamp_value=0.05))
    out.append(TunixConfig(mode, "grpo", 0.0, temperature=0.7))
    out.append(TunixConfig(mode, "grpo", 0.0, on_policy=True))
    out.append(TunixConfig(mode, "grpo", 0.0, sampler_weights=True))
  out.append(TunixConfig("sequence-mean-token-scale", "grpo", 0.04, "kl", config_class="drgrpo"))
  out.append(TunixConfig("token-mean", "grpo", 0.04, "low_var_kl", sampler_weights=True))
  out.append(TunixConfig("sequence-mean-token-mean", "gspo-token", 0.0, epsilon_c=1.5,
                         sampler_weights=True))
  return out


@functools.cache
def _tunix_model_cls():
  import jax.numpy as jnp
  from flax import nnx

  class LogitsModel(nnx.Module):
    """tunix's model contract: `model(tokens, positions=, cache=, attention_mask=)` returns
    `(logits [B, T, V], cache)`; the logits at `t` predict token `t + 1`."""

    def __init__(self, logits):
      self.logits = nnx.Param(logits)

    def __call__(self, tokens, positions=None, cache=None, attention_mask=None):
      del positions, attention_mask
      num, total = tokens.shape
      logits = self.logits[...]
      # The prompt is one token: position 0 predicts completion token 0; the last position
      # predicts nothing (tunix drops it).
      pad = total - logits.shape[1]
      assert pad == 1, (tokens.shape, logits.shape)
      return jnp.concatenate([logits, jnp.zeros_like(logits[:, -1:])], axis=1), cache

  return LogitsModel


def _tunix_algo_config(config: TunixConfig):
  from tunix.rl.grpo import dapo_learner, drgrpo_learner, grpo_learner

  if config.config_class == "dapo":
    algo = dapo_learner.DAPOConfig(
        loss_agg_mode=config.loss_agg_mode, loss_algo=config.loss_algo, beta=None,
        epsilon=config.epsilon, epsilon_high=config.epsilon_high, overlong_buffer=None,
        kl_clamp_value=config.kl_clamp_value)
  else:
    cls = drgrpo_learner.DrGRPOConfig if config.config_class == "drgrpo" else \
        grpo_learner.GRPOConfig
    algo = cls(loss_agg_mode=config.loss_agg_mode, loss_algo=config.loss_algo,
               beta=config.beta, kl_loss_mode=config.kl_loss_mode, epsilon=config.epsilon,
               kl_clamp_value=config.kl_clamp_value)
    assert config.epsilon_high is None, "GRPOConfig has no epsilon_high"
  if config.epsilon_c is not None:
    algo.epsilon_c = config.epsilon_c
  algo.temperature = config.temperature  # GRPOLearner sets this from the rollout config
  return algo


def tunix_loss_and_grad(batch: ParityBatch, config: TunixConfig) -> tuple[float, np.ndarray]:
  """tunix's loss on `batch` under `config` and its gradient with respect to `batch.logits`.

  Returns:
    `(loss, grad)`, `grad` of shape `[B, L, V]` (float32 precision: tunix casts to float32).
  """
  import jax.numpy as jnp
  from flax import nnx
  from tunix.rl import algo_core, common

  num, _ = batch.tokens.shape
  algo = _tunix_algo_config(config)
  pad_id = VOCAB + 1  # no completion token is padding to tunix's position/attention masks
  example = common.TrainExample(
      prompt_ids=jnp.zeros((num, 1), jnp.int32),
      prompt_mask=jnp.ones((num, 1), jnp.int32),
      completion_ids=jnp.asarray(batch.tokens, jnp.int32),
      completion_mask=jnp.asarray(batch.mask, jnp.int32),
      advantages=jnp.asarray(batch.advantages, jnp.float32),
      ref_per_token_logps=jnp.asarray(batch.ref_log_probs, jnp.float32) if config.ref else None,
      old_per_token_logps=None if config.on_policy else jnp.asarray(batch.old_log_probs,
                                                                     jnp.float32),
      sampler_is_weights=jnp.asarray(batch.sampler_weights, jnp.float32)
      if config.sampler_weights else None,
  )
  model = _tunix_model_cls()(jnp.asarray(batch.logits, jnp.float32))

  def loss_fn(m):
    loss, _ = algo_core.grpo_loss_fn(m, example, algo, pad_id=pad_id, eos_id=pad_id)
    return loss

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  return float(loss), np.asarray(grads.logits[...], np.float64)


# ------------------------------------------------------------------------------------------
# Ours: the presets
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mapping:
  """How one peer setting runs here: the preset and its arguments, and the call's inputs.

  Attributes:
    preset: `"trl_loss"` or `"tunix_loss"` (in `reinforce_jax.sequence.presets`).
    kwargs: the preset's arguments.
    on_policy: pass `old_log_probs=None`.
    ref: pass the reference log-probs (else `None`).
    entropy: pass the per-token entropies of the (tempered) logits.
    temperature: the log-probs (and entropies) are those of `logits / temperature`.
    sampler: pass the batch's `sampler_log_probs` as `sampler_log_probs=`.
    sampler_is_weights: pass the batch's `sampler_weights` as `sampler_is_weights=`.
  """

  preset: str
  kwargs: dict
  on_policy: bool = False
  ref: bool = True
  entropy: bool = False
  temperature: float = 1.0
  sampler: bool = False
  sampler_is_weights: bool = False


def trl_mapping(config: TrlConfig) -> Mapping | str:
  """`config` as a call of `presets.trl_loss`, or why it has none."""
  kwargs = dict(beta=config.beta, epsilon=config.epsilon, epsilon_high=config.epsilon_high,
                delta=config.delta, importance_sampling_level=config.importance_sampling_level,
                use_bias_correction_kl=config.use_bias_correction_kl,
                entropy_coef=config.entropy_coef,
                max_completion_length=config.max_completion_length,
                top_entropy_quantile=config.top_entropy_quantile,
                off_policy_mask_threshold=config.off_policy_mask_threshold,
                **_trl_shapes(config))
  if config.vllm_is:
    kwargs.update(vllm_importance_sampling_mode=config.vllm_mode,
                  vllm_importance_sampling_clip_min=config.vllm_clip[0],
                  vllm_importance_sampling_clip_max=config.vllm_clip[1])
  entropy = config.entropy_coef != 0.0 or config.top_entropy_quantile < 1.0
  return Mapping("trl_loss", dict(loss_type=config.loss_type, **kwargs),
                 on_policy=config.on_policy, entropy=entropy, sampler=config.vllm_is)


def tunix_mapping(config: TunixConfig) -> Mapping | str:
  """`config` as a call of `presets.tunix_loss`, or why it has none."""
  kwargs = dict(loss_algo=config.loss_algo, epsilon=config.epsilon,
                epsilon_high=config.epsilon_high, epsilon_c=config.epsilon_c,
                beta=config.beta or 0.0, kl_loss_mode=config.kl_loss_mode,
                kl_clamp_value=config.kl_clamp_value)
  return Mapping("tunix_loss", dict(loss_agg_mode=config.loss_agg_mode, **kwargs),
                 on_policy=config.on_policy, ref=config.ref, temperature=config.temperature,
                 sampler_is_weights=config.sampler_weights)


def ours_loss_and_grad(batch: ParityBatch, mapping: Mapping,
                       x64: bool = True) -> tuple[float, np.ndarray]:
  """The preset's loss on `batch` and its gradient with respect to `batch.logits`.

  The log-probs (and entropies) come from `jax.nn.log_softmax(logits / temperature)`, the
  model's side; the preset sees only per-token arrays.

  Args:
    batch: the inputs.
    mapping: the preset call.
    x64: compute in float64 (inside `jax.enable_x64`), else float32.

  Returns:
    `(loss, grad)`, `grad` of shape `[B, L, V]`.
  """
  import jax
  import jax.numpy as jnp

  from reinforce_jax.sequence import presets

  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    loss_fn = getattr(presets, mapping.preset)(**mapping.kwargs)
    tokens = jnp.asarray(batch.tokens)
    mask = jnp.asarray(batch.mask, dtype)
    old = None if mapping.on_policy else jnp.asarray(batch.old_log_probs, dtype)
    ref = jnp.asarray(batch.ref_log_probs, dtype) if mapping.ref else None
    advantages = jnp.asarray(batch.advantages, dtype)
    extra = {}
    if mapping.sampler:
      extra["sampler_log_probs"] = jnp.asarray(batch.sampler_log_probs, dtype)
    if mapping.sampler_is_weights:
      extra["sampler_is_weights"] = jnp.asarray(batch.sampler_weights, dtype)

    def loss_of(logits):
      all_log_probs = jax.nn.log_softmax(logits / mapping.temperature, axis=-1)
      log_probs = jnp.take_along_axis(all_log_probs, tokens[..., None], axis=-1)[..., 0]
      entropy = None
      if mapping.entropy:
        entropy = -jnp.sum(jnp.exp(all_log_probs) * all_log_probs, axis=-1)
      loss, _ = loss_fn(log_probs, old, ref, advantages, mask, entropy=entropy, **extra)
      return loss

    loss, grad = jax.value_and_grad(loss_of)(jnp.asarray(batch.logits, dtype))
    return float(loss), np.asarray(grad, np.float64)


def relative_errors(ours: tuple[float, np.ndarray],
                    peer: tuple[float, np.ndarray]) -> tuple[float, float]:
  """`(|loss - loss_peer| / |loss_peer|, max |grad - grad_peer| / max |grad_peer|)`; a peer
  value of exactly 0 makes its error absolute."""
  (loss, grad), (peer_loss, peer_grad) = ours, peer
  loss_error = abs(loss - peer_loss) / (abs(peer_loss) or 1.0)
  scale = float(np.max(np.abs(peer_grad))) or 1.0
  return loss_error, float(np.max(np.abs(grad - peer_grad))) / scale
