"""Data parallelism over devices and hosts with `jax.sharding`.

The environment batch is split across a 1-D device mesh (axis `"envs"`);
parameters, optimizer state and counters are replicated. `train_step` needs no
change: under `jax.jit`, XLA's SPMD partitioner follows the input shardings, so
each device steps its share of the environments, and the loss (a mean over the
global batch) yields gradients averaged across devices by an all-reduce it
inserts. Random numbers do not depend on the sharding (JAX's partitionable
threefry), so the same global batch and seed train the same model on 1 and N
devices, up to the order of floating-point reductions.

Several hosts (processes) work the same way once `initialize` has connected
them: every process runs the same program, the mesh spans all their devices,
and XLA's collectives (gloo on CPUs, NCCL on GPUs, ICI on TPUs) do the rest.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reinforce_jax.rl.train import TrainState

__all__ = [
    "initialize",
    "make_mesh",
    "shard_state",
]

AXIS = "envs"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Connects this process to the others (`jax.distributed.initialize`).

  Call it before anything else touches JAX. With no arguments JAX detects the
  cluster (SLURM, TPU pods, Open MPI, Kubernetes); on a plain set of machines
  give the coordinator's `host:port`, the process count and this process's id.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices of all processes (default: all)."""
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
  return Mesh(np.asarray(devices[:num_devices]), (AXIS,))


def shard_state(state: TrainState, mesh: Mesh, *, batch_axis: int = 0) -> TrainState:
  """Places `state.env` split along its batch axis and everything else replicated.

  Args:
    state: a `TrainState` (or one with a leading seed axis: `batch_axis=1`).
    mesh: from `make_mesh`; its size must divide the number of environments.
    batch_axis: the environment axis of the `state.env` leaves.

  Returns:
    The same state, committed to those shardings.
  """
  size = mesh.devices.size
  num_envs = state.env.episode_return.shape[batch_axis]
  if num_envs % size:
    raise ValueError(
        f"num_envs={num_envs} must be divisible by the number of devices ({size})")
  spec = [None] * (batch_axis + 1)
  spec[batch_axis] = AXIS
  split = NamedSharding(mesh, PartitionSpec(*spec))
  replicated = NamedSharding(mesh, PartitionSpec())
  # Through host memory: every process holds the same values (they come from
  # the same keys), and device_put builds global arrays from host data.
  env = jax.tree.map(lambda x: jax.device_put(np.asarray(x), split), state.env)
  rest = jax.tree.map(lambda x: jax.device_put(np.asarray(x), replicated),
                      state._replace(env=()))
  return rest._replace(env=env)
