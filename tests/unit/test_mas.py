"""Monotonic alignment search against exhaustive search, and duration -> path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow_jax.models import mas


def _dp_reference(logp):
  """Plain-python transcription of the Glow-TTS DP (band, tie rule and all)."""
  s, t = logp.shape
  q = np.array(logp, np.float64)
  for y in range(t):
    for x in range(max(0, s + y - t), min(s, y + 1)):
      cur = -np.inf if x == y else q[x, y - 1]
      prev = (0.0 if y == 0 else -np.inf) if x == 0 else q[x - 1, y - 1]
      q[x, y] += max(cur, prev)
  path = np.zeros((s, t), np.float32)
  index = s - 1
  for y in range(t - 1, -1, -1):
    path[index, y] = 1
    if index != 0 and (index == y or q[index, y - 1] < q[index - 1, y - 1]):
      index -= 1
  return path


def _batch(rng, b, s, t):
  logp = rng.normal(size=(b, s, t)).astype(np.float32) * 3
  x_len = rng.integers(1, s + 1, size=b)
  x_len[0] = s
  y_len = np.array([rng.integers(x, t + 1) for x in x_len])
  y_len[0] = t
  return logp, x_len.astype(np.int32), y_len.astype(np.int32)


@pytest.mark.parametrize("seed, b, s, t", [(0, 24, 4, 7), (1, 24, 5, 9), (2, 8, 1, 5),
                                           (3, 8, 6, 6)])
def test_matches_bruteforce(seed, b, s, t):
  rng = np.random.default_rng(seed)
  logp, x_len, y_len = _batch(rng, b, s, t)
  path = np.asarray(jax.jit(mas.maximum_path)(logp, x_len, y_len))
  for i in range(b):
    want = np.zeros((s, t), np.float32)
    want[:x_len[i], :y_len[i]] = mas.mas_bruteforce(logp[i, :x_len[i], :y_len[i]])
    np.testing.assert_array_equal(path[i], want, err_msg=f"case {i}: {x_len[i]}x{y_len[i]}")
  # Every frame of the clip is assigned exactly once; every symbol gets >= 1 frame.
  np.testing.assert_array_equal(path.sum((1, 2)), y_len)
  durations = path.sum(2)
  for i in range(b):
    assert (durations[i, :x_len[i]] >= 1).all() and (durations[i, x_len[i]:] == 0).all()


def test_matches_reference_dp_on_larger_cases():
  rng = np.random.default_rng(5)
  logp, x_len, y_len = _batch(rng, 6, 17, 60)
  path = np.asarray(jax.jit(mas.maximum_path)(logp, x_len, y_len))
  for i in range(6):
    want = np.zeros_like(path[i])
    want[:x_len[i], :y_len[i]] = _dp_reference(logp[i, :x_len[i], :y_len[i]])
    np.testing.assert_array_equal(path[i], want)


def test_bruteforce_known_answer():
  # Symbol 0 likes frames 0-1, symbol 1 likes frame 2, symbol 2 likes frames 3-4.
  logp = np.full((3, 5), -5.0)
  logp[0, :2] = logp[1, 2] = logp[2, 3:] = 0.0
  want = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1]], np.float32)
  np.testing.assert_array_equal(mas.mas_bruteforce(logp), want)
  got = mas.maximum_path(jnp.asarray(logp)[None], jnp.array([3]), jnp.array([5]))
  np.testing.assert_array_equal(np.asarray(got)[0], want)


def test_durations_to_path():
  d = jnp.array([[1.0, 2.0, 3.0, 0.0], [2.0, 0.0, 1.0, 0.0]])
  path = np.asarray(mas.durations_to_path(d, 8))
  np.testing.assert_array_equal(path.sum(2), [[1, 2, 3, 0], [2, 0, 1, 0]])
  np.testing.assert_array_equal(path.sum((1, 2)), [6, 3])
  np.testing.assert_array_equal(path[0].argmax(0)[:6], [0, 1, 1, 2, 2, 2])
  assert (path.sum(1) <= 1).all()  # at most one symbol per frame.
  # Truncation at the frame budget.
  np.testing.assert_array_equal(np.asarray(mas.durations_to_path(d, 4)).sum((1, 2)), [4, 3])
