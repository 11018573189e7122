"""Face-rig channels, head pose and participant SMIRK features for the demo corpus.

Everything is driven by eSpeak's phoneme timings so that the motion is a learnable function
of the speech: targets are built on a fine grid (RIG_RATE), smoothed by critically damped
second-order dynamics (two identical one-pole low-passes), then sampled at 30 fps.
"""

import dataclasses
from typing import Sequence

import numpy as np
import scipy.signal
from scipy.spatial.transform import Rotation

from avflow_jax.core import face_rig

VIDEO_FPS = 30
RIG_RATE = 300  # fine grid for targets (10 per video frame), so 30-60 ms phones are resolved.
LEAD_S = 0.02  # articulators move slightly ahead of the sound (anticipatory coarticulation).
REST_GAP_S = 0.25  # silences at least this long let the lips close to rest.

# Time constants (s) of the critically damped dynamics, per channel.
TAU = {"jaw_open": 0.025, "lip_closure": 0.012, "lip_round": 0.035, "smile": 0.15,
       "brow_raise": 0.08, "blink": 0.015, "nod": 0.07, "drift": 1.5}

_VOWEL_CHARS = set("aAeEiI0oOuUV@3")
_BILABIAL = {"p", "b", "m"}
_LABIODENTAL = {"f", "v"}
# Longest prefix wins: eSpeak English vowel mnemonics -> jaw opening.
_VOWEL_JAW = (("aI", 0.8), ("aU", 0.8), ("aa", 0.85), ("a", 0.85), ("A", 0.85), ("V", 0.6),
              ("0", 0.7), ("OI", 0.65), ("O", 0.65), ("o", 0.45), ("E", 0.55), ("e", 0.5),
              ("3", 0.4), ("@", 0.35), ("i", 0.2), ("I", 0.25), ("u", 0.25), ("U", 0.3))
_VOWEL_ROUND = (("aU", 0.4), ("OI", 0.7), ("O", 0.85), ("0", 0.6), ("oU", 0.85), ("o", 0.8),
                ("u", 1.0), ("U", 0.7), ("3", 0.3))
_CONSONANT_ROUND = {"w": 0.9, "r": 0.35, "S": 0.45, "Z": 0.45, "tS": 0.45, "dZ": 0.45}


@dataclasses.dataclass(frozen=True)
class Phone:
  """One phoneme in absolute segment time (seconds)."""
  start: float
  end: float
  name: str  # eSpeak mnemonic without stress marks.
  stress: int  # 2 primary ('), 1 secondary (,), 0 none.


def split_stress(mnemonic: str) -> tuple[str, int]:
  """"'eI" -> ("eI", 2); ",a" -> ("a", 1); "t#" -> ("t", 0)."""
  stress = 2 if "'" in mnemonic else 1 if "," in mnemonic else 0
  base = mnemonic.replace("'", "").replace(",", "").replace("%", "").replace("=", "")
  base = base.rstrip("#-")
  return base, stress


def is_pause(name: str) -> bool:
  return not name or name.startswith("_")


def is_vowel(name: str) -> bool:
  return bool(name) and name[0] in _VOWEL_CHARS


def viseme(name: str) -> tuple[float, float, float]:
  """(jaw_open, lip_closure, lip_round) targets of one phoneme (stress already stripped)."""
  if name in _BILABIAL:
    return 0.05, 1.0, 0.15
  if name in _LABIODENTAL:
    return 0.1, 0.35, 0.1
  if is_vowel(name):
    jaw = next((v for p, v in _VOWEL_JAW if name.startswith(p)), 0.4)
    rnd = next((v for p, v in _VOWEL_ROUND if name.startswith(p)), 0.0)
    return jaw, 0.0, rnd
  return (0.3 if name == "h" else 0.15), 0.0, _CONSONANT_ROUND.get(name, 0.05)


