"""The Python API: a trained avatar that turns ASR tokens (or speech) into voice and motion.

  from avflow_jax.inference import avatar as avatar_lib
  avatar = avatar_lib.Avatar.load("/tmp/avflow", vocoder_weights="bigvgan.safetensors")
  out = avatar.generate(tokens)          # tokens: (T, 29) raw ASR logits on the mel grid
  out["waveform"], out["face_30fps"], out["head_30fps"]

Inputs are padded to a length bucket (by default a multiple of 256 frames, ~3 s) and the
sampler is told the true lengths, so every length in a bucket reuses one compiled program and
the padding never reaches the real frames: attention (the AV model's and the head VAE's) masks
padded keys and every other layer is per-frame. The noise of a frame depends only on the seed,
the batch element and the frame's index (`flow.frame_noise`), so the result is the same in every
bucket, batched or not, and equals an unpadded call (and a stream) with the same seed.

Sampling memory grows linearly with length; an input longer than the avatar's `max_seconds`
(20 minutes by default, `buckets.DEFAULT_MAX_SECONDS`) is refused before anything is computed.
"""

import functools
import math
import os
from typing import Any, Optional, Sequence, Union

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core.errors import AvatarError
from avflow_jax.inference import buckets as buckets_lib
from avflow_jax.inference import loading
from avflow_jax.inference import sampling
from avflow_jax.inference import vocoder as vocoder_lib

# Vocoder input range: BigVGAN's log floor (silence) up to a level no real recording reaches
# (a full-scale sine peaks near 2.5); an untrained or diverged model can emit far larger values,
# which would overflow exp() inside the vocoder.
MEL_VOCODER_RANGE = (math.log(1e-5), 5.0)
VIDEO_FPS = C.VIDEO_FPS



def frames_at_fps(num_frames: int, fps: float = VIDEO_FPS) -> int:
  """Frames at `fps` covering the duration of `num_frames` mel frames (nearest, >= 1)."""
  return max(1, int(round(num_frames * fps / C.FRAME_RATE)))


def resample_to_fps(x: np.ndarray, fps: float = VIDEO_FPS, num_out: Optional[int] = None):
  """(T, ...) mel-rate stream -> (N, ...) at `fps` (linear, sample centres; data_prep/align)."""
  from avflow_jax.core import align  # pylint: disable=g-import-not-at-top
  x = np.asarray(x)
  n = frames_at_fps(x.shape[0], fps) if num_out is None else num_out
  return align.resample_stream(x, C.FRAME_RATE, n, dst_rate=fps)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("num_steps",))
def _sample_padded(av_model, head_vae, params, tokens, rng, lengths, participant, temperature,
                   x0, *, num_steps: int):
  """`sampling.sample` on a batch padded to a length bucket (padding is masked inside)."""
  out = sampling.sample(av_model, head_vae, params, tokens, rng, num_steps=num_steps,
                        participant=participant, lengths=lengths, temperature=temperature,
                        x0=x0)
  return {"mel": out["mel"], "face": out["face"], "head": out["head"]}


def compiled_programs() -> int:
  """Programs compiled so far for `_sample_padded` (one per bucket, batch size and step count)."""
  return _sample_padded._cache_size()  # pylint: disable=protected-access


# Inputs further than this from the training mean (in training stds) are refused: no real
# ASR logit or participant feature is (the demo's reach about 10), and the flow would be sampled
# far outside anything it learnt (1e30 tokens gave NaN, blamed on the checkpoint).
MAX_INPUT_STDS = 1000.0


