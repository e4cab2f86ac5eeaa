"""The throughput benchmarks time the work they claim: XLA cannot delete it.

A benchmark that throws away what it computes measures less than a training
loop does. These tests compile the benchmark programs and look for the work in
XLA's optimised program, with a deliberately wasteful twin as the control.
"""

import pathlib
import sys

import jax
import pytest

from reinforce_jax.envs import CartPole

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import env_stepping  # noqa: E402


def _optimised_hlo(fn, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


def _has_trig(hlo: str) -> bool:
  # CartPole's physics: cos(theta) and sin(theta) every step.
  return " sine(" in hlo and " cosine(" in hlo


@pytest.mark.parametrize("batched", [False, True])
def test_env_stepping_keeps_cartpole_physics(batched):
  run = env_stepping.make_stepper(CartPole(), 8, 4, batched=batched)
  assert _has_trig(_optimised_hlo(run, jax.random.key(0)))


def test_the_check_catches_a_benchmark_that_drops_the_state():
  # What env_stepping.py used to time: only the sum of CartPole's constant
  # reward of 1 leaves the program, so XLA deletes the dynamics.
  run = env_stepping.make_stepper(CartPole(), 8, 4, consume=False)
  assert not _has_trig(_optimised_hlo(run, jax.random.key(0)))


def test_gymnax_cartpole_benchmark_keeps_its_physics():
  gymnax = pytest.importorskip("gymnax")
  del gymnax
  from reinforce_jax.envs import make

  run = env_stepping.make_stepper(make("gymnax:CartPole-v1"), 8, 4)
  assert _has_trig(_optimised_hlo(run, jax.random.key(0)))
