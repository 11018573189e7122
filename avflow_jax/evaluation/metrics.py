"""The paper's evaluation metrics (AV-Flow Tab. 1-3) as pure numpy functions.

The official code publishes no metric implementation, so the open parameters are fixed here
and documented (see /work/shared/spec/data_vocoder_asr_metrics.md §5):

* F1_lips / F1_smiles: per-frame binary events from the demo face rig's channels
  (`face_rig.closure`: lip_closure >= 0.5; `face_rig.smile`: smile >= 0.5) in place of mesh
  vertex distances; no temporal tolerance. F1 = 2TP / (2TP + FP + FN).
* FD_e: Fréchet distance between Gaussian fits of per-frame codes.
* Div_h / Div_e: mean over dimensions of the standard deviation over all generated frames.
* BC_h / BC_e (Beat Align): audio beats = librosa onset peaks of the generated speech;
  motion beats = local minima of the Gaussian-smoothed kinetic velocity; Gaussian score with
  sigma = BEAT_SIGMA_S seconds.
* MCD: mel-cepstral distortion in dB on DTW-aligned frames, c0 excluded.
* Jitter: mean absolute second difference per channel (at the 30 fps of the video), as a ratio
  of generated to ground truth; channels are put on one scale by the ground truth's std.
"""

import warnings

import numpy as np
import scipy.fft
import scipy.linalg
import scipy.ndimage
import scipy.signal

from avflow_jax.core import face_rig as face_rig_lib

# Beat Align, Bailando's settings (sigma 3 frames, velocity smoothed with a 5-frame
# Gaussian, at 60 fps) expressed in seconds so 30 fps and 86.13 fps motion agree.
BEAT_SIGMA_S = 3.0 / 60.0
VELOCITY_SMOOTH_S = 5.0 / 60.0
# MCD: cepstra c0..c24 from an 80-band mel spectrogram (n_fft 1024, hop 256, up to 8 kHz).
MCD_N_CEPSTRA = 25
MCD_N_MELS = 80
MCD_N_FFT = 1024
MCD_HOP = 256


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f"{name}: expected an (N, D) array, got shape {x.shape}")
  return x


def f1_binary(gt_mask: np.ndarray, pred_mask: np.ndarray) -> float:
  """F1 score of per-frame binary events.

  TP = Σ gt·pred, FP = Σ (1−gt)·pred, FN = Σ gt·(1−pred); F1 = 2TP / (2TP + FP + FN)
  (= 2PR / (P + R)). When neither mask has any event the masks agree perfectly: 1.0.

  Args:
    gt_mask: boolean (T,) ground-truth events (any shape; flattened).
    pred_mask: boolean mask of the same shape from the generated sequence.

  Returns:
    F1 in [0, 1].
  """
  gt = np.asarray(gt_mask).astype(bool)
  pred = np.asarray(pred_mask).astype(bool)
  if gt.shape != pred.shape:
    raise ValueError(f"f1_binary: masks differ in shape: {gt.shape} vs {pred.shape}")
  tp = np.sum(gt & pred)
  fp = np.sum(~gt & pred)
  fn = np.sum(gt & ~pred)
  if tp + fp + fn == 0:
    return 1.0
  return float(2 * tp / (2 * tp + fp + fn))


def _channels(x: np.ndarray, rig: "face_rig_lib.FaceRig | None") -> np.ndarray:
  x = np.asarray(x)
  if rig is not None:
    return rig.decode(x)
  return x


def f1_lips(gt_channels: np.ndarray, gen_channels: np.ndarray,
            rig: "face_rig_lib.FaceRig | None" = None) -> float:
  """F1 of lip-closure frames (lip_closure >= face_rig.LIP_CLOSURE_THRESHOLD).

  Args:
    gt_channels: (T, 6) rig channels, or (T, 256) codes when `rig` is given.
    gen_channels: the generated counterpart, same frames.
    rig: decode codes with this rig first.
  """
  return f1_binary(face_rig_lib.closure(_channels(gt_channels, rig)),
                   face_rig_lib.closure(_channels(gen_channels, rig)))


