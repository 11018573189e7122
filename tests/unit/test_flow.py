"""Flow-matching functions: paths, targets, masked losses and the Euler solver."""

import jax
import jax.numpy as jnp
import numpy as np

from avflow_jax.core import flow


def test_path_endpoints_and_velocity():
  x0 = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3))
  x1 = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
  sig = flow.SIGMA_MIN
  np.testing.assert_allclose(flow.interpolate(x0, x1, jnp.zeros(2)), x0, atol=1e-7)
  np.testing.assert_allclose(flow.interpolate(x0, x1, jnp.ones(2)), x1 + sig * x0, atol=1e-7)
  # The target is the time derivative of the path (finite difference).
  t, h = jnp.full((2,), 0.4), 1e-2
  fd = (flow.interpolate(x0, x1, t + h) - flow.interpolate(x0, x1, t - h)) / (2 * h)
  np.testing.assert_allclose(fd, flow.velocity_target(x0, x1), atol=1e-4)


def test_sigma_min_is_the_official_value():
  assert flow.SIGMA_MIN == 1e-6


def test_masked_l1_ignores_masked_frames():
  pred = jnp.zeros((1, 4, 2))
  target = jnp.array([[[1, 1], [2, 2], [100, 100], [3, 3]]], jnp.float32)
  mask = jnp.array([[1, 1, 0, 1]], jnp.float32)
  assert float(flow.masked_l1(pred, target, mask)) == 2.0
  assert float(flow.masked_l1(pred, target)) == 26.5


def test_weighted_losses_use_the_weights():
  preds = {"face": jnp.zeros((1, 2, 1)), "mel": jnp.zeros((1, 2, 1))}
  targets = {"face": jnp.ones((1, 2, 1)), "mel": 2 * jnp.ones((1, 2, 1))}
  total, parts = flow.weighted_l1_losses(preds, targets, {}, {"face": 1.0, "mel": 3.0})
  assert float(parts["face"]) == 1.0 and float(parts["mel"]) == 2.0
  assert float(total) == 7.0


def test_euler_follows_a_straight_path_exactly():
  x0 = jnp.array([0.5, -1.0])
  x1 = jnp.array([2.0, 3.0])
  v = lambda x, t: x1 - x0  # Constant velocity: Euler is exact for any step count.
  for n in (1, 8):
    np.testing.assert_allclose(flow.euler_integrate(v, x0, n), x1, atol=1e-6)
  # A time-dependent field: dx/dt = t integrates to 1/2; Euler with 8 steps gives 7/16.
  out = flow.euler_integrate(lambda x, t: jnp.ones_like(x) * t, jnp.zeros(1), 8)
  np.testing.assert_allclose(out, [7 / 16], atol=1e-6)


def test_time_sampling_uniform_is_unchanged_and_logit_normal_has_its_law():
  key = jax.random.PRNGKey(3)
  # The default draw is the one every earlier run trained with (resumes stay exact).
  np.testing.assert_array_equal(flow.sample_time(key, 64),
                                jax.random.uniform(key, (64,), jnp.float32))
  t = np.asarray(flow.sample_time(key, 200_000, "logit_normal", loc=0.5, scale=0.8))
  assert t.min() > 0 and t.max() < 1
  logit = np.log(t / (1 - t))
  np.testing.assert_allclose([logit.mean(), logit.std()], [0.5, 0.8], atol=0.01)
  try:
    flow.sample_time(key, 4, "cosine")
  except ValueError as e:
    assert "'cosine'" in str(e) and "logit_normal" in str(e)
  else:
    raise AssertionError("an unknown time sampling must be an error")
