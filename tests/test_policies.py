import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.rl.policies import CategoricalPolicy, GaussianPolicy
from reinforce_jax.rl.rollouts import act


def test_no_hidden_layers_is_the_seeds_linear_layer():
  policy = CategoricalPolicy(2, hidden=())
  params = policy.init(jax.random.key(0), jnp.zeros((1, 1)))
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == {"params": {"logits": {"kernel": (1, 2), "bias": (2,)}}}
  obs = jnp.array([[-1.0], [1.0], [0.3]])
  dist = policy.apply(params, obs)
  assert isinstance(dist, distrax.Categorical) and dist.batch_shape == (3,)
  layer = params["params"]["logits"]
  linear = obs @ layer["kernel"] + layer["bias"]
  np.testing.assert_allclose(dist.logits, jax.nn.log_softmax(linear), rtol=1e-5)


@pytest.mark.slow
def test_mlp_shapes_and_near_uniform_start():
  policy = CategoricalPolicy(3, hidden=(16, 8))
  obs = jax.random.normal(jax.random.key(1), (5, 4))
  params = policy.init(jax.random.key(0), obs)
  assert sorted(params["params"]) == ["logits", "trunk"]
  assert sorted(params["params"]["trunk"]) == ["hidden_0", "hidden_1"]
  dist = policy.apply(params, obs)
  assert dist.batch_shape == (5,) and dist.num_categories == 3
  np.testing.assert_allclose(dist.probs, 1 / 3, atol=0.02)
  actions = dist.sample(seed=jax.random.key(2))
  assert actions.shape == (5,) and dist.log_prob(actions).shape == (5,)


def test_value_heads_shared_and_separate():
  obs = jax.random.normal(jax.random.key(1), (5, 4))
  for value in ("shared", "separate"):
    policy = CategoricalPolicy(2, hidden=(8,), value=value)
    params = policy.init(jax.random.key(0), obs)
    dist, v = policy.apply(params, obs)
    assert isinstance(dist, distrax.Categorical) and v.shape == (5,)
    assert ("value_trunk" in params["params"]) == (value == "separate")
  with pytest.raises(ValueError, match="value must be one of"):
    CategoricalPolicy(2, value="both").init(jax.random.key(0), obs)


@pytest.mark.parametrize("state_dependent", [False, True])
def test_gaussian_policy_shapes(state_dependent):
  policy = GaussianPolicy(2, hidden=(8,), state_dependent_std=state_dependent,
                          init_log_std=-0.5)
  obs = jax.random.normal(jax.random.key(1), (5, 3))
  params = policy.init(jax.random.key(0), obs)
  dist = policy.apply(params, obs)
  assert dist.batch_shape == (5,) and dist.event_shape == (2,)
  np.testing.assert_allclose(dist.stddev(), np.exp(-0.5), rtol=0.05)
  assert ("log_std" in params["params"]) and (
      isinstance(params["params"]["log_std"], dict) == state_dependent)


def test_squashed_gaussian_log_prob_includes_the_tanh_correction():
  policy = GaussianPolicy(1, hidden=(), squash=(-2.0, 2.0), init_log_std=0.5)
  obs = jnp.zeros((4000, 3))
  params = policy.init(jax.random.key(0), obs)
  dist = policy.apply(params, obs)
  action, u, log_prob, _ = act(dist, jax.random.key(1))
  assert np.all(np.abs(action) < 2.0) and action.shape == (4000, 1)
  base = dist.distribution
  # log(2 (1 - tanh(u)^2)), written stably: 1 - tanh^2 cancels badly near the bounds.
  log_det = jnp.log(2.0) + 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))
  want = base.log_prob(u) - jnp.sum(log_det, axis=-1)
  np.testing.assert_allclose(log_prob, want, rtol=1e-4, atol=1e-4)
  inside = np.abs(np.asarray(action[:, 0])) < 1.5  # where inverting tanh is accurate
  np.testing.assert_allclose(np.asarray(log_prob)[inside],
                             np.asarray(dist.log_prob(action))[inside], rtol=1e-3, atol=1e-3)


def test_categorical_is_a_distrax_categorical_with_the_same_distribution():
  from reinforce_jax.rl.policies import Categorical

  logits = jax.random.normal(jax.random.key(0), (6, 3)) * 2.0
  ours, theirs = Categorical(logits=logits), distrax.Categorical(logits=logits)
  assert isinstance(ours, distrax.Categorical)
  np.testing.assert_allclose(ours.logits, theirs.logits, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ours.probs, theirs.probs, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ours.entropy(), theirs.entropy(), rtol=1e-6)
  sample = ours.sample(seed=jax.random.key(1))
  np.testing.assert_array_equal(sample, theirs.sample(seed=jax.random.key(1)))
  np.testing.assert_allclose(ours.log_prob(sample), theirs.log_prob(sample), rtol=1e-6,
                             atol=1e-6)
  # A pytree that survives jit with its own normalisation, and from probabilities too.
  np.testing.assert_allclose(jax.jit(lambda d: d.logits)(ours), theirs.logits, atol=1e-6)
  from_probs = Categorical(probs=theirs.probs)
  np.testing.assert_allclose(from_probs.probs, theirs.probs, rtol=1e-6)


def test_categorical_policy_returns_the_fast_categorical():
  from reinforce_jax.rl.policies import Categorical

  policy = CategoricalPolicy(2, hidden=())
  obs = jnp.ones((4, 1))
  params = policy.init(jax.random.key(0), obs)
  assert type(policy.apply(params, obs)) is Categorical


@pytest.mark.slow
@pytest.mark.parametrize("policy_cls, args", [(CategoricalPolicy, (3,)), (GaussianPolicy, (2,))])
def test_twin_trunk_is_the_separate_networks_in_one_product(policy_cls, args):
  obs = jax.random.normal(jax.random.key(0), (7, 4))
  twin = policy_cls(*args, hidden=(16, 8), value="twin")
  separate = policy_cls(*args, hidden=(16, 8), value="separate")
  params = twin.init(jax.random.key(1), obs)["params"]
  stacked = params.pop("twin_trunk")

  def mlp(k):
    return {f"hidden_{i}": {"kernel": stacked[f"hidden_{i}_kernel"][k],
                            "bias": stacked[f"hidden_{i}_bias"][k]} for i in range(2)}

  copied = {**params, "trunk": mlp(0), "value_trunk": mlp(1)}
  assert jax.tree.structure(copied) == jax.tree.structure(
      separate.init(jax.random.key(1), obs)["params"])
  (dist_t, value_t) = twin.apply({"params": {**params, "twin_trunk": stacked}}, obs)
  (dist_s, value_s) = separate.apply({"params": copied}, obs)
  np.testing.assert_allclose(value_t, value_s, rtol=1e-5, atol=1e-6)
  sample = dist_s.sample(seed=jax.random.key(2))
  np.testing.assert_allclose(dist_t.log_prob(sample), dist_s.log_prob(sample), rtol=1e-5,
                             atol=1e-5)
  # Each slice is initialised like its own network: orthogonal columns, scale sqrt(2).
  w = np.asarray(stacked["hidden_1_kernel"])
  for k in range(2):
    np.testing.assert_allclose(w[k].T @ w[k], 2.0 * np.eye(8), atol=1e-4)
  assert not np.allclose(w[0], w[1])