def f1_smiles(gt_channels: np.ndarray, gen_channels: np.ndarray,
              rig: "face_rig_lib.FaceRig | None" = None) -> float:
  """F1 of smiling frames (smile >= face_rig.SMILE_THRESHOLD); arguments as `f1_lips`."""
  return f1_binary(face_rig_lib.smile(_channels(gt_channels, rig)),
                   face_rig_lib.smile(_channels(gen_channels, rig)))


def frechet_distance(real: np.ndarray, gen: np.ndarray, eps: float = 1e-6) -> float:
  """Fréchet distance between Gaussian fits of two sets of vectors (FD_e).

  FD = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½), covariances with N−1 normalisation.
  If the matrix square root is singular or not finite, eps·I is added to both covariances and it is
  retried; a small imaginary part from round-off is dropped.

  Args:
    real: (N, D) ground-truth frames (e.g. face codes).
    gen: (M, D) generated frames.
    eps: diagonal jitter for the retry.

  Returns:
    The distance (>= 0 up to round-off).
  """
  real = _as_2d(real, "frechet_distance(real)")
  gen = _as_2d(gen, "frechet_distance(gen)")
  if real.shape[1] != gen.shape[1]:
    raise ValueError(f"frechet_distance: dims differ: {real.shape[1]} vs {gen.shape[1]}")
  if real.shape[0] < 2 or gen.shape[0] < 2:
    raise ValueError("frechet_distance: need at least 2 samples in each set")
  mu_r, mu_g = real.mean(0), gen.mean(0)
  sig_r = np.atleast_2d(np.cov(real, rowvar=False))
  sig_g = np.atleast_2d(np.cov(gen, rowvar=False))
  with warnings.catch_warnings():
    # A singular product (rank-deficient covariances) warns; it is handled by the retry.
    warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
    try:
      covmean = scipy.linalg.sqrtm(sig_r @ sig_g)
    except scipy.linalg.LinAlgWarning:
      covmean = None
  if covmean is None or not np.all(np.isfinite(covmean)):
    jitter = eps * np.eye(sig_r.shape[0])
    covmean = scipy.linalg.sqrtm((sig_r + jitter) @ (sig_g + jitter))
  if np.iscomplexobj(covmean):
    imag = np.max(np.abs(covmean.imag))
    if imag > 1e-3 * max(1.0, np.max(np.abs(covmean.real))):
      raise ValueError(f"frechet_distance: sqrtm has a large imaginary part ({imag:.3g})")
    covmean = covmean.real
  diff = mu_r - mu_g
  return float(diff @ diff + np.trace(sig_r) + np.trace(sig_g) - 2.0 * np.trace(covmean))


def diversity(x: np.ndarray) -> float:
  """Div_h / Div_e: mean over dimensions of the std over all samples (frames).

  Args:
    x: (N, D) generated frames, or (..., D) (all leading axes are pooled).
  """
  x = np.asarray(x, np.float64)
  if x.ndim == 0 or x.size == 0:
    raise ValueError(f"diversity: expected (..., D) samples, got shape {x.shape}")
  x = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x[:, None]
  return float(np.mean(np.std(x, axis=0)))


def audio_beats(audio: np.ndarray, sr: int) -> np.ndarray:
  """Onset times (s): peaks of librosa's onset-strength envelope (default hop 512)."""
  import librosa  # pylint: disable=g-import-not-at-top  # heavy; only the metrics need it.
  y = np.asarray(audio)
  y = (y.astype(np.float32) / 32768.0 if np.issubdtype(y.dtype, np.integer)
       else y.astype(np.float32))
  if y.ndim != 1:
    raise ValueError(f"audio_beats: expected mono audio (N,), got shape {y.shape}")
  return librosa.onset.onset_detect(y=y, sr=sr, units="time")


def motion_beats(motion: np.ndarray, fps: float,
                 smooth_s: float = VELOCITY_SMOOTH_S) -> np.ndarray:
  """Times (s) of local minima of the smoothed kinetic velocity v_t = ‖x_{t+1} − x_t‖.

  v_t is placed at the midpoint (t + 0.5) / fps of its two frames.
  """
  x = _as_2d(motion, "motion_beats(motion)")
  if x.shape[0] < 3:
    return np.zeros((0,))
  vel = np.linalg.norm(np.diff(x, axis=0), axis=-1)
  if smooth_s > 0:
    vel = scipy.ndimage.gaussian_filter1d(vel, smooth_s * fps, mode="nearest")
  (idx,) = scipy.signal.argrelextrema(vel, np.less)
  return (idx + 0.5) / fps


