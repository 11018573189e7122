"""Unit tests of data_prep's pieces: mel parity, alignment, head pose, stats, shards."""

import os

import numpy as np
import pytest

from avflow_jax.core import align
from avflow_jax.core import audio as audio_lib
from avflow_jax.core import constants as C
from avflow_jax.core.errors import BadInput
from data_prep import headpose
from data_prep import mel as mel_lib
from data_prep import shards as shards_lib
from data_prep import stats as stats_lib
from data_prep import synthetic as fx


def _speechy(n, seed=0):
  rng = np.random.default_rng(seed)
  x = fx.tone(n / C.SAMPLE_RATE, C.SAMPLE_RATE, seed)[:, 0]
  x[: n // 5] = 0.0  # digital silence exercises the 1e-5 floor / 1e-9 in the sqrt.
  x[n // 2: n // 2 + 2000] += 0.5 * rng.standard_normal(2000)
  return np.clip(x, -1, 1).astype(np.float32)


@pytest.mark.parametrize("n", [22050, 22050 * 2 + 77])
def test_mel_matches_bigvgan(n):
  torch = pytest.importorskip("torch")
  meldataset = pytest.importorskip("bigvgan.meldataset")
  x = _speechy(n)
  ref = meldataset.mel_spectrogram(torch.from_numpy(x)[None], C.N_FFT, C.N_MELS, C.SAMPLE_RATE,
                                   C.HOP_LENGTH, C.WIN_LENGTH, C.MEL_FMIN, C.MEL_FMAX,
                                   center=False)[0].T.numpy()
  ours = mel_lib.log_mel(x)
  assert ours.shape == ref.shape == (n // 256, 80)
  assert np.abs(ours - ref).max() <= 1e-3
  # The stored mel is of the waveform divided by AUDIO_GAIN.
  ref_gain = meldataset.mel_spectrogram(torch.from_numpy(x / C.AUDIO_GAIN)[None], C.N_FFT,
                                        C.N_MELS, C.SAMPLE_RATE, C.HOP_LENGTH, C.WIN_LENGTH,
                                        C.MEL_FMIN, C.MEL_FMAX)[0].T.numpy()
  assert np.abs(mel_lib.clip_mel(x) - ref_gain).max() <= 1e-3


def test_mel_frames_and_floor():
  for n in (1000, 1024, 5000, 5120):
    assert mel_lib.log_mel(np.zeros(n, np.float32)).shape == (n // 256, 80)
  silent = mel_lib.log_mel(np.zeros(4096, np.float32))
  # sqrt(1e-9) per bin, summed by the filters, stays above the floor: finite, constant rows.
  assert np.isfinite(silent).all() and np.allclose(silent, silent[:1])
  assert silent.min() >= np.log(1e-5) - 1e-6


def test_resample_stream_known_answers():
  rate = 30.0
  n_native = 90  # 3 s
  t_native = (np.arange(n_native) + 0.5) / rate
  ramp = np.stack([t_native, 2 * t_native + 1], -1)  # a linear function of time
  out = align.resample_stream(ramp, rate, 258)
  t_out = (np.arange(258) + 0.5) / C.FRAME_RATE
  inside = (t_out >= t_native[0]) & (t_out <= t_native[-1])
  np.testing.assert_allclose(out[inside, 0], t_out[inside], atol=1e-6)
  np.testing.assert_allclose(out[inside, 1], 2 * t_out[inside] + 1, atol=1e-5)
  # Before the first centre / after the last: the edge value.
  np.testing.assert_allclose(out[~inside & (t_out < 1), 0], t_native[0], atol=1e-6)
  np.testing.assert_allclose(out[~inside & (t_out > 1), 0], t_native[-1], atol=1e-6)
  # Same rate: identity.
  x = np.random.default_rng(0).normal(size=(50, 3))
  np.testing.assert_allclose(align.resample_stream(x, C.FRAME_RATE, 50), x, atol=1e-6)


def test_fill_missing_interior_and_edges():
  codes = np.arange(10, dtype=np.float64)[:, None] * np.array([[1.0, -2.0]])
  codes[[0, 1, 4, 5, 9]] = 999.0  # garbage in the missing rows
  observed = np.ones(10, bool)
  observed[[0, 1, 4, 5, 9]] = False
  filled = align.fill_missing(codes, observed)
  expect = np.arange(10, dtype=np.float64)
  expect[[0, 1]] = 2.0  # start run: nearest valid (frame 2)
  expect[9] = 8.0  # end run: nearest valid (frame 8)
  np.testing.assert_allclose(filled[:, 0], expect)  # 4, 5 linear between 3 and 6
  np.testing.assert_allclose(filled[:, 1], -2 * expect)
  with pytest.raises(ValueError):
    align.fill_missing(codes, np.zeros(10, bool))


def test_resample_mask_any_missing_neighbour_rule():
  observed = np.ones(30, bool)
  observed[10] = False
  mask = align.resample_mask(observed, 30.0, 86)
  pos = np.clip(align.source_positions(30.0, 86), 0, 29)
  touches = (np.floor(pos) == 10) | ((np.ceil(pos) == 10) & (pos % 1 > 0))
  np.testing.assert_array_equal(mask, (~touches).astype(np.float32))
  # One native frame influences 2 native intervals = 2 / 30 s ~ 5.7 mel frames.
  assert 5 <= (mask == 0).sum() <= 6


def test_duration_checks():
  align.check_duration("f.npy", 90, 30.0, 3.0)
  align.check_duration("f.npy", 91, 30.0, 3.0)
  with pytest.raises(BadInput, match="f.npy"):
    align.check_duration("f.npy", 92, 30.0, 3.0)
  align.check_token_count("t.npy", fx.n_tokens(100.0) - 1, 100.0)
  with pytest.raises(BadInput):
    align.check_token_count("t.npy", 4900, 100.0)


def test_quaternions_roundtrip_and_continuity():
  # A rotation sweeping past 180 degrees: its quaternion's w changes sign.
  theta = np.linspace(0, 1.8 * np.pi, 50)
  axis = np.array([1.0, 2.0, 2.0]) / 3.0
  q = np.concatenate([np.cos(theta / 2)[:, None], np.sin(theta / 2)[:, None] * axis], -1)
  tr = np.zeros((50, 3, 4))
  tr[:, :, :3] = fx.quat_to_rot(q)
  tr[:, :, 3] = [1.0, 2.0, 3.0]
  head = headpose.transforms_to_head(tr, "h.npy")
  np.testing.assert_allclose(head[:, :4], q, atol=1e-6)  # continuous, w >= 0 at frame 0
  np.testing.assert_allclose(head[:, 4:], np.tile([1.0, 2.0, 3.0], (50, 1)))
  # Any rotation -> +-q; the canonical per-frame sign gets fixed by continuity.
  rng = np.random.default_rng(1)
  qr = rng.normal(size=(20, 4))
  qr /= np.linalg.norm(qr, axis=-1, keepdims=True)
  back = headpose.rotation_to_quaternion(fx.quat_to_rot(qr))
  np.testing.assert_allclose(np.abs(np.sum(back * qr, -1)), 1.0, atol=1e-9)
  bad = tr.copy()
  bad[3, :, :3] = -np.eye(3)  # a reflection
  with pytest.raises(BadInput, match="determinant"):
    headpose.transforms_to_head(bad, "h.npy")
  with pytest.raises(BadInput, match="shape"):
    headpose.transforms_to_head(np.zeros((5, 4)), "h.npy")


def test_stats_streaming_and_floor():
  rng = np.random.default_rng(0)
  a, b = rng.normal(3, 2, size=(100, 4)), rng.normal(3, 2, size=(57, 4))
  b[:, 3] = a[:, 3] = 7.0  # constant dim -> floored std
  run = stats_lib.RunningStats()
  run.add({"x": stats_lib.clip_sums(a)})
  run.add({"x": stats_lib.clip_sums(b)})
  out = run.finalize()["x"]
  both = np.concatenate([a, b])
  np.testing.assert_allclose(out["mean"], both.mean(0), rtol=1e-12)
  np.testing.assert_allclose(out["std"][:3], both.std(0)[:3], rtol=1e-10)
  assert out["std"][3] == stats_lib.STD_FLOOR
  w = np.zeros(100)
  w[:10] = 1
  s = stats_lib.clip_sums(a, w)
  assert s["count"] == 10 and np.allclose(s["sum"], a[:10].sum(0))


def test_shard_assignment_and_names():
  assert shards_lib.shard_name("train", 3, 12) == "train-00003-of-00012.array_record"
  name = shards_lib.shard_name("val", 0, 2, generation=7)
  assert name == "val-g0007-00000-of-00002.array_record"
  assert shards_lib.shard_generation(name) == 7 and shards_lib.shard_split(name) == "val"
  assert shards_lib.shard_generation("train-00003-of-00012.array_record") is None
  assert shards_lib.shard_split(".val-g0007-00000-of-00002.array_record.1.x.partial") is None
  groups = shards_lib.assign(list(range(10)), 3)
  assert [len(g) for g in groups] == [3, 4, 3] and sum(groups, []) == list(range(10))
  assert shards_lib.num_shards(0, 5, 1) == 1
  assert shards_lib.num_shards(8, 5, 1) == 5
  assert shards_lib.num_shards(0, 0, 0) == 0


def test_wav_checks(tmp_path):
  path = str(tmp_path / "x.wav")
  fx.write_wav(path, fx.tone(0.5, 48000, 0, 2), 48000)
  audio, sr = audio_lib.read_wav(path, channels=(2,))
  assert audio.shape == (24000, 2) and sr == 48000
  with pytest.raises(BadInput, match="channel"):
    audio_lib.read_wav(path, channels=(1,))
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  with pytest.raises(BadInput, match="truncated"):
    audio_lib.read_wav(path, channels=(2,))
  open(path, "wb").write(b"not a wav at all" * 10)
  with pytest.raises(BadInput, match="unreadable"):
    audio_lib.read_wav(path)
  x = np.array([0.0, 0.5, -1.0, 1.0, -0.25], np.float32)
  np.testing.assert_array_equal(audio_lib.to_int16(x), [0, 16384, -32768, 32767, -8192])


def test_write_shard_turns_an_arrayrecord_io_failure_into_an_oserror(tmp_path, monkeypatch):
  from array_record.python import array_record_module
  real = array_record_module.ArrayRecordWriter

  class FullDisk(real):
    def close(self):
      super().close()
      raise RuntimeError("write() failed: No space left on device; writing x")

  monkeypatch.setattr(array_record_module, "ArrayRecordWriter", FullDisk)
  path = str(tmp_path / "train-g0001-00000-of-00001.array_record")
  with pytest.raises(OSError, match="No space left on device") as err:
    shards_lib.write_shard(path, [b"a", b"b"])
  assert err.value.filename == path
  assert os.listdir(tmp_path) == []  # No shard, no temporary.
