"""Bad input raises a `ValueError` that names its cause, while building or tracing.

Each case used to fail deep inside a computation (a NaN loss, `IndexError`, an
unnamed broadcasting error); here each one is refused with a message that names
the argument and the shapes or numbers on both sides.
"""

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

import reinforce_jax as rj
from reinforce_jax.envs import CartPole, ContextualBandit, Pendulum
from reinforce_jax.envs.base import Environment
from reinforce_jax.estimators import monte_carlo as mc
from reinforce_jax.rl import policies, rollouts
from reinforce_jax.rl.policies import CategoricalPolicy, GaussianPolicy, GRUPolicy

B, T = 8, 4
IMAGE = (10, 10, 4)


@struct.dataclass
class ImageState:
  time: jax.Array


class ImageEnv(Environment):
  """Observations `[10, 10, 4]`; reward 1 for action 0, episodes of 3 steps."""

  deterministic_transitions = True

  @property
  def default_params(self):
    return ()

  @property
  def num_actions(self) -> int:
    return 3

  @property
  def observation_shape(self):
    return IMAGE

  def reset_env(self, key, params):
    return jax.random.uniform(key, IMAGE), ImageState(jnp.zeros((), jnp.int32))

  def step_env(self, key, state, action, params):
    time = state.time + 1
    obs = jnp.full(IMAGE, time, jnp.float32) / 3
    reward = (action == 0).astype(jnp.float32)
    return obs, ImageState(time), reward, time >= 3, jnp.zeros((), bool), {}


def _build(env, policy, algorithm=None, **kwargs):
  return rj.make_train_step(env, policy, optax.adam(1e-2),
                            algorithm or rj.algorithms.reinforce(), num_envs=B,
                            rollout_length=T, **kwargs)


def _train(env, policy, algorithm=None, steps=3):
  init_fn, train_step = _build(env, policy, algorithm)
  state = init_fn(jax.random.key(0))
  step = jax.jit(train_step)
  losses = []
  for i in range(steps):
    state, metrics = step(state, jax.random.key(i + 1))
    losses.append(float(metrics["loss"]))
  return state, losses


# --- 1. The policy's actions against the environment's action space -------------

def test_more_actions_than_the_environment_is_refused_when_the_step_is_built():
  with pytest.raises(ValueError, match=r"has 5 actions but ContextualBandit has 2"):
    _build(ContextualBandit(), CategoricalPolicy(5))
  with pytest.raises(ValueError, match=r"has 1 actions but CartPole-v1 has 2"):
    _build(CartPole(), CategoricalPolicy(1))
  with pytest.raises(ValueError, match=r"has 3 actions but CartPole-v1 has 2"):
    _build(CartPole(), GRUPolicy(3, hidden=8))
  _build(ContextualBandit(), CategoricalPolicy(2))  # the right count builds


def test_a_plain_function_policy_is_checked_by_abstract_evaluation():
  def linear(params, obs):
    return distrax.Categorical(logits=obs @ params["w"])

  with pytest.raises(ValueError, match=r"has 4 actions but CartPole-v1 has 2"):
    _build(CartPole(), linear, init_params={"w": jnp.zeros((4, 4))})
  _build(CartPole(), linear, init_params={"w": jnp.zeros((4, 2))})


def test_a_user_flax_module_is_checked_by_abstract_evaluation():
  class ThreeWay(nn.Module):
    @nn.compact
    def __call__(self, obs):
      return policies.Categorical(logits=nn.Dense(3)(obs))

  with pytest.raises(ValueError, match=r"has 3 actions but CartPole-v1 has 2"):
    _build(CartPole(), ThreeWay())


def test_continuous_action_shape_is_checked():
  with pytest.raises(ValueError, match=r"Pendulum-v1 takes actions of shape \[1\] per "
                                       r"environment, but the policy's actions have shape \[3\]"):
    _build(Pendulum(), GaussianPolicy(3))
  _build(Pendulum(), GaussianPolicy(1))


def test_continuous_actions_on_a_discrete_environment_are_refused():
  with pytest.raises(ValueError, match=r"CartPole-v1 takes one integer action per environment"):
    _build(CartPole(), GaussianPolicy(2))


# --- 2. Image observations ---------------------------------------------------------

def test_an_mlp_on_image_observations_is_refused_naming_the_shape_and_the_options():
  for policy in (CategoricalPolicy(3), GaussianPolicy(3), GRUPolicy(3, hidden=8)):
    with pytest.raises(ValueError, match=r"each observation has shape \(10, 10, 4\): pass "
                                         r"flatten=True .* or torso='cnn'"):
      _build(ImageEnv(), policy)


def test_cnn_torso_needs_images():
  with pytest.raises(ValueError, match=r"torso='cnn'\) needs image observations \[H, W, C\] "
                                       r"per environment, got observations of shape \(4,\)"):
    _build(CartPole(), CategoricalPolicy(2, torso="cnn"))
  with pytest.raises(ValueError, match="torso must be one of"):
    CategoricalPolicy(2, torso="resnet").init(jax.random.key(0), jnp.zeros((1, 4)))