def beat_consistency(audio: np.ndarray, sr: int, motion: np.ndarray, fps: float,
                     sigma: float = BEAT_SIGMA_S,
                     smooth_s: float = VELOCITY_SMOOTH_S) -> float:
  """Beat Align score between generated speech and motion (BC_h with head pose, BC_e codes).

  BC = (1/|B_a|) Σ_{a∈B_a} exp(−min_{m∈B_m} (a − m)² / (2σ²)), with B_a the audio onsets
  (`audio_beats`) and B_m the motion beats (`motion_beats`), all in seconds.

  Args:
    audio: mono speech (int16 or float in [-1, 1]).
    sr: its sample rate.
    motion: (T, D) motion (head pose or expression codes).
    fps: motion frame rate (30 or 86.13).
    sigma: tolerance in seconds (BEAT_SIGMA_S = 0.05 s).
    smooth_s: velocity smoothing std in seconds (VELOCITY_SMOOTH_S = 0.083 s).

  Returns:
    Score in [0, 1]; NaN when the audio has no onset at all; 0 when the motion has no beat.
  """
  a = audio_beats(audio, sr)
  m = motion_beats(motion, fps, smooth_s)
  return beat_score(a, m, sigma)


def beat_score(audio_times: np.ndarray, motion_times: np.ndarray,
               sigma: float = BEAT_SIGMA_S) -> float:
  """The Beat Align formula on given beat times (seconds); see `beat_consistency`."""
  a = np.asarray(audio_times, np.float64).reshape(-1)
  m = np.asarray(motion_times, np.float64).reshape(-1)
  if a.size == 0:
    return float("nan")
  if m.size == 0:
    return 0.0
  dist = np.min(np.abs(a[:, None] - m[None, :]), axis=1)
  return float(np.mean(np.exp(-dist**2 / (2.0 * sigma**2))))


def mel_cepstra(audio: np.ndarray, sr: int, n_cepstra: int = MCD_N_CEPSTRA) -> np.ndarray:
  """(n_cepstra, frames) mel-cepstra of the natural-log mel magnitude spectrum.

  Mel magnitude spectrogram with n_fft 1024, hop 256, 80 Slaney bands up to
  min(8 kHz, sr/2) (the project's mel), log floor 1e-5 as BigVGAN's, then a DCT-II over the
  bands scaled by 2/n_mels, so that ln|X(ω_mel)| ≈ c0/2 + Σ_d c_d cos(d ω_mel): the
  cepstral scale of SPTK-style mel-cepstra that the MCD formula assumes.
  """
  log_mel = np.log(np.maximum(mcd_mel(audio, sr), 1e-5)).astype(np.float64)
  return scipy.fft.dct(log_mel, type=2, axis=0)[:n_cepstra] / MCD_N_MELS


def mcd_mel(audio: np.ndarray, sr: int) -> np.ndarray:
  """(80, frames) mel magnitude spectrogram the MCD's cepstra are computed from."""
  import librosa  # pylint: disable=g-import-not-at-top
  y = np.asarray(audio)
  y = (y.astype(np.float32) / 32768.0 if np.issubdtype(y.dtype, np.integer)
       else y.astype(np.float32))
  if y.ndim != 1 or y.size < MCD_N_FFT:
    raise ValueError(f"mel_cepstra: expected mono audio of >= {MCD_N_FFT} samples, "
                     f"got shape {y.shape}")
  return librosa.feature.melspectrogram(y=y, sr=sr, n_fft=MCD_N_FFT, hop_length=MCD_HOP,
                                        n_mels=MCD_N_MELS, fmax=min(8000.0, sr / 2), power=1.0)