class Avatar:
  """A trained AV-Flow avatar: tokens -> waveform, mel, face codes, head pose (+ rig channels)."""

  def __init__(self, loaded: loading.LoadedAvatar, vocoder: Optional[vocoder_lib.Vocoder],
               buckets: Union[int, Sequence[int]] = buckets_lib.DEFAULT_BUCKET, vocoder_weights=None,
               max_seconds: float = buckets_lib.DEFAULT_MAX_SECONDS):
    self.loaded = loaded
    self._vocoder = vocoder
    self._vocoder_weights = vocoder_weights
    self.buckets = buckets
    self.max_seconds = buckets_lib.check_max_seconds(max_seconds)
    self._asr = {}

  @classmethod
  def load(cls, workdir: str, *, vocoder_weights: Optional[str] = None, which: str = "ema",
           buckets: Union[int, Sequence[int]] = buckets_lib.DEFAULT_BUCKET,
           data_dir: Optional[str] = None,
           max_seconds: float = buckets_lib.DEFAULT_MAX_SECONDS,
           step: Optional[int] = None) -> "Avatar":
    """Loads the latest checkpoint of an AV training workdir (or its checkpoint `step`).

    Args:
      workdir: the AV run's workdir.
      vocoder_weights: BigVGAN safetensors (None: Griffin-Lim; a missing file is an error).
      which: "ema" or "params" weights.
      buckets: length buckets (see `bucket_frames`).
      data_dir: shard directory overriding the one recorded in WORKDIR/config.json.
      max_seconds: the longest input one call accepts (inf: no limit).
      step: the checkpoint step to load (default: the latest intact one).
    """
    if vocoder_weights is not None:
      if not os.path.isfile(vocoder_weights):
        raise AvatarError(f"{vocoder_weights}: vocoder weights file missing")
    buckets_lib.bucket_frames(1, buckets)  # Validates the ladder before anything heavy.
    max_seconds = buckets_lib.check_max_seconds(max_seconds)
    loaded = loading.load_avatar(workdir, which=which, data_dir=data_dir, step=step)
    return cls(loaded, None, buckets, vocoder_weights, max_seconds)

  # ---- Properties ------------------------------------------------------------------------------

  @property
  def dims(self) -> dict:
    return self.loaded.dims

  @property
  def face_rig(self):
    return self.loaded.face_rig

  @property
  def vocoder(self) -> vocoder_lib.Vocoder:
    """Built on first use (BigVGAN weights take a while to load)."""
    if self._vocoder is None:
      try:
        self._vocoder = vocoder_lib.make_vocoder(self._vocoder_weights)
      except Exception as e:  # pylint: disable=broad-except  (safetensors has its own errors)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AvatarError(f"vocoder weights {self._vocoder_weights}: cannot load BigVGAN "
                          f"({msg})") from e
    return self._vocoder

  # ---- Inputs ----------------------------------------------------------------------------------

  def _check_stream(self, name: str, x, width: int) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
      raise AvatarError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim not in (2, 3) or x.shape[-1] != width:
      raise AvatarError(f"{name}: expected shape (T, {width}) or (B, T, {width}), got "
                        f"{x.shape}")
    if x.shape[-2] < 1 or (x.ndim == 3 and x.shape[0] < 1):
      raise AvatarError(f"{name}: empty (shape {x.shape})")
    if not np.isfinite(x).all():
      raise AvatarError(f"{name}: contains NaN or inf")
    x = x.astype(np.float32)
    self._check_range(name, x)
    return x[None] if x.ndim == 2 else x

  def _check_range(self, name: str, x: np.ndarray) -> None:
    """Refuses values far outside the training data's (they would sample NaN, not motion)."""
    stats = self.loaded.manifest.get("stats", {}).get(name)
    if not stats:
      return
    z = np.abs((x - np.asarray(stats["mean"], np.float32))
               / np.asarray(stats["std"], np.float32))
    worst = float(z.max()) if np.isfinite(z).all() else float("inf")
    if worst > MAX_INPUT_STDS:
      raise AvatarError(f"{name}: values up to {float(np.abs(x).max()):.4g} lie {worst:.3g} "
                        f"standard deviations from the training data's mean (limit "
                        f"{MAX_INPUT_STDS:g}); pass {name} on the scale the avatar was trained "
                        "on (raw wav2vec2 CTC logits for tokens)")

  def prepare(self, tokens, participant=None):
    """Validates and batches inputs: ((B, T, 29) tokens, participant or None, was_batched)."""
    batched = np.ndim(tokens) == 3
    tok = self._check_stream("tokens", tokens, self.dims["tokens"])
    part = None
    if self.loaded.uses_participant:
      if participant is None:
        raise AvatarError("this avatar is dyadic (trained with participant features): pass "
                          f"participant (T, {self.dims['participant']}), e.g. "
                          "avatar.neutral_participant(T)")
      part = self._check_stream("participant", participant, self.dims["participant"])
      if part.shape[1] != tok.shape[1]:
        raise AvatarError(f"participant has {part.shape[1]} frames, tokens {tok.shape[1]}")
      if part.shape[0] != tok.shape[0]:
        part = np.broadcast_to(part, (tok.shape[0],) + part.shape[1:])
    elif participant is not None:
      raise AvatarError("participant given, but this avatar was trained without participant "
                        "features (config.data.participant is False)")
    return tok, part, batched

  def neutral_participant(self, num_frames: int) -> np.ndarray:
    """(num_frames, 87) an average listener: the training mean of the participant features.

    For dyadic avatars driven by text or speech alone, where no listener was recorded. It does
    not move; whether it reads as silent depends on the data (in the demo corpus the listener is
    mostly silent, so the mean of its 29 ASR logits is blank-dominated).
    """
    if not self.loaded.uses_participant:
      raise AvatarError("this avatar was trained without participant features")
    mean = np.asarray(self.loaded.manifest["stats"]["participant"]["mean"], np.float32)
    return np.broadcast_to(mean, (int(num_frames), mean.size)).copy()

  # ---- Sampling --------------------------------------------------------------------------------

  def max_frames(self) -> Optional[int]:
    """The most mel frames one call accepts (`max_seconds` at 86.13 fps; None: no limit)."""
    if math.isinf(self.max_seconds):
      return None
    return int(math.floor(self.max_seconds * C.FRAME_RATE))

  def check_length(self, num_frames: int, what: str = "tokens",
                   hint: str = "split them, or raise max_seconds (Avatar.load(max_seconds=S))"
                   ) -> None:
    """AvatarError (one line: the length, the limit) if `num_frames` is over `max_seconds`."""
    buckets_lib.check_length(num_frames, self.max_seconds, what=what, hint=hint)

  def sample_motion(self, tokens, *, seed: int = 0, num_steps: int = 8, participant=None,
                    temperature: Optional[float] = None, noise=None) -> dict[str, np.ndarray]:
    """Runs the flow sampler only: {"mel", "face", "head"} batched (B, T, .) numpy arrays.

    Args:
      tokens: (T, 29) or (B, T, 29) raw ASR logits on the mel grid.
      seed: noise seed (the same seed and inputs give the same sample).
      num_steps: Euler steps.
      participant: (T, 87) or (B, T, 87) raw participant features (dyadic avatars only).
      temperature: scale of the initial noise (None: the run's `sample.temperature`).
      noise: optional initial noise, (T, V + A) or (B, T, V + A) in the official layout [face
        codes | head latent | mel] (normalised units), used as given instead of drawing it
        from `seed` (and `temperature`): replays a run of the official sampler.

    Raises:
      AvatarError: bad inputs, or tokens longer than `max_seconds` (checked before any compute).
    """
    tok, part, _ = self.prepare(tokens, participant)
    if int(num_steps) < 1:
      raise AvatarError(f"num_steps={num_steps}: must be >= 1")
    b, t = tok.shape[:2]
    self.check_length(t)  # Before padding or compiling: a too long input fails in one line.
    tp = buckets_lib.bucket_frames(t, self.buckets)
    pad = ((0, 0), (0, tp - t), (0, 0))
    tok = np.pad(tok, pad)
    if part is not None:
      part = np.pad(part, pad)
    lengths = np.full((b,), t, np.int32)
    x0 = None if noise is None else np.pad(self._check_noise(noise, b, t), pad)
    before = compiled_programs()
    out = _sample_padded(self.loaded.model, self.loaded.head_vae, self.loaded.params,
                         jnp.asarray(tok), jax.random.PRNGKey(seed), jnp.asarray(lengths),
                         None if part is None else jnp.asarray(part),
                         jnp.float32(self.loaded.sample_temperature if temperature is None
                                     else temperature),
                         None if x0 is None else jnp.asarray(x0),
                         num_steps=int(num_steps))
    out = jax.device_get(out)
    bad = [k for k, v in out.items() if not np.isfinite(v[:, :t]).all()]
    if bad:
      raise AvatarError(f"the sampler produced NaN/inf in {', '.join(bad)}: checkpoint "
                        f"{self.loaded.workdir} (step {self.loaded.step}, "
                        f"{self.loaded.which}) is broken; try --which params or an earlier "
                        "checkpoint")
    if compiled_programs() > before:
      logging.info("compiled the sampler for batch %d x %d frames (bucket of %d), %d steps",
                   b, tp, t, num_steps)
    return {k: np.asarray(v[:, :t], np.float32) for k, v in out.items()}

  def _check_noise(self, noise, b: int, t: int) -> np.ndarray:
    """`noise` as a (B, T, V + A) float32 array; AvatarError naming the expected shape."""
    x = np.asarray(noise, np.float32)
    if x.ndim == 2:
      x = x[None]
    width = self.loaded.model.visual_dim + self.loaded.model.audio_dim
    if x.shape != (b, t, width):
      raise AvatarError(f"noise has shape {np.shape(noise)}, expected {(b, t, width)} (frames "
                        f"x [face {self.dims['face']} | head latent "
                        f"{self.loaded.head_vae.latent_dim} | mel {self.dims['mel']}])")
    if not np.isfinite(x).all():
      raise AvatarError("noise contains NaN or inf")
    return x

  def warmup(self, num_frames: int, batch: int = 1, num_steps: int = 8) -> None:
    """Compiles the sampler for the bucket of `num_frames` (so later calls are not timed with it)."""
    tok = np.zeros((batch, num_frames, self.dims["tokens"]), np.float32)
    part = (np.zeros((batch, num_frames, self.dims["participant"]), np.float32)
            if self.loaded.uses_participant else None)
    self.sample_motion(tok, num_steps=num_steps, participant=part)

  def motion_outputs(self, mel, face, head) -> dict[str, np.ndarray]:
    """One sample's mel-rate streams + the same motion at 30 fps (+ rig channels if any)."""
    head = sampling.unit_quaternions(np.asarray(head, np.float32))
    n30 = frames_at_fps(mel.shape[0])
    out = {"mel": mel, "face": face, "head": head,
           "face_30fps": resample_to_fps(face, num_out=n30),
           "head_30fps": sampling.unit_quaternions(resample_to_fps(head, num_out=n30))}
    if self.face_rig is not None:
      out["rig"] = self.face_rig.decode(face, clip=True)
      out["rig_30fps"] = self.face_rig.decode(out["face_30fps"], clip=True)
    return out

  def vocode(self, mel, clip: bool = True) -> np.ndarray:
    """(T, 80) or (B, T, 80) AV-Flow log-mel -> float32 waveform at 22,050 Hz (T * 256 samples).

    The mel is clipped to MEL_VOCODER_RANGE first (only for the vocoder; outputs keep it raw)
    and the waveform to [-1, 1]; `clip=False` does neither, as the official code.
    """
    if clip:
      mel = np.clip(mel, *MEL_VOCODER_RANGE)
    return vocoder_lib.mel_to_audio(self.vocoder, mel, clip=clip)

  def generate(self, tokens, *, seed: int = 0, num_steps: int = 8, participant=None,
               temperature: Optional[float] = None, vocode: bool = True, noise=None,
               clip: bool = True) -> dict[str, Any]:
    """Generates voice and motion from ASR tokens.

    Args:
      tokens: (T, 29) or (B, T, 29) raw ASR token logits on the mel grid (86.13 fps).
      seed: noise seed; batch element b gets its own noise from it.
      num_steps: Euler steps (8 in the paper).
      participant: raw participant features for dyadic avatars.
      temperature: scale of the initial noise (None: the run's `sample.temperature`).
      vocode: also run the vocoder (else no "waveform").
      noise: optional initial noise (see `sample_motion`).
      clip: clip the mel and waveform for the vocoder (False: unclipped, as the official code).

    Returns:
      For (T, 29) input: {"waveform": (T * 256,) float32 at 22,050 Hz, "mel": (T, 80),
      "face": (T, 256), "head": (T, 7 | 4), "face_30fps": (N, 256), "head_30fps": (N, 7 | 4),
      and with a face rig "rig": (T, 6), "rig_30fps": (N, 6)}, N = round(T * 30 / 86.13);
      for (B, T, 29) input the same arrays with a leading batch axis; plus "sample_rate",
      "frame_rate" and (with a rig) "rig_channels".
    """
    raw = self.sample_motion(tokens, seed=seed, num_steps=num_steps, participant=participant,
                             temperature=temperature, noise=noise)
    batched = np.ndim(tokens) == 3
    per = [self.motion_outputs(raw["mel"][i], raw["face"][i], raw["head"][i])
           for i in range(raw["mel"].shape[0])]
    out = {k: np.stack([p[k] for p in per]) for k in per[0]}
    if vocode:
      out["waveform"] = self.vocode(out["mel"], clip=clip)
    if not batched:
      out = {k: v[0] for k, v in out.items()}
    out["sample_rate"] = C.SAMPLE_RATE
    out["frame_rate"] = C.FRAME_RATE
    if self.face_rig is not None:
      from avflow_jax.core import face_rig as face_rig_lib  # pylint: disable=g-import-not-at-top
      out["rig_channels"] = face_rig_lib.CHANNELS
    return out

  # ---- Speech -> tokens ------------------------------------------------------------------------

  def tokens_from_audio(self, wav, sr: int, asr_weights: str,
                        official: bool = False) -> np.ndarray:
    """ASR token logits of a waveform, on the mel grid of its 22,050 Hz version.

    The same path as data prep (data_prep/clip.py): wav2vec2 logits at ~50 Hz, stretched so
    they span the audio exactly, linearly resampled to T = N_22k // 256 frames.

    Args:
      wav: (N,) mono float waveform in [-1, 1].
      sr: its sample rate.
      asr_weights: wav2vec2-base-960h safetensors.
      official: upsample the logits as the official sampler does instead (fixed 49.99 ->
        86.1328123 fps scale, floor(N * scale) frames; `align.official_token_upsample`).

    Returns:
      (T, 29) float32 tokens.
    """
    return tokens_from_audio(wav, sr, self._load_asr(asr_weights), official=official)

  def _load_asr(self, asr_weights: str):
    if asr_weights not in self._asr:
      self._asr[asr_weights] = load_asr(asr_weights)
    return self._asr[asr_weights]