def damped(x: np.ndarray, tau: float, rate: float = RIG_RATE) -> np.ndarray:
  """Critically damped 2nd-order response to target `x` (..., T): two one-pole low-passes.

  Starts at rest on the first target value (no start-up transient).
  """
  a = float(np.exp(-1.0 / (tau * rate)))
  b, den = [1.0 - a], [1.0, -a]
  zi = scipy.signal.lfilter_zi(b, den)
  y = x
  for _ in range(2):
    y, _ = scipy.signal.lfilter(b, den, y, axis=-1, zi=zi * y[..., :1])
  return y


def smooth_noise(rng: np.random.Generator, shape: tuple, tau: float,
                 rate: float) -> np.ndarray:
  """Unit-variance, slowly varying noise (…, T): white noise through the damped dynamics.

  A burn-in of 6 tau is generated and dropped so the start is already stationary, and the
  scale uses the filter's exact stationary variance (not the sample's).
  """
  burn = int(np.ceil(6 * tau * rate))
  white = rng.standard_normal(shape[:-1] + (shape[-1] + burn,))
  a = float(np.exp(-1.0 / (tau * rate)))
  y = white
  for _ in range(2):
    y = scipy.signal.lfilter([1.0 - a], [1.0, -a], y, axis=-1)
  var = (1 - a) ** 4 * (1 + a * a) / (1 - a * a) ** 3
  return y[..., burn:] / np.sqrt(var)


def _span(grid_len: int, start: float, end: float, rate: float = RIG_RATE) -> slice:
  i0 = int(np.clip(round(start * rate), 0, grid_len))
  i1 = int(np.clip(round(end * rate), i0, grid_len))
  return slice(i0, i1)


def speaking_mask(phones: Sequence[Phone], n: int, gap_s: float = REST_GAP_S) -> np.ndarray:
  """(n,) bool on the fine grid: inside speech, with pauses shorter than gap_s bridged."""
  mask = np.zeros(n, bool)
  for ph in phones:
    mask[_span(n, ph.start - LEAD_S, ph.end - LEAD_S)] = True
  idx = np.flatnonzero(mask)
  if idx.size:
    gaps = np.flatnonzero(np.diff(idx) > 1)
    for g in gaps:
      a, b = idx[g], idx[g + 1]
      if (b - a) / RIG_RATE < gap_s:
        mask[a:b] = True
  return mask


def events(rng: np.random.Generator, duration: float, mean_gap: float, min_gap: float,
           dur_range: tuple[float, float]) -> list[tuple[float, float]]:
  """Random (start, end) events: gaps min_gap + Exp(mean_gap), durations U(dur_range)."""
  out, t = [], min_gap + rng.exponential(mean_gap)
  while t < duration:
    d = rng.uniform(*dur_range)
    out.append((t, min(t + d, duration)))
    t += d + min_gap + rng.exponential(mean_gap)
  return out


def articulation(phones: Sequence[Phone], n: int) -> dict[str, np.ndarray]:
  """Jaw / closure / rounding channels (fine grid, after dynamics) from phone timings."""
  speaking = speaking_mask(phones, n)
  jaw = np.where(speaking, 0.12, 0.03)
  close = np.where(speaking, 0.0, 0.9)  # lips rest closed in longer silences.
  rnd = np.full(n, 0.05)
  for ph in phones:
    if is_pause(ph.name):
      continue
    j, c, r = viseme(ph.name)
    s = _span(n, ph.start - LEAD_S, ph.end - LEAD_S)
    jaw[s], close[s], rnd[s] = j, c, r
  return {"jaw_open": damped(jaw, TAU["jaw_open"]),
          "lip_closure": damped(close, TAU["lip_closure"]),
          "lip_round": damped(rnd, TAU["lip_round"]), "speaking": speaking}


def pulses(n: int, spans: Sequence[tuple[float, float, float]], base: np.ndarray | float,
           tau: float) -> np.ndarray:
  """Target = base, raised to `amp` during each (start, end, amp); then the dynamics."""
  target = np.array(np.broadcast_to(base, (n,)), np.float64)
  for start, end, amp in spans:
    s = _span(n, start, end)
    target[s] = np.maximum(target[s], amp)
  return damped(target, tau)


def stressed(phones: Sequence[Phone]) -> list[Phone]:
  return [p for p in phones if p.stress == 2 and is_vowel(p.name)]