def mcd(ref_audio: np.ndarray, gen_audio: np.ndarray, sr: int,
        n_cepstra: int = MCD_N_CEPSTRA) -> float:
  """Mel-cepstral distortion (dB) between reference and generated speech.

  Per aligned frame pair: (10 / ln 10) · sqrt(2 · Σ_{d=1}^{D} (c_d − ĉ_d)²), c0 (energy)
  excluded, D = n_cepstra − 1 = 24; frames aligned by DTW (librosa.sequence.dtw, Euclidean
  cost on c1..c24) and the per-pair values averaged over the path. Silences are kept (no
  VAD), so long pauses against speech raise the value. Identical audio gives 0; eSpeak's
  voice at a 14 % faster rate ~2 dB, another voice variant ~10 dB. (The paper's MCD of
  ~1 is on an unpublished scale, so absolute numbers are not comparable.)

  Args:
    ref_audio: mono reference speech.
    gen_audio: mono generated speech (any length).
    sr: sample rate of both.
    n_cepstra: cepstra computed including c0.
  """
  import librosa  # pylint: disable=g-import-not-at-top
  c_ref = mel_cepstra(ref_audio, sr, n_cepstra)[1:]
  c_gen = mel_cepstra(gen_audio, sr, n_cepstra)[1:]
  _, path = librosa.sequence.dtw(X=c_ref, Y=c_gen, metric="euclidean")
  diff = c_ref[:, path[:, 0]] - c_gen[:, path[:, 1]]
  per_frame = (10.0 / np.log(10.0)) * np.sqrt(2.0 * np.sum(diff**2, axis=0))
  return float(np.mean(per_frame))


def second_differences(x: np.ndarray, valid=None) -> tuple[np.ndarray, int]:
  """Per-channel sums of |x[t+1] - 2 x[t] + x[t-1]| over triples of valid frames.

  Args:
    x: (T, D) stream.
    valid: optional (T,) bool; a triple counts only when its three frames are valid.

  Returns:
    ((D,) sums, number of triples).
  """
  x = _as_2d(x, "stream")
  if x.shape[0] < 3:
    return np.zeros(x.shape[1]), 0
  d2 = np.abs(x[2:] - 2 * x[1:-1] + x[:-2])
  if valid is not None:
    v = np.asarray(valid, bool)
    keep = v[2:] & v[1:-1] & v[:-2]
    d2 = d2[keep]
  return d2.sum(0), int(d2.shape[0])


class JitterRatio:
  """Jitter of generated motion relative to the ground truth's, pooled over clips.

  jitter_c = mean |second difference| of channel c; both sides are divided by the ground
  truth's std of that channel (so no channel's units dominate) and summed over channels:
  ratio = sum_c gen_c / std_c  /  sum_c gt_c / std_c  (1 = as smooth as the ground truth).
  """

  def __init__(self):
    self._gen = self._gt = None
    self._n_gen = self._n_gt = 0
    self._frames: list[np.ndarray] = []

  def add(self, gt: np.ndarray, gen: np.ndarray, valid=None) -> float:
    """Adds one clip; returns its own ratio (NaN when undefined)."""
    s_gt, n_gt = second_differences(gt, valid)
    s_gen, n_gen = second_differences(gen, valid)
    if self._gen is None:
      self._gen, self._gt = np.zeros_like(s_gen), np.zeros_like(s_gt)
    self._gen += s_gen
    self._gt += s_gt
    self._n_gen += n_gen
    self._n_gt += n_gt
    gt = _as_2d(gt, "stream")
    self._frames.append(gt if valid is None else gt[np.asarray(valid, bool)])
    return self._ratio(s_gen, n_gen, s_gt, n_gt, self._frames[-1])

  @staticmethod
  def _ratio(s_gen, n_gen, s_gt, n_gt, gt_frames) -> float:
    if not n_gen or not n_gt or gt_frames.shape[0] < 2:
      return float("nan")
    std = gt_frames.std(0)
    # A channel the ground truth barely moves in this clip must not blow the ratio up.
    scale = 1.0 / np.maximum(std, max(0.01 * float(np.median(std)), 1e-8))
    den = float((s_gt / n_gt * scale).sum())
    return float((s_gen / n_gen * scale).sum() / den) if den > 0 else float("nan")

  def ratio(self) -> float:
    """The pooled ratio over every clip added (NaN when no triple was valid)."""
    if self._gen is None:
      return float("nan")
    return self._ratio(self._gen, self._n_gen, self._gt, self._n_gt,
                       np.concatenate(self._frames))
