"""Policy-gradient reinforcement learning, built from parts.

* `hparams`: one frozen dataclass per algorithm and baseline (floats are pytree leaves
  that can be vmapped or annealed; structure is static). JAX-free.
* `config`: `TrainConfig`, a run's settings and its algorithm's hyperparameters. JAX-free.
* `baselines`: the baseline values (`Constant`, `EMA`, `BatchMean`, `LeaveOneOut`, `Value`).
* `returns`: discounted returns, GAE, lambda-returns, advantage normalisation.
* `policies`: categorical, Gaussian and recurrent policies; any linen, NNX or plain function.
* `rollouts`: parallel rollouts (`vmap` over environments, `lax.scan` over time).
* `normalization`: observation statistics shared by the whole env batch (`ObsStats`).
* `evaluation`: `evaluate`, whole episodes of a policy in parallel in one program.
* `algorithms`: REINFORCE, A2C and PPO as values made of public parts.
* `train`: `make_train_step` (the jitted-ready `(init_fn, train_step)` pair) and whole runs.

Imports: `reinforce_jax.core`, `reinforce_jax.xla` and `reinforce_jax._src` (an environment is
anything with the gymnax interface; nothing here imports `reinforce_jax.envs`).
Names are imported on first use, so `hparams` and `config` stay JAX-free for the CLI.
"""

from reinforce_jax._src.lazy import lazy_exports

_ORIGINS = {
    "algorithms": "reinforce_jax.rl.algorithms",
    "baselines": "reinforce_jax.rl.baselines",
    "config": "reinforce_jax.rl.config",
    "evaluation": "reinforce_jax.rl.evaluation",
    "normalization": "reinforce_jax.rl.normalization",
    "hparams": "reinforce_jax.rl.hparams",
    "policies": "reinforce_jax.rl.policies",
    "returns": "reinforce_jax.rl.returns",
    "rollouts": "reinforce_jax.rl.rollouts",
    "train": "reinforce_jax.rl.train",
    "TrainConfig": "reinforce_jax.rl.config:TrainConfig",
    "Algorithm": "reinforce_jax.rl.algorithms:Algorithm",
    "Batch": "reinforce_jax.rl.algorithms:Batch",
    "Policy": "reinforce_jax.rl.policies:Policy",
    "discounted_returns": "reinforce_jax.rl.returns:discounted_returns",
    "gae_advantages": "reinforce_jax.rl.returns:gae_advantages",
    "lambda_returns": "reinforce_jax.rl.returns:lambda_returns",
    "normalize_advantages": "reinforce_jax.rl.returns:normalize_advantages",
    "Evaluation": "reinforce_jax.rl.evaluation:Evaluation",
    "evaluate": "reinforce_jax.rl.evaluation:evaluate",
    "ObsNormalizer": "reinforce_jax.rl.normalization:ObsNormalizer",
    "ObsStats": "reinforce_jax.rl.normalization:ObsStats",
    "EnvCarry": "reinforce_jax.rl.rollouts:EnvCarry",
    "Trajectory": "reinforce_jax.rl.rollouts:Trajectory",
    "replay": "reinforce_jax.rl.rollouts:replay",
    "reset_envs": "reinforce_jax.rl.rollouts:reset_envs",
    "rollout": "reinforce_jax.rl.rollouts:rollout",
    "linear_anneal": "reinforce_jax.rl.train:linear_anneal",
    "make_optimizer": "reinforce_jax.rl.train:make_optimizer",
    "make_run": "reinforce_jax.rl.train:make_run",
    "make_train": "reinforce_jax.rl.train:make_train",
    "make_train_step": "reinforce_jax.rl.train:make_train_step",
    "RunOutput": "reinforce_jax.rl.train:RunOutput",
    "TrainState": "reinforce_jax.rl.train:TrainState",
    "updates_per_step": "reinforce_jax.rl.train:updates_per_step",
}

__getattr__, __dir__ = lazy_exports(__name__, _ORIGINS)

__all__ = sorted(_ORIGINS)
