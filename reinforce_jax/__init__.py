"""reinforce_jax: score-function (log-derivative trick) gradients in JAX.

The everyday names are here; everything else lives in a subpackage, one per domain,
in layers that import only downwards:

* `xla`: fast threefry keys and shuffles on XLA:CPU, compiler settings, LAPACK-free
  initialisers.
* `core`: the score-function surrogate (`reinforce_loss`), the PPO, value and entropy
  losses, and baselines as functions.
* `estimators`: Monte Carlo gradient estimators for stochastic nodes (`grad_estimate`,
  discrete estimators, exact checks, the `optax.monte_carlo` drop-in).
* `envs`: functional environments with the gymnax interface.
* `rl`: policy-gradient RL: hyperparameters, policies, rollouts, returns, algorithms and
  the jitted train step.
* `sequence`: score-function gradients for sequence models (RLOO, GRPO and relatives).
* `experiments`: runs: the run loop, checkpoints, loggers, sweeps, devices, plots, presets.
* `cli`: the `reinforce-jax` command.

Names are imported on first use, so importing the package (and with it the command
line, which checks its arguments first) does not import JAX.
"""

from reinforce_jax._src.lazy import lazy_exports

__version__ = "0.1.0"

_RL = "reinforce_jax.rl"
_EST = "reinforce_jax.estimators"
_ORIGINS = {
    # subpackages
    **{name: f"reinforce_jax.{name}" for name in (
        "cli", "core", "envs", "estimators", "experiments", "rl", "sequence", "xla")},
    # modules under their short names
    "algorithms": f"{_RL}.algorithms",
    "baselines": f"{_RL}.baselines",
    "hparams": f"{_RL}.hparams",
    "policies": f"{_RL}.policies",
    "initializers": "reinforce_jax.xla.initializers",
    "prng": "reinforce_jax.xla.prng",
    "monte_carlo": f"{_EST}.monte_carlo",
    "loggers": "reinforce_jax.experiments.loggers",
    "loop": "reinforce_jax.experiments.loop",
    # the surrogate and the RL losses
    "reinforce_loss": "reinforce_jax.core.losses:reinforce_loss",
    "ppo_clip_loss": "reinforce_jax.core.losses:ppo_clip_loss",
    "value_loss": "reinforce_jax.core.losses:value_loss",
    "clipped_value_loss": "reinforce_jax.core.losses:clipped_value_loss",
    "entropy_bonus": "reinforce_jax.core.losses:entropy_bonus",
    # estimators for stochastic nodes
    "GradStats": f"{_EST}.gradients:GradStats",
    "grad_estimate": f"{_EST}.gradients:grad_estimate",
    "dice_objective": f"{_EST}.gradients:dice_objective",
    "magic_box": f"{_EST}.gradients:magic_box",
    "vimco_objective": f"{_EST}.gradients:vimco_objective",
    "gumbel_softmax": f"{_EST}.gradients:gumbel_softmax",
    "straight_through": f"{_EST}.gradients:straight_through",
    "relax_gradients": f"{_EST}.gradients:relax_gradients",
    "ControlVariate": f"{_EST}.discrete:ControlVariate",
    "rebar_control_variate": f"{_EST}.discrete:rebar_control_variate",
    "relax_control_variate": f"{_EST}.discrete:relax_control_variate",
    "exact_gradient": f"{_EST}.exact:exact_gradient",
    "check_estimator": f"{_EST}.exact:check_estimator",
    # policy-gradient RL
    "Algorithm": f"{_RL}.algorithms:Algorithm",
    "Batch": f"{_RL}.algorithms:Batch",
    "Policy": f"{_RL}.policies:Policy",
    "TrainConfig": f"{_RL}.config:TrainConfig",
    "discounted_returns": f"{_RL}.returns:discounted_returns",
    "gae_advantages": f"{_RL}.returns:gae_advantages",
    "lambda_returns": f"{_RL}.returns:lambda_returns",
    "normalize_advantages": f"{_RL}.returns:normalize_advantages",
    "evaluate": f"{_RL}.evaluation:evaluate",
    "ObsNormalizer": f"{_RL}.normalization:ObsNormalizer",
    "EnvCarry": f"{_RL}.rollouts:EnvCarry",
    "Trajectory": f"{_RL}.rollouts:Trajectory",
    "reset_envs": f"{_RL}.rollouts:reset_envs",
    "rollout": f"{_RL}.rollouts:rollout",
    "RunOutput": f"{_RL}.train:RunOutput",
    "TrainState": f"{_RL}.train:TrainState",
    "make_optimizer": f"{_RL}.train:make_optimizer",
    "make_run": f"{_RL}.train:make_run",
    "make_train": f"{_RL}.train:make_train",
    "make_train_step": f"{_RL}.train:make_train_step",
    # runs and XLA settings
    "run_loop": "reinforce_jax.experiments.loop:run_loop",
    "avoid_cpu_deadlock": "reinforce_jax.xla.compiler:avoid_cpu_deadlock",
    "recommended_compiler_options": "reinforce_jax.xla.compiler:recommended_compiler_options",
}

__getattr__, __dir__ = lazy_exports(__name__, _ORIGINS)

__all__ = sorted(_ORIGINS)
