"""Tests for the demo face rig."""

import numpy as np
import pytest

from avflow_jax.core import face_rig


def _channels(rng, n):
  return rng.uniform(0.0, 1.0, size=(n, face_rig.NUM_CHANNELS))


def test_inverse_recovers_channels_with_nuisance():
  rng = np.random.default_rng(0)
  rig = face_rig.FaceRig.create(seed=3)
  ch = _channels(rng, 500)
  nuisance = 0.3 * rng.standard_normal((500, face_rig.NUISANCE_DIM))
  codes = rig.encode(ch, nuisance)
  assert codes.shape == (500, 256) and codes.dtype == np.float32
  back = rig.decode(codes)
  assert back.shape == (500, 6)
  assert np.max(np.abs(back - ch)) < 1e-5


def test_codes_look_like_a_latent():
  rng = np.random.default_rng(1)
  rig = face_rig.FaceRig.create(seed=0)
  ch = np.clip(0.5 + 0.25 * rng.standard_normal((4000, 6)), 0, 1)
  codes = rig.encode(ch, 0.3 * rng.standard_normal((4000, face_rig.NUISANCE_DIM)))
  std = codes.std(0)
  assert 0.5 < np.median(std) < 2.0
  # Every code dimension depends on the channels (no channel sits on its own axis).
  assert np.all(np.abs(rig.matrix[:6]).max(0) > 0)
  assert np.abs(codes.mean(0)).mean() > 0.1  # a non-zero offset, as in a learned latent.


def test_save_load_roundtrip_and_bad_file(tmp_path):
  rig = face_rig.FaceRig.create(seed=5)
  path = tmp_path / "rig.npz"
  rig.save(path)
  loaded = face_rig.FaceRig.load(path)
  np.testing.assert_array_equal(loaded.matrix, rig.matrix)
  np.testing.assert_array_equal(loaded.offset, rig.offset)
  with np.load(path, allow_pickle=False) as f:
    assert set(f.files) >= {"matrix", "offset", "channels", "version"}
  bad = tmp_path / "bad.npz"
  np.savez(bad, matrix=np.zeros((256, 256)), channels=np.array(face_rig.CHANNELS),
           version=np.int64(1))
  with pytest.raises(ValueError, match="offset"):
    face_rig.FaceRig.load(bad)
  np.savez(bad, matrix=np.zeros((256, 256)), offset=np.zeros(256),
           channels=np.array(face_rig.CHANNELS), version=np.int64(1))
  with pytest.raises(ValueError, match="invertible"):
    face_rig.FaceRig.load(bad)


def test_masks_use_documented_thresholds():
  ch = np.zeros((4, 6))
  ch[:, 1] = [0.0, 0.49, 0.5, 1.0]
  ch[:, 3] = [0.9, 0.1, 0.6, 0.4]
  np.testing.assert_array_equal(face_rig.closure(ch), [False, False, True, True])
  np.testing.assert_array_equal(face_rig.smile(ch), [True, False, True, False])
  with pytest.raises(ValueError):
    face_rig.closure(np.zeros((3, 5)))


def test_encode_shape_errors():
  rig = face_rig.FaceRig.create(seed=0)
  with pytest.raises(ValueError, match="nuisance"):
    rig.encode(np.zeros((2, 6)), np.zeros((2, 7)))
  with pytest.raises(ValueError, match="codes"):
    rig.decode(np.zeros((2, 255)))
  np.testing.assert_allclose(rig.decode(rig.encode(np.full((6,), 0.25))), 0.25, atol=1e-6)