@pytest.mark.parametrize("policy", [
    CategoricalPolicy(3, hidden=(16,), flatten=True),
    CategoricalPolicy(3, hidden=(16,), torso="cnn"),
])
def test_flatten_and_cnn_train_on_image_observations(policy):
  state, losses = _train(ImageEnv(), policy)
  assert np.all(np.isfinite(losses))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
@pytest.mark.parametrize("value", ["shared", "separate", "twin"])
def test_cnn_with_a_critic(value):
  policy = CategoricalPolicy(3, hidden=(16,), torso="cnn", value=value)
  obs = jax.random.uniform(jax.random.key(0), (B, *IMAGE))
  params = policy.init(jax.random.key(1), obs)
  dist, critic = policy.apply(params, obs)
  assert dist.batch_shape == (B,) and critic.shape == (B,)
  assert np.all(np.isfinite(critic))
  # "separate" and "twin" give the critic a convolution of its own
  assert ("value_torso" in params["params"]) == (value != "shared")


@pytest.mark.slow  # the CNN torso trains in test_flatten_and_cnn_train_on_image_observations
def test_cnn_actor_critic_trains_with_a2c():
  policy = CategoricalPolicy(3, hidden=(16,), torso="cnn", value="twin")
  _, losses = _train(ImageEnv(), policy, rj.algorithms.a2c(), steps=2)
  assert np.all(np.isfinite(losses))


def test_cnn_torso_is_the_minatar_network():
  policy = CategoricalPolicy(3, hidden=(16,), torso="cnn")
  params = policy.init(jax.random.key(0), jnp.zeros((2, *IMAGE)))["params"]
  assert params["torso"]["conv"]["kernel"].shape == (3, 3, 4, 16)
  # 3x3 valid convolution with stride 1: 8 x 8 x 16 features into the MLP
  assert params["trunk"]["hidden_0"]["kernel"].shape == (8 * 8 * 16, 16)


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_flatten_equals_the_mlp_on_flattened_observations():
  obs = jax.random.normal(jax.random.key(0), (5, *IMAGE))
  flat = obs.reshape(5, -1)
  plain, flattening = CategoricalPolicy(3), CategoricalPolicy(3, flatten=True)
  params = plain.init(jax.random.key(1), flat)
  flat_params = flattening.init(jax.random.key(1), obs)
  assert jax.tree.all(jax.tree.map(np.array_equal, params, flat_params))
  np.testing.assert_array_equal(flattening.apply(params, obs).logits,
                                plain.apply(params, flat).logits)


def test_default_policies_keep_their_parameters():
  obs = jnp.ones((2, 4))
  params = CategoricalPolicy(2, value="separate").init(jax.random.key(0), obs)["params"]
  assert set(params) == {"trunk", "logits", "value_trunk", "value"}
  params = GaussianPolicy(1).init(jax.random.key(0), obs)["params"]
  assert set(params) == {"trunk", "loc", "log_std"}


# --- 3. A distribution whose batch shape is not [B] -------------------------------

def test_distribution_without_the_batch_axis_is_refused_naming_both_shapes():
  def unbatched(params, obs):
    return distrax.Categorical(logits=params["w"])  # batch shape [], not [B]

  with pytest.raises(ValueError, match=r"batch shape \[B\] = \[8\] .*got \[\]"):
    _build(CartPole(), unbatched, init_params={"w": jnp.zeros(2)})


def test_rollout_checks_the_batch_shape_while_tracing():
  env = CartPole()
  carry = rollouts.reset_envs(jax.random.key(0), env, env.default_params, B)

  def unbatched(params, obs):
    return distrax.Categorical(logits=params)

  with pytest.raises(ValueError, match=r"batch shape \[B\] = \[8\] .*got \[\]"):
    rollouts.rollout(jax.random.key(1), jnp.zeros(2), unbatched, env, env.default_params,
                     carry, T)

  def wrong_value(params, obs):
    return distrax.Categorical(logits=obs[:, :2]), jnp.zeros((B, 1))

  with pytest.raises(ValueError, match=r"value must have shape \[B\] = \[8\], got \[8, 1\]"):
    rollouts.rollout(jax.random.key(1), (), wrong_value, env, env.default_params, carry, T)


def test_step_batch_without_a_batch_axis_names_the_shapes():
  env = ContextualBandit()
  _, state = env.reset_batch(jax.random.key(0), env.default_params, B)
  with pytest.raises(ValueError, match=r"actions of shape \[8, \.\.\.\] .*got shape \[\]"):
    env.step_batch(jax.random.key(1), state, jnp.int32(0))
  with pytest.raises(ValueError, match=r"actions of shape \[8, \.\.\.\] .*got shape \[3\]"):
    env.step_batch(jax.random.key(1), state, jnp.zeros(3, jnp.int32))


# --- 4. grad_estimate with a vector-valued f ---------------------------------------

