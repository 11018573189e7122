"""Known-answer tests for avflow_jax.metrics."""

import numpy as np
import pytest

from avflow_jax.core import face_rig
from avflow_jax.evaluation import metrics

SR = 22050


def _clicks(times, duration, seed=0):
  """Noise bursts (20 ms) at `times` on a quiet floor."""
  rng = np.random.default_rng(seed)
  y = 1e-4 * rng.standard_normal(int(duration * SR))
  for t in times:
    i = int(t * SR)
    y[i:i + int(0.02 * SR)] += 0.5 * rng.standard_normal(int(0.02 * SR))
  return y.astype(np.float32)


def test_f1_binary_known_answers():
  a = np.array([1, 1, 0, 0, 1, 0], bool)
  assert metrics.f1_binary(a, a) == 1.0
  assert metrics.f1_binary(a, ~a) == 0.0
  # TP=1, FP=1, FN=2 -> 2/(2+1+2) = 0.4.
  assert metrics.f1_binary(a, np.array([1, 0, 1, 0, 0, 0], bool)) == pytest.approx(0.4)
  assert metrics.f1_binary(np.zeros(5, bool), np.zeros(5, bool)) == 1.0
  with pytest.raises(ValueError):
    metrics.f1_binary(a, a[:3])


def test_f1_lips_and_smiles_via_rig():
  rng = np.random.default_rng(0)
  ch = rng.uniform(0, 1, (300, 6))
  rig = face_rig.FaceRig.create(seed=1)
  codes = rig.encode(ch, 0.3 * rng.standard_normal((300, face_rig.NUISANCE_DIM)))
  assert metrics.f1_lips(ch, ch) == 1.0
  assert metrics.f1_lips(codes, codes, rig=rig) == 1.0
  flipped = ch.copy()
  flipped[:, 1] = 1.0 - ch[:, 1]
  flipped[:, 3] = 1.0 - ch[:, 3]
  assert metrics.f1_lips(ch, flipped) < 0.02  # only values exactly at 0.5 could agree.
  assert metrics.f1_smiles(ch, flipped) < 0.02
  assert metrics.f1_smiles(ch, ch) == 1.0


def test_frechet_distance_known_answers():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4000, 8))
  assert abs(metrics.frechet_distance(x, x)) < 1e-6
  shift = np.array([1.0, -2.0, 0.5, 0, 0, 0, 0, 3.0])
  fd = metrics.frechet_distance(x, x + shift)
  assert fd == pytest.approx(float(shift @ shift), rel=1e-6)
  y = rng.standard_normal((4000, 8)) + shift
  assert metrics.frechet_distance(x, y) == pytest.approx(float(shift @ shift), rel=0.05)
  # Scaling by 2: Tr(I + 4I - 2·2I) = D per unit variance.
  z = 2.0 * rng.standard_normal((20000, 8))
  assert metrics.frechet_distance(rng.standard_normal((20000, 8)), z) == pytest.approx(
      8.0, rel=0.1)


def test_frechet_distance_rank_deficient_is_finite():
  rng = np.random.default_rng(1)
  x = np.zeros((50, 6))
  x[:, 0] = rng.standard_normal(50)
  fd = metrics.frechet_distance(x, x + 1.0)
  assert np.isfinite(fd) and fd == pytest.approx(6.0, abs=1e-3)


def test_diversity_known_answers():
  assert metrics.diversity(np.full((10, 4), 3.0)) == 0.0
  x = np.stack([np.array([0.0, 2.0] * 50), np.array([1.0, 5.0] * 50)], axis=1)
  assert metrics.diversity(x) == pytest.approx((1.0 + 2.0) / 2)
  assert metrics.diversity(x.reshape(2, 50, 2)) == pytest.approx(1.5)


def test_beat_score_formula():
  assert metrics.beat_score([1.0, 2.0], [1.0, 2.0]) == 1.0
  s = metrics.beat_score([1.0], [1.1], sigma=0.1)
  assert s == pytest.approx(np.exp(-0.5))
  assert np.isnan(metrics.beat_score([], [1.0]))
  assert metrics.beat_score([1.0], []) == 0.0


