"""Monte Carlo gradient estimators for stochastic nodes beyond RL.

* `gradients`: `grad_estimate` (score function with baselines, pathwise, measure-valued
  and more behind one call), DiCE, VIMCO, Gumbel-softmax, straight-through, RELAX.
* `discrete`: unbiased estimators for Bernoulli and categorical nodes: ARM, DisARM,
  REBAR/RELAX control variates, stick-breaking for categoricals.
* `unordered_set`: the unordered-set estimator (sampling without replacement).
* `exact`: exact gradients by enumeration or quadrature, and `check_estimator`, which
  measures any estimator's bias and variance against them.
* `monte_carlo`: a drop-in for the `optax.monte_carlo` module that optax removed.

Imports: `reinforce_jax._src` only.
"""

from reinforce_jax.estimators import discrete, exact, gradients, monte_carlo, unordered_set
from reinforce_jax.estimators.discrete import (
    ControlVariate,
    arm_per_sample,
    bernoulli_of,
    categorical_of,
    disarm_per_sample,
    rebar_control_variate,
    relax_control_variate,
    relax_per_sample,
    stick_breaking_logits,
    stick_breaking_per_sample,
)
from reinforce_jax.estimators.exact import (
    EstimatorCheck,
    check_estimator,
    exact_expectation_and_gradient,
    exact_gradient,
)
from reinforce_jax.estimators.gradients import (
    GradStats,
    dice_objective,
    grad_estimate,
    gumbel_softmax,
    magic_box,
    relax_gradients,
    straight_through,
    vimco_objective,
)
from reinforce_jax.estimators.unordered_set import (
    stochastic_beam_search,
    unordered_set_coefficients,
    unordered_set_gradient,
    unordered_set_weights,
)

__all__ = [
    "arm_per_sample",
    "bernoulli_of",
    "categorical_of",
    "check_estimator",
    "ControlVariate",
    "dice_objective",
    "disarm_per_sample",
    "discrete",
    "EstimatorCheck",
    "exact",
    "exact_expectation_and_gradient",
    "exact_gradient",
    "grad_estimate",
    "gradients",
    "GradStats",
    "gumbel_softmax",
    "magic_box",
    "monte_carlo",
    "rebar_control_variate",
    "relax_control_variate",
    "relax_gradients",
    "relax_per_sample",
    "stick_breaking_logits",
    "stick_breaking_per_sample",
    "stochastic_beam_search",
    "straight_through",
    "unordered_set",
    "unordered_set_coefficients",
    "unordered_set_gradient",
    "unordered_set_weights",
    "vimco_objective",
]
