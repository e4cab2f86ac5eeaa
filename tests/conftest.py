import os
import tempfile

import jax
import pytest

from reinforce_jax.envs import ContextualBandit
from reinforce_jax.rl.policies import CategoricalPolicy
from reinforce_jax.xla.compiler import use_compilation_cache

# One persistent compilation cache for this test session, shared by its xdist
# workers and the CLI processes the tests start, and by nothing else (the CLI's
# default writes one under ~/.cache): tests build the same programs many times
# (a fresh `make_train_step` closure is a new function to `jax.jit`, the same
# HLO to the cache), and a session starts cold, independent of earlier ones.
# `REINFORCE_JAX_CACHE_DIR=none` turns it off.
if "REINFORCE_JAX_CACHE_DIR" not in os.environ:
  _run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
  os.environ["REINFORCE_JAX_CACHE_DIR"] = os.path.join(
      tempfile.gettempdir(), f"reinforce_jax_test_cache_{_run_id}")
if os.environ["REINFORCE_JAX_CACHE_DIR"].strip().lower() not in ("", "none"):
  use_compilation_cache(os.environ["REINFORCE_JAX_CACHE_DIR"])


@pytest.fixture
def bandit():
  return ContextualBandit()


@pytest.fixture
def linear_policy():
  """The seed's policy: one linear layer from the 1-d context to 2 logits."""
  return CategoricalPolicy(2, hidden=())


def random_linear_params(key, scale=1.0):
  """Linear-policy params with non-trivial logits (the default init is ~uniform)."""
  k1, k2 = jax.random.split(key)
  return {"params": {"logits": {
      "kernel": scale * jax.random.normal(k1, (1, 2)),
      "bias": scale * jax.random.normal(k2, (2,)),
  }}}


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch):
  """Every test runs in its own empty folder: whatever it writes by a relative path (the
  CLI's default `runs/ENV`, a plot) lands there, never in the checkout, and a checkout
  that already holds `runs/` (after `make run`) changes nothing."""
  monkeypatch.chdir(tmp_path)