def test_beat_consistency_aligned_beats_score_higher_than_shifted():
  duration, fps = 6.0, 30.0
  times = 0.25 + 0.5 * np.arange(11)
  audio = _clicks(times, duration)
  onsets = metrics.audio_beats(audio, SR)
  assert len(onsets) == len(times)
  assert np.max(np.abs(onsets - times)) < 0.05
  t = np.arange(int(duration * fps)) / fps
  # sin(2πt) has zero velocity at t = 0.25 + 0.5k: the motion beats sit on the clicks.
  aligned = np.sin(2 * np.pi * t)[:, None]
  shifted = np.sin(2 * np.pi * (t - 0.2))[:, None]
  beats = metrics.motion_beats(aligned, fps)
  assert np.max(np.abs(beats[:5] - times[:5])) < 0.03
  bc_aligned = metrics.beat_consistency(audio, SR, aligned, fps)
  bc_shifted = metrics.beat_consistency(audio, SR, shifted, fps)
  assert bc_aligned > 0.8
  assert bc_shifted < 0.3


def test_mcd_identical_zero_and_different_positive():
  rng = np.random.default_rng(0)
  t = np.arange(SR) / SR
  tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)))
  assert metrics.mcd(tone, tone, SR) == 0.0
  noise = 0.3 * rng.standard_normal(SR)
  assert metrics.mcd(tone, noise, SR) > 3.0
  # A copy with a repeated stretch is handled by DTW: much closer than a different signal.
  slow = np.concatenate([tone[: SR // 2], tone[SR // 2 - 2000:]])
  assert metrics.mcd(tone, slow, SR) < 0.25 * metrics.mcd(tone, noise, SR)


@pytest.mark.parametrize("case", ["stretched", "other_voice"])
def test_mcd_equals_the_mel_cepstral_distance_package(case):
  """The project's MCD is the `mel-cepstral-distance` package's (Kubichek's mel-cepstra, DTW)
  on the same mel, c1..c24, exact DTW, rescaled to the dB formula of the speech literature:
  its cepstra are the DCT of log10 energies (n_mels / ln 10 times the project's), and MCD dB =
  (10 / ln 10) sqrt(2) ||dc||, so project = 10 sqrt(2) / n_mels x package."""
  mcd_pkg = pytest.importorskip("mel_cepstral_distance")
  rng = np.random.default_rng(1)
  t = np.arange(SR) / SR
  ref = 0.3 * np.sin(2 * np.pi * (200 + 150 * t) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
  ref = ref + 0.01 * rng.standard_normal(SR)
  if case == "stretched":  # The same sound with a repeated stretch: DTW matters.
    gen = np.concatenate([ref[: SR // 2], ref[SR // 2 - 3000:]])
  else:
    gen = 0.2 * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(2 * np.pi * 5 * t))
    gen = gen + 0.05 * rng.standard_normal(SR)
  bel = lambda y: 2 * np.log10(np.maximum(metrics.mcd_mel(y, SR), 1e-5)).T  # log10 energy.
  theirs, _ = mcd_pkg.compare_mel_spectrograms(
      bel(ref), bel(gen), s=0, D=metrics.MCD_N_CEPSTRA - 1, align_target="mfcc",
      aligning="dtw", dtw_radius=None)
  ours = metrics.mcd(ref, gen, SR)
  assert ours > 0.5
  assert ours == pytest.approx(10 * np.sqrt(2) / metrics.MCD_N_MELS * theirs, rel=1e-6)


def test_jitter_ratio_known_answers():
  t = np.arange(300, dtype=np.float64)
  smooth = np.stack([np.sin(t * 0.05), 100 * np.cos(t * 0.03)], -1)  # channels 100x apart
  jr = metrics.JitterRatio()
  assert jr.add(smooth, smooth) == pytest.approx(1.0)
  # Alternating +-e on every frame adds |d2| = 4e to each channel's second difference.
  shaky = smooth + 0.01 * (-1.0) ** t[:, None] * smooth.std(0)
  ratio = metrics.JitterRatio().add(smooth, shaky)
  assert ratio > 10
  # Channels are put on one scale: the 100x channel does not decide the ratio alone.
  only_small = smooth.copy()
  only_small[:, 0] = shaky[:, 0]
  only_big = smooth.copy()
  only_big[:, 1] = shaky[:, 1]
  a, b = metrics.JitterRatio().add(smooth, only_small), metrics.JitterRatio().add(smooth, only_big)
  assert a == pytest.approx(b, rel=0.5)
  # Invalid frames break triples: a jump across a gap is not counted.
  jumpy = smooth.copy()
  jumpy[150:] += 50
  valid = np.ones(300, bool)
  valid[149:151] = False
  assert metrics.JitterRatio().add(smooth, jumpy, valid) == pytest.approx(1.0)
  assert metrics.JitterRatio().add(smooth, jumpy) > 1.5
  assert np.isnan(metrics.JitterRatio().add(smooth[:2], smooth[:2]))
  # Pooled over clips: the mean of two clips with ratio 1 and a shaky one lies between.
  jr.add(smooth, shaky)
  assert 1.0 < jr.ratio() < ratio
