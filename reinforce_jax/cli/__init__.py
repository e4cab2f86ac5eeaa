"""The `reinforce-jax` command: train a preset, resume it, or sweep it.

* `parsing`: the argument parser and its value checks (no JAX).
* `checks`: what a run request must pass before training (its folder, resume record,
  memory, cluster options, logging extras), each refused as one line with exit status 2.
* `commands`: `train` and `sweep`, which import JAX only after the arguments are checked.

Imports: `reinforce_jax.experiments`, `reinforce_jax.rl` (their JAX-free modules at
import time).
"""

from reinforce_jax.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