def actor_channels(rng: np.random.Generator, phones: Sequence[Phone],
                   questions: Sequence[tuple[float, float]],
                   smile_spans: Sequence[tuple[float, float, float]],
                   n: int) -> np.ndarray:
  """(n, 6) rig channels of the actor on the fine grid, in face_rig.CHANNELS order."""
  art = articulation(phones, n)
  brow_spans = [(p.start - LEAD_S, p.start + 0.25, rng.uniform(0.4, 0.9))
                for p in stressed(phones) if rng.random() < 0.35]
  # A question raises the brows over its last ~0.6 s.
  brow_spans += [(max(s, e - 0.6), e, 0.6) for s, e in questions]
  brow = pulses(n, brow_spans, np.where(art["speaking"], 0.12, 0.05), TAU["brow_raise"])
  smile = pulses(n, smile_spans, 0.03, TAU["smile"])
  blink_spans = [(s, e, 1.0) for s, e in events(rng, n / RIG_RATE, 2.8, 0.8, (0.10, 0.16))]
  blink = pulses(n, blink_spans, 0.0, TAU["blink"])
  ch = {"jaw_open": art["jaw_open"], "lip_closure": art["lip_closure"],
        "lip_round": art["lip_round"], "smile": smile, "brow_raise": brow, "blink": blink}
  return np.clip(np.stack([ch[c] for c in face_rig.CHANNELS], -1), 0.0, 1.0)


def to_video(x: np.ndarray, num_frames: int) -> np.ndarray:
  """Fine grid (RIG_RATE) -> 30 fps: frame k takes the fine sample at time k / 30."""
  step = RIG_RATE // VIDEO_FPS
  return x[::step][:num_frames]


def nod_spans(rng: np.random.Generator, phones: Sequence[Phone],
              listen: Sequence[tuple[float, float]]) -> list[tuple[float, float, float]]:
  """Head nods (start, end, radians): on stressed syllables, and backchannels while listening."""
  # The nod's apex (where the head stops: a velocity minimum) lands on the stressed vowel's
  # onset, as gesture apexes align with pitch accents.
  spans = [(p.start - 0.25, p.start, np.deg2rad(rng.uniform(2.0, 5.0)))
           for p in stressed(phones) if rng.random() < 0.5]
  for s, e in listen:
    t = s + rng.uniform(0.5, 1.5)
    while t < e:
      spans.append((t, t + 0.25, np.deg2rad(rng.uniform(1.5, 3.0))))
      t += 1.0 + rng.exponential(2.0)
  return spans


def head_transforms(rng: np.random.Generator, phones: Sequence[Phone],
                    listen: Sequence[tuple[float, float]], n: int,
                    num_frames: int) -> np.ndarray:
  """(num_frames, 4, 4) float32 rigid head transforms at 30 fps.

  Rotation = slow drift (pitch/yaw/roll std 2.5/4/1.5 degrees) + nods (pitch down) on
  stressed syllables and while listening; translation (millimetres) = slow drift of std
  ~6 mm plus a small forward/down shift during nods.
  """
  drift_std = np.deg2rad(np.array([2.5, 4.0, 1.5]))[:, None]
  angles = smooth_noise(rng, (3, n), TAU["drift"], RIG_RATE) * drift_std
  nod = pulses(n, nod_spans(rng, phones, listen), 0.0, TAU["nod"])
  angles[0] += nod
  trans = smooth_noise(rng, (3, n), TAU["drift"], RIG_RATE) * 6.0
  trans[1] -= 150.0 * nod  # ~4 mm down per degree-scale nod (radians * 150 mm).
  trans[2] += 80.0 * nod
  angles = to_video(angles.T, num_frames)
  trans = to_video(trans.T, num_frames)
  out = np.zeros((num_frames, 4, 4), np.float64)
  out[:, :3, :3] = Rotation.from_euler("xyz", angles).as_matrix()
  out[:, :3, 3] = trans
  out[:, 3, 3] = 1.0
  return out.astype(np.float32)


