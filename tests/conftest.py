import os

import jax
import pytest

from reinforce_jax.envs import ContextualBandit
from reinforce_jax.policies import CategoricalPolicy

# No persistent compilation cache in tests (the CLI's default writes one under
# ~/.cache): runs stay independent of each other and of earlier sessions.
os.environ.setdefault("REINFORCE_JAX_CACHE_DIR", "none")


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
