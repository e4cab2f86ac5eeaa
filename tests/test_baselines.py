import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax import baselines


def test_leave_one_out_is_the_mean_of_the_others():
  values = jnp.array([[1.0, 2.0, 6.0], [0.0, 3.0, 3.0]])
  got = baselines.leave_one_out(values, axis=1)
  np.testing.assert_allclose(got, [[4.0, 3.5, 1.5], [3.0, 1.5, 1.5]])
  np.testing.assert_allclose(baselines.leave_one_out(values, axis=0), values[::-1])


def test_leave_one_out_needs_two_samples():
  with pytest.raises(ValueError, match=r"\(3, 1\)"):
    baselines.leave_one_out(jnp.zeros((3, 1)), axis=1)