def load_asr(asr_weights: str):
  """The wav2vec2 port (data_prep.asr) with errors that name the weights file."""
  if not asr_weights:
    raise AvatarError("audio input needs --asr-weights (wav2vec2-base-960h model.safetensors)")
  if not os.path.isfile(asr_weights):
    raise AvatarError(f"{asr_weights}: ASR weights file missing")
  try:
    from avflow_jax.models import asr  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise AvatarError(f"audio input needs data_prep.asr (the wav2vec2 port): {e}") from e
  try:
    return asr.load_asr(asr_weights)
  except Exception as e:  # pylint: disable=broad-except  (safetensors has its own errors)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise AvatarError(f"ASR weights {asr_weights}: cannot load wav2vec2 ({msg})") from e


def tokens_from_audio(wav, sr: int, asr_model, official: bool = False) -> np.ndarray:
  """(N,) waveform at `sr` -> (T, 29) tokens on the mel grid (see `Avatar.tokens_from_audio`).

  With `official`, the logits are upsampled as the official sampler does
  (`align.official_token_upsample`) instead of stretched onto the audio's mel length.
  """
  from avflow_jax.core import align  # pylint: disable=g-import-not-at-top
  from avflow_jax.core import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import asr  # pylint: disable=g-import-not-at-top
  wav = np.asarray(wav, np.float32)
  if wav.ndim == 2 and wav.shape[1] == 1:
    wav = wav[:, 0]
  if wav.ndim != 1:
    raise AvatarError(f"audio must be mono (N,), got shape {wav.shape}")
  if not np.isfinite(wav).all():
    raise AvatarError("audio contains NaN or inf samples")
  seconds = wav.shape[0] / float(sr)
  t = audio_lib.resample(wav, int(sr)).shape[0] // C.HOP_LENGTH
  if t < 1:
    raise AvatarError(f"audio too short: {seconds:.3f} s gives no mel frame")
  # The official extraction runs 100 s chunks; ours 20 s (faster, same logits but at the seams).
  kw = {"chunk_seconds": 100.0} if official else {}
  tok = np.asarray(asr.extract_tokens(wav, int(sr), asr_model, **kw), np.float32)
  if tok.ndim != 2 or tok.shape[1] != C.TOKEN_DIM or tok.shape[0] == 0:
    raise AvatarError(f"the ASR model returned shape {tok.shape} (expected (N, {C.TOKEN_DIM}))")
  if official:
    return align.official_token_upsample(tok)
  return align.resample_stream(tok, align.stretched_rate(tok.shape[0], seconds), t)