@pytest.mark.parametrize("estimator", ["score_function", "pathwise", "measure_valued"])
def test_grad_estimate_refuses_a_vector_valued_f(estimator):
  def dist(p):
    return distrax.Normal(p["m"], 1.0)

  with pytest.raises(ValueError, match=r"f must return one scalar per sample .* got shape "
                                       r"\[3\] for a sample of shape \[3\]"):
    rj.grad_estimate(lambda x: x**2, dist, {"m": jnp.zeros(3)}, jax.random.key(0),
                     num_samples=4, estimator=estimator)


def test_grad_estimate_reads_a_one_element_f_as_its_scalar():
  def dist(p):
    return distrax.Normal(p["m"], 1.0)

  args = (dist, {"m": jnp.arange(3.0)}, jax.random.key(0))
  scalar = rj.grad_estimate(lambda x: jnp.sum(x**2), *args, num_samples=4)
  one = rj.grad_estimate(lambda x: jnp.sum(x**2, keepdims=True), *args, num_samples=4)
  np.testing.assert_array_equal(scalar["m"], one["m"])


def test_grad_estimate_refuses_a_vector_valued_f_for_discrete_estimators():
  def dist(p):
    return distrax.Bernoulli(logits=p)

  with pytest.raises(ValueError, match=r"f must return one scalar per sample"):
    rj.grad_estimate(lambda b: b * 1.0, dist, jnp.zeros(2), jax.random.key(0), num_samples=2,
                     estimator="disarm")


# --- 5. optax.monte_carlo drop-ins: mean and log-scale shapes ------------------------

@pytest.mark.parametrize("estimator", [mc.pathwise_jacobians, mc.score_function_jacobians])
def test_mismatched_mean_and_log_scale_are_named(estimator):
  with pytest.raises(ValueError, match=r"mean \(params\[0\]\) has shape \(3,\) and the "
                                       r"log_scale \(params\[1\]\) has shape \(2,\)"):
    estimator(lambda x: jnp.sum(x**2), [jnp.zeros(3), jnp.zeros(2)], mc.multi_normal,
              jax.random.key(0), 4)


def test_measure_valued_names_the_mean_and_log_scale_shapes():
  with pytest.raises(ValueError, match=r"mean \(params\[0\]\) and a log_scale \(params\[1\]\) "
                                       r"of the same shape \[D\], got shapes \(3,\) and \(2,\)"):
    mc.measure_valued_jacobians(lambda x: jnp.sum(x**2), [jnp.zeros(3), jnp.zeros(2)],
                                mc.multi_normal, jax.random.key(0), 4)


def test_a_broadcasting_log_scale_is_still_accepted():
  jac = mc.pathwise_jacobians(lambda x: jnp.sum(x**2), [jnp.zeros(3), jnp.zeros(())],
                              mc.multi_normal, jax.random.key(0), 4)
  assert jac[0].shape == (4, 3) and jac[1].shape == (4,)


def test_another_builder_with_mismatched_params_names_their_shapes():
  with pytest.raises(ValueError, match=r"params with shapes params\[0\] \(3,\), params\[1\] "
                                       r"\(2,\) cannot be built or sampled"):
    mc.pathwise_jacobians(lambda x: jnp.sum(x), [jnp.zeros(3), jnp.ones(2)],
                          lambda m, s: distrax.Normal(m, s), jax.random.key(0), 4)


@pytest.mark.parametrize("estimator", [mc.pathwise_jacobians, mc.score_function_jacobians,
                                       mc.measure_valued_jacobians])
def test_monte_carlo_refuses_a_vector_valued_function(estimator):
  with pytest.raises(ValueError, match=r"function must return one scalar per sample .* got "
                                       r"shape \[3\]"):
    estimator(lambda x: x**2, [jnp.zeros(3), jnp.zeros(3)], mc.multi_normal,
              jax.random.key(0), 4)


def test_multi_normal_names_its_shapes():
  with pytest.raises(ValueError, match=r"mean \(params\[0\]\) has shape \(3,\)"):
    mc.multi_normal(jnp.zeros(3), jnp.zeros(2))


# --- Other rollout inputs ----------------------------------------------------------

def test_reset_envs_and_replay_name_their_shapes():
  env = CartPole()
  with pytest.raises(ValueError, match=r"num_envs must be a positive integer, got 0"):
    rollouts.reset_envs(jax.random.key(0), env, env.default_params, 0)
  policy = policies.as_policy(CategoricalPolicy(2, hidden=()))
  params = policy.init(jax.random.key(0), jnp.zeros((B, 4)))
  done = jnp.zeros((T, B), bool)
  with pytest.raises(ValueError, match=r"obs must have shape \[T, B, \.\.\.\] = \[4, 8\] \+ "
                                       r"\[\.\.\.\], got \[8, 4\]"):
    rollouts.replay(params, policy, (), jnp.zeros((B, 4)), jnp.zeros((T, B), int), done)
  with pytest.raises(ValueError, match=r"sample must have shape .* got \[4\]"):
    rollouts.replay(params, policy, (), jnp.zeros((T, B, 4)), jnp.zeros((T,), int), done)
  log_prob, _, _ = rollouts.replay(params, policy, (), jnp.zeros((T, B, 4)),
                                   jnp.zeros((T, B), int), done)
  assert log_prob.shape == (T, B)
