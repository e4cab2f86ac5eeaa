import distrax
import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax.policies import CategoricalPolicy


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


def test_mlp_shapes_and_near_uniform_start():
  policy = CategoricalPolicy(3, hidden=(16, 8))
  obs = jax.random.normal(jax.random.key(1), (5, 4))
  params = policy.init(jax.random.key(0), obs)
  assert [k for k in params["params"]] == ["hidden_0", "hidden_1", "logits"]
  dist = policy.apply(params, obs)
  assert dist.batch_shape == (5,) and dist.num_categories == 3
  np.testing.assert_allclose(dist.probs, 1 / 3, atol=0.02)
  actions = dist.sample(seed=jax.random.key(2))
  assert actions.shape == (5,) and dist.log_prob(actions).shape == (5,)
