"""reinforce_jax: score-function (log-derivative trick) gradients in JAX."""

# The public names are imported on first use (PEP 562), so that importing the
# package, and with it the `reinforce-jax` command line, does not import JAX:
# the CLI checks its arguments first and reports a bad one in milliseconds.

import importlib as _importlib
import sys as _sys
import types as _types

_SUBMODULES = ("baselines", "envs", "initializers", "loggers", "loop", "monte_carlo", "policies",
               "prng")
_ORIGIN = {
    "avoid_cpu_deadlock": "compiler",
    "recommended_compiler_options": "compiler",
    "Algorithm": "algorithms",
    "Batch": "algorithms",
    "Policy": "policies",
    "TrainConfig": "config",
    "GradStats": "estimators",
    "dice_objective": "estimators",
    "grad_estimate": "estimators",
    "gumbel_softmax": "estimators",
    "magic_box": "estimators",
    "straight_through": "estimators",
    "vimco_objective": "estimators",
    "relax_gradients": "estimators",
    "ControlVariate": "discrete",
    "rebar_control_variate": "discrete",
    "relax_control_variate": "discrete",
    "exact_gradient": "exact",
    "check_estimator": "exact",
    "entropy_bonus": "losses",
    "ppo_clip_loss": "losses",
    "reinforce_loss": "losses",
    "value_loss": "losses",
    "clipped_value_loss": "losses",
    "discounted_returns": "returns",
    "gae_advantages": "returns",
    "lambda_returns": "returns",
    "normalize_advantages": "returns",
    "EnvCarry": "rollout",
    "Trajectory": "rollout",
    "reset_envs": "rollout",
    "rollout": "rollout",
    "run_loop": "loop",
    "RunOutput": "train",
    "TrainState": "train",
    "make_optimizer": "train",
    "make_run": "train",
    "make_train": "train",
    "make_train_step": "train",
}

__version__ = "0.1.0"


def __getattr__(name: str):
  if name in _ORIGIN:
    value = getattr(_importlib.import_module(f"{__name__}.{_ORIGIN[name]}"), name)
  else:  # a submodule, public (`envs`) or not (`presets`)
    try:
      value = _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
      if error.name != f"{__name__}.{name}":
        raise
      raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
  globals()[name] = value
  return value


def __dir__():
  return sorted({*globals(), *__all__})


class _Package(_types.ModuleType):
  """Keeps `reinforce_jax.rollout` the function when the submodule of that name is imported.

  Importing a submodule binds it as an attribute of the package; eagerly, the
  package then rebound the name to the function it imported from it.
  """

  def __setattr__(self, name, value):
    if name == "rollout" and isinstance(value, _types.ModuleType):
      value = value.rollout
    super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


__all__ = [
    "Algorithm",
    "Batch",
    "EnvCarry",
    "GradStats",
    "Policy",
    "algorithms",
    "hparams",
    "RunOutput",
    "TrainConfig",
    "TrainState",
    "Trajectory",
    "avoid_cpu_deadlock",
    "baselines",
    "dice_objective",
    "discounted_returns",
    "entropy_bonus",
    "envs",
    "initializers",
    "gae_advantages",
    "grad_estimate",
    "gumbel_softmax",
    "magic_box",
    "monte_carlo",
    "lambda_returns",
    "loggers",
    "loop",
    "make_optimizer",
    "make_run",
    "make_train",
    "make_train_step",
    "normalize_advantages",
    "policies",
    "ppo_clip_loss",
    "recommended_compiler_options",
    "reinforce_loss",
    "reset_envs",
    "rollout",
    "run_loop",
    "straight_through",
    "value_loss",
    "clipped_value_loss",
    "vimco_objective",
    "relax_gradients",
    "ControlVariate",
    "rebar_control_variate",
    "relax_control_variate",
    "exact_gradient",
    "check_estimator",
]
