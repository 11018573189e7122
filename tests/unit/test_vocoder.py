"""Vocoder interface: Griffin-Lim round trip, BigVGAN bucketing, selection, AV-Flow gain."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from avflow_jax.core import constants
from avflow_jax.inference import vocoder as voc
from avflow_jax.models import bigvgan as bv
from tests import fixtures

TINY = dict(num_mels=80, upsample_initial_channel=16, upsample_rates=[4, 4],
            upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]], activation="snakebeta", snake_logscale=True)


def _log_mel(audio):
  """BigVGAN log-mel: data_prep's implementation, else the spec recipe with librosa."""
  try:
    from data_prep.mel import log_mel  # pylint: disable=g-import-not-at-top
    return log_mel(audio)
  except ImportError:
    import librosa  # pylint: disable=g-import-not-at-top
    x = np.pad(np.asarray(audio, np.float64), 384, mode="reflect")
    spec = librosa.stft(x, n_fft=1024, hop_length=256, win_length=1024, window="hann",
                        center=False)
    mag = np.sqrt(np.abs(spec) ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    return np.log(np.maximum(basis @ mag, 1e-5)).T[:len(audio) // 256].astype(np.float32)


def _harmonic(frames=86, sr=22050):
  t = np.arange(frames * 256) / sr
  f0 = 150 * (1 + 0.1 * np.sin(2 * np.pi * 1.5 * t))  # gliding pitch, like voiced speech
  phase = 2 * np.pi * np.cumsum(f0) / sr
  x = sum(0.3 / k * np.sin(k * phase) for k in range(1, 12))
  x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
  return (0.5 * x / np.abs(x).max()).astype(np.float32)


def test_griffin_lim_round_trip():
  audio = _harmonic()
  mel = _log_mel(audio)
  assert mel.shape == (86, 80)
  gl = voc.GriffinLimVocoder()
  assert gl.name == "griffin_lim" and gl.sample_rate == 22050
  y = gl(mel)
  assert y.dtype == np.float32 and y.shape == (86 * 256,)  # duration exact
  err = np.abs(_log_mel(y) - mel).mean()
  noise_err = np.abs(_log_mel(np.random.RandomState(0).randn(y.size) * audio.std()) - mel).mean()
  print(f"Griffin-Lim log-mel round trip error {err:.3f} (noise {noise_err:.2f})")
  assert err < 0.30  # measured 0.19-0.20; librosa's mel_to_stft gives 0.35, noise 5.1
  # Batched input: same per-item result and length.
  yb = gl(np.stack([mel[:40], mel[40:80]]))
  assert yb.shape == (2, 40 * 256)
  np.testing.assert_allclose(yb[0], gl(mel[:40]), atol=1e-6)


def _tiny_checkpoint(tmp_path, seed=0):
  config = bv.BigVGANConfig.from_dict(TINY)
  sd = fixtures.random_bigvgan_state_dict(config, seed, std=0.3)
  path = tmp_path / "bigvgan_generator.safetensors"
  save_file(sd, str(path))
  (tmp_path / "config.json").write_text(json.dumps(TINY))
  return str(path), config


def test_bigvgan_vocoder_buckets_and_lengths(tmp_path):
  path, config = _tiny_checkpoint(tmp_path)
  v = voc.BigVGANVocoder(path)
  assert v.name == "bigvgan" and v.hop_length == 16 and v.sample_rate == 22050
  mel = np.random.RandomState(1).normal(-6, 2, (37, 80)).astype(np.float32)
  y = v(mel)
  assert y.shape == (37 * 16,) and y.dtype == np.float32
  # Padding to the bucket (48 frames) only touches the last samples (the receptive field is a
  # few frames): run the same compiled model with loud, different padding and compare the rest.
  other = np.concatenate([mel, np.zeros((11, 80), np.float32)])[None]
  ref = np.asarray(v._apply(v._params, jnp.asarray(other)))[0]  # pylint: disable=protected-access
  np.testing.assert_allclose(y[:30 * 16], ref[:30 * 16], atol=1e-5)
  assert np.abs(y[-16:] - ref[37 * 16 - 16:37 * 16]).max() > 1e-3  # the tail does differ
  assert np.abs(ref).max() > 0.05
  yb = v(np.stack([mel, mel]))
  assert yb.shape == (2, 37 * 16)
  np.testing.assert_allclose(yb[1], y, atol=1e-5)
  # 37 and 35 frames share the 48-frame bucket: no recompilation.
  misses = v._apply._cache_size()  # pylint: disable=protected-access
  v(mel[:35])
  assert v._apply._cache_size() == misses  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="log-mels"):
    v(np.zeros((10, 81), np.float32))


def test_bucket_length():
  last = 0
  for t in range(1, 3000, 7):
    b = voc.bucket_length(t)
    assert b >= t and b % 16 == 0 and b >= last
    assert b <= max(32, 1.25 * t + 16)  # at most ~25% padding
    last = b


def test_make_vocoder_selection(tmp_path):
  assert isinstance(voc.make_vocoder(None), voc.GriffinLimVocoder)
  assert isinstance(voc.make_vocoder(str(tmp_path / "nope.safetensors")), voc.GriffinLimVocoder)
  path, _ = _tiny_checkpoint(tmp_path)
  v = voc.make_vocoder(path)
  assert isinstance(v, voc.BigVGANVocoder) and v.name == "bigvgan"


class _Constant(voc.Vocoder):
  name = "constant"

  def __call__(self, log_mel):
    t = np.asarray(log_mel).shape[-2]
    return np.linspace(-1.0, 1.0, t * 256, dtype=np.float32)


def test_mel_to_audio_gain_and_clip():
  y = voc.mel_to_audio(_Constant(), np.zeros((10, 80), np.float32))
  raw = np.linspace(-1.0, 1.0, 2560)
  assert constants.AUDIO_GAIN == 1.1
  np.testing.assert_allclose(y, np.clip(raw * 1.1, -1, 1), atol=1e-6)
  assert y.dtype == np.float32 and y.max() == 1.0 and y.min() == -1.0