# SMIRK layout of the participant features (58 dims together):
#   <seg>--expression.npy (N, 55) = [FLAME expression (50) ; jaw pose (3, axis-angle) ;
#                                    eyelids (2, left/right closure)]
#   <seg>--headpose.npy   (N, 3)  = FLAME global head rotation (axis-angle, radians).
SMIRK_EXPRESSION_DIM = 55
SMIRK_HEADPOSE_DIM = 3


@dataclasses.dataclass(frozen=True)
class SmirkBasis:
  """Fixed (per corpus) directions of the FLAME expression space."""
  smile: np.ndarray  # (50,)
  jaw: np.ndarray
  round: np.ndarray
  brow: np.ndarray

  @classmethod
  def create(cls, rng: np.random.Generator) -> "SmirkBasis":
    dirs = rng.standard_normal((4, 50))
    dirs *= 1.5 / np.linalg.norm(dirs, axis=1, keepdims=True) * np.sqrt(50) / 4
    return cls(*dirs)


def participant_smirk(rng: np.random.Generator, basis: SmirkBasis, identity: np.ndarray,
                      phones: Sequence[Phone], smile_spans: Sequence[tuple[float, float, float]],
                      listen: Sequence[tuple[float, float]], n: int,
                      num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Participant SMIRK features at 30 fps: expression (N, 55) and head pose (N, 3)."""
  art = articulation(phones, n)
  smile = pulses(n, smile_spans, 0.03, TAU["smile"])
  brow_spans = [(p.start, p.start + 0.25, rng.uniform(0.3, 0.8))
                for p in stressed(phones) if rng.random() < 0.3]
  brow = pulses(n, brow_spans, 0.1, TAU["brow_raise"])
  blink_spans = [(s, e, 1.0) for s, e in events(rng, n / RIG_RATE, 2.5, 0.8, (0.10, 0.16))]
  blink = pulses(n, blink_spans, 0.0, TAU["blink"])
  expr = (identity[:, None] + np.outer(basis.smile, smile) + np.outer(basis.jaw, art["jaw_open"])
          + np.outer(basis.round, art["lip_round"]) + np.outer(basis.brow, brow)
          + 0.15 * smooth_noise(rng, (50, n), 0.4, RIG_RATE))
  jaw_pose = np.stack([0.35 * art["jaw_open"], 0.02 * smooth_noise(rng, (n,), 0.5, RIG_RATE),
                       0.02 * smooth_noise(rng, (n,), 0.5, RIG_RATE)])
  eyelids = np.clip(blink[None] + 0.02 * smooth_noise(rng, (2, n), 0.3, RIG_RATE), 0, 1)
  head = smooth_noise(rng, (3, n), TAU["drift"], RIG_RATE) * np.deg2rad([3.0, 5.0, 2.0])[:, None]
  head[0] += pulses(n, nod_spans(rng, phones, listen), 0.0, TAU["nod"])
  expression = np.concatenate([expr, jaw_pose, eyelids], 0).T
  return (to_video(expression, num_frames).astype(np.float32),
          to_video(head.T, num_frames).astype(np.float32))


def nuisance(mix: tuple[np.ndarray, np.ndarray], channels: np.ndarray,
             rng: np.random.Generator, rate: float = VIDEO_FPS) -> np.ndarray:
  """(N, 250) nuisance latent: a fixed nonlinear function of the channels + slow noise.

  Makes the codes look entangled like a learned latent while staying (mostly) predictable.
  """
  w1, w2 = mix
  hidden = np.tanh((channels - face_rig.CHANNEL_CENTER) * face_rig.CHANNEL_GAIN @ w1)
  noise = smooth_noise(rng, (face_rig.NUISANCE_DIM, channels.shape[0]), 0.5, rate).T
  return 0.15 * hidden @ w2 + 0.05 * noise


def nuisance_mix(rng: np.random.Generator, hidden: int = 16) -> tuple[np.ndarray, np.ndarray]:
  w1 = rng.standard_normal((face_rig.NUM_CHANNELS, hidden)) / np.sqrt(face_rig.NUM_CHANNELS)
  w2 = rng.standard_normal((hidden, face_rig.NUISANCE_DIM)) / np.sqrt(hidden) * 2.0
  return w1, w2
