"""Experiments: everything around the train step that a run needs.

* `loop`: `run_loop`, a thin driver over jitted chunks with callbacks (metrics, early
  stopping, checkpoints, progress, chunks of bounded wall time).
* `episodes`: statistics of finished episodes (final returns, the recent-episodes window).
* `checkpoints`: save, find and restore a run's state with orbax.
* `loggers`: TensorBoard and Weights & Biases as run-loop callbacks.
* `sweep`: hyperparameter sweeps as one program (`vmap` over a grid and seeds).
* `distributed`: data parallelism over devices and hosts with `jax.sharding`.
* `plotting`: figures for a finished run.
* `presets`: named tasks (an environment, a policy and a config per algorithm).
* `runner`: `run_experiment`, several seeds of a preset in one program, into a run folder.

Imports: `reinforce_jax.rl`, `reinforce_jax.sequence`, `reinforce_jax.envs` and below.
Names are imported on first use, so the CLI reads `presets` without importing JAX.
"""

from reinforce_jax._src.lazy import lazy_exports

_ORIGINS = {
    "checkpoints": "reinforce_jax.experiments.checkpoints",
    "distributed": "reinforce_jax.experiments.distributed",
    "episodes": "reinforce_jax.experiments.episodes",
    "loggers": "reinforce_jax.experiments.loggers",
    "loop": "reinforce_jax.experiments.loop",
    "plotting": "reinforce_jax.experiments.plotting",
    "presets": "reinforce_jax.experiments.presets",
    "runner": "reinforce_jax.experiments.runner",
    "sweep": "reinforce_jax.experiments.sweep",
    "run_loop": "reinforce_jax.experiments.loop:run_loop",
    "run_experiment": "reinforce_jax.experiments.runner:run_experiment",
    "run_sweep": "reinforce_jax.experiments.sweep:run_sweep",
}

__getattr__, __dir__ = lazy_exports(__name__, _ORIGINS)

__all__ = sorted(_ORIGINS)
