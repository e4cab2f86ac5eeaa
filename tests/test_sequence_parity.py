"""Parity of `reinforce_jax.sequence.presets` with the installed TRL and tunix losses.

Each peer's own loss code runs (see `sequence_peers`) on one batch of per-token logits with an
empty row and a full-length row, for every loss setting it distinguishes; the matching preset
must give the same loss and the same gradient with respect to the logits.

Precision: TRL runs in float64 (torch) against the preset in float64 (`jax.enable_x64`, inside
a context): both within 1e-5 relative (they agree to ~1e-15). tunix casts its log-probs to
float32 itself, so its side is float32 whatever the input: the gradient within 1e-5 relative
to its largest entry, the loss within 1e-5 relative plus 1e-6 absolute (float32 rounding of
terms of size ~1 that partly cancel); the inputs are float32-representable on both sides.

`python tests/test_sequence_parity.py` prints the counts (configurations, mapped, equal: TRL
199/199/199, tunix 123/123/123) and every unmapped setting or mismatch.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import sequence_peers as peers

pytestmark = pytest.mark.slow

RTOL = 1e-5
TUNIX_LOSS_ATOL = 1e-6

TRL_CONFIGS = peers.trl_configs()
TUNIX_CONFIGS = peers.tunix_configs()


@functools.cache
def _batch() -> peers.ParityBatch:
  return peers.make_batch()


@functools.cache
def _peer(kind: str, config) -> tuple[float, np.ndarray]:
  if kind == "trl":
    return peers.trl_loss_and_grad(_batch(), config)
  return peers.tunix_loss_and_grad(_batch(), config)


@functools.cache
def _ours(kind: str, config) -> tuple[float, np.ndarray] | str:
  mapping = peers.trl_mapping(config) if kind == "trl" else peers.tunix_mapping(config)
  if isinstance(mapping, str):
    return mapping
  return peers.ours_loss_and_grad(_batch(), mapping)


def _equal(kind: str, ours, peer) -> tuple[bool, str]:
  loss_error, grad_error = peers.relative_errors(ours, peer)
  atol = TUNIX_LOSS_ATOL / (abs(peer[0]) or 1.0) if kind == "tunix" else 0.0
  ok = loss_error <= RTOL + atol and grad_error <= RTOL
  return ok, (f"loss {ours[0]:.10g} vs peer {peer[0]:.10g} (relative error {loss_error:.2e}); "
              f"gradient relative error {grad_error:.2e}")


def _require(kind: str) -> None:
  if kind == "trl":
    pytest.importorskip("torch")
    pytest.importorskip("trl")
  else:
    pytest.importorskip("tunix")


def _check_parity(kind: str, config) -> None:
  _require(kind)
  ours = _ours(kind, config)
  if isinstance(ours, str):
    pytest.skip(f"no preset setting: {ours}")
  ok, message = _equal(kind, ours, _peer(kind, config))
  assert ok, message


@pytest.mark.parametrize("config", TRL_CONFIGS, ids=[c.id for c in TRL_CONFIGS])
def test_trl_parity(config):
  _check_parity("trl", config)


@pytest.mark.parametrize("config", TUNIX_CONFIGS, ids=[c.id for c in TUNIX_CONFIGS])
def test_tunix_parity(config):
  _check_parity("tunix", config)


@pytest.mark.parametrize("kind", ["trl", "tunix"])
def test_peer_side_is_finite_deterministic_and_masked(kind):
  """Each peer setting gives a finite loss and gradient, the same twice, 0 at padding, and not
  0 everywhere; different settings give different losses where they should."""
  _require(kind)
  configs = TRL_CONFIGS if kind == "trl" else TUNIX_CONFIGS
  run = peers.trl_loss_and_grad if kind == "trl" else peers.tunix_loss_and_grad
  batch = _batch()
  padding = batch.mask == 0
  problems = []
  for config in configs:
    loss, grad = _peer(kind, config)
    again_loss, again_grad = run(batch, config)
    if not (np.isfinite(loss) and np.all(np.isfinite(grad))):
      problems.append(f"{config.id}: not finite")
    elif loss != again_loss or not np.array_equal(grad, again_grad):
      problems.append(f"{config.id}: not deterministic")
    elif np.any(grad[padding] != 0):
      problems.append(f"{config.id}: gradient at padding")
    elif not np.any(grad != 0):
      problems.append(f"{config.id}: zero gradient")
  assert not problems, problems
  # The batch reaches every setting: configurations differ in loss or gradient, except where
  # the peer's own rules make them coincide in one process without gradient accumulation.
  # TRL: "bnpo" and "dapo" (29 pairs); "cispo" at its cap 0.2 (every ratio is above it, so the
  # level and on-policy inputs do not matter: 3); "vespo"'s level without the ratio-weighted
  # KL (2): 199 - 34 = 165 distinct. tunix: "seq-mean-token-sum" and
  # "sequence-mean-token-sum-norm" (default norm), DrGRPOConfig and GRPOConfig: 21, so
  # 123 - 21 = 102.
  distinct = {(round(loss, 6), tuple(np.round(grad, 6).ravel()))
              for loss, grad in (_peer(kind, config) for config in configs)}
  assert len(distinct) >= {"trl": 165, "tunix": 102}[kind], len(distinct)


def test_the_empty_row_separates_the_peers():
  """TRL's "grpo" and tunix's "sequence-mean-token-mean" take the same per-sequence means but
  divide by all rows and by the non-empty ones: on this batch (6 rows, one empty) they differ
  by exactly 6/5, so a preset with the other row count would fail the parity above."""
  _require("trl")
  _require("tunix")
  trl_loss, trl_grad = _peer("trl", peers.TrlConfig("grpo"))
  tunix_loss, tunix_grad = _peer("tunix", peers.TunixConfig("sequence-mean-token-mean"))
  rows = _batch().mask.shape[0]
  assert rows == 6 and np.sum(_batch().mask.sum(1) == 0) == 1
  np.testing.assert_allclose(tunix_loss, trl_loss * 6 / 5, rtol=RTOL, atol=TUNIX_LOSS_ATOL)
  np.testing.assert_allclose(tunix_grad, trl_grad * 6 / 5, rtol=RTOL, atol=1e-7)
  assert abs(tunix_loss - trl_loss) > 1e3 * RTOL * abs(trl_loss)


def test_config_ids_are_unique():
  for configs in (TRL_CONFIGS, TUNIX_CONFIGS):
    ids = [c.id for c in configs]
    assert len(set(ids)) == len(ids)


def _summary(kind: str) -> dict:
  configs = TRL_CONFIGS if kind == "trl" else TUNIX_CONFIGS
  unmapped, equal, mismatched = {}, [], {}
  for config in configs:
    ours = _ours(kind, config)
    if isinstance(ours, str):
      unmapped[config.id] = ours
      continue
    ok, message = _equal(kind, ours, _peer(kind, config))
    (equal.append(config.id) if ok else mismatched.__setitem__(config.id, message))
  return dict(configurations=len(configs), mapped=len(configs) - len(unmapped),
              equal=len(equal), unmapped=unmapped, mismatched=mismatched)


def _print_summary(kind: str, summary: dict) -> None:
  print(f"{kind}: {summary['configurations']} configurations, {summary['mapped']} mapped, "
        f"{summary['equal']} equal")
  for name, reason in summary["unmapped"].items():
    print(f"  unmapped {name}: {reason}")
  for name, message in summary["mismatched"].items():
    print(f"  MISMATCH {name}: {message}")


@pytest.mark.parametrize("kind", ["trl", "tunix"])
def test_summary(kind, capsys):
  """Counts per peer (TRL: 199 configurations, tunix: 123); every configuration is mapped to
  a preset call and equal."""
  _require(kind)
  summary = _summary(kind)
  with capsys.disabled():
    print()
    _print_summary(kind, summary)
  assert summary["configurations"] == len(TRL_CONFIGS if kind == "trl" else TUNIX_CONFIGS)
  assert summary["mapped"] == summary["configurations"], summary["unmapped"]
  assert summary["equal"] == summary["mapped"], summary["mismatched"]


if __name__ == "__main__":
  for peer_kind in ("trl", "tunix"):
    _print_summary(peer_kind, _summary(peer_kind))
