"""The demo face rig: six interpretable channels <-> 256-d "expression codes".

Real AV-Flow data carries Codec-Avatar VAE codes whose decoder (mesh + renderer) is not
public. The demo corpus replaces it by a fixed, exactly invertible linear map, so that

* training sees 256-d codes shaped like a learned latent (every dimension mixes all inputs,
  roughly unit variance, non-zero mean), and
* evaluation can decode generated codes back to channels and score lip closures and smiles
  the way the paper scores mesh vertex distances (F1_lips, F1_smiles).

Map: z = [(channels - CHANNEL_CENTER) * CHANNEL_GAIN (6) ; nuisance (250)],
codes = z @ matrix + offset, with matrix = scale * Q for a seeded random orthogonal Q.
`decode` applies the exact inverse and keeps the first six entries.
"""

import dataclasses
import math
import os

import numpy as np

CHANNELS = ("jaw_open", "lip_closure", "lip_round", "smile", "brow_raise", "blink")
NUM_CHANNELS = len(CHANNELS)
CODE_DIM = 256
NUISANCE_DIM = CODE_DIM - NUM_CHANNELS  # 250

# Channels live in [0, 1]; centring and a gain of 4 give them a spread comparable to the
# nuisance dimensions before mixing, so no channel hides below the others in code space.
CHANNEL_CENTER = 0.5
CHANNEL_GAIN = 4.0
# Default mixing scale: with demo-corpus channels (std ~0.25 -> ~1 after the gain) and
# nuisance std ~0.3, per-dimension code std comes out near 1, like a trained VAE latent.
DEFAULT_SCALE = 4.0
DEFAULT_OFFSET_STD = 0.5

# F1 thresholds (the paper's "distance of inner lip vertices almost zero" and "mouth-corner
# distance larger than a threshold" become thresholds on the rig channels): a frame is a lip
# closure when lip_closure >= 0.5 and a smile when smile >= 0.5. The demo generator drives
# closures to ~1 on p/b/m and rest, ~0 elsewhere, so 0.5 is the natural midpoint.
LIP_CLOSURE_THRESHOLD = 0.5
SMILE_THRESHOLD = 0.5

_FORMAT_VERSION = 1
# Largest rig file `load` reads, on disk and once its members are inflated: a saved rig is
# ~530 KB (a 256 x 256 float64 matrix and small fields), so 4 MiB leaves room without letting
# a forged or deflate-bombed npz take more memory than that.
MAX_RIG_BYTES = 4 * 2**20


def _channel(channels: np.ndarray, name: str) -> np.ndarray:
  channels = np.asarray(channels)
  if channels.shape[-1:] != (NUM_CHANNELS,):
    raise ValueError(f"channels must have shape (..., {NUM_CHANNELS}), got {channels.shape}")
  return channels[..., CHANNELS.index(name)]


def closure(channels: np.ndarray) -> np.ndarray:
  """Boolean (...) mask of lip-closure frames: lip_closure >= LIP_CLOSURE_THRESHOLD."""
  return _channel(channels, "lip_closure") >= LIP_CLOSURE_THRESHOLD


def smile(channels: np.ndarray) -> np.ndarray:
  """Boolean (...) mask of smiling frames: smile >= SMILE_THRESHOLD."""
  return _channel(channels, "smile") >= SMILE_THRESHOLD


@dataclasses.dataclass(frozen=True)
class FaceRig:
  """A fixed invertible linear map between rig channels (+ nuisance) and codes.

  Attributes:
    matrix: (256, 256) float64 mixing matrix (rows: [6 channels ; 250 nuisance]).
    offset: (256,) float64 code offset.
  """
  matrix: np.ndarray
  offset: np.ndarray

  def __post_init__(self):
    if self.matrix.shape != (CODE_DIM, CODE_DIM) or self.offset.shape != (CODE_DIM,):
      raise ValueError(f"FaceRig: matrix must be ({CODE_DIM}, {CODE_DIM}) and offset "
                       f"({CODE_DIM},), got {self.matrix.shape} and {self.offset.shape}")
    if not (np.all(np.isfinite(self.matrix)) and np.all(np.isfinite(self.offset))):
      raise ValueError("FaceRig: matrix/offset contain non-finite values")
    cond = np.linalg.cond(self.matrix)
    if cond > 1e6:
      raise ValueError(f"FaceRig: matrix is not safely invertible (condition number {cond:.3g})")
    # Only the channel columns of the inverse are needed to decode.
    inverse = np.linalg.inv(self.matrix)
    object.__setattr__(self, "_decode_matrix", np.ascontiguousarray(inverse[:, :NUM_CHANNELS]))

  @classmethod
  def create(cls, seed: int, scale: float = DEFAULT_SCALE,
             offset_std: float = DEFAULT_OFFSET_STD) -> "FaceRig":
    """A random rig: scale * (Haar-random orthogonal matrix) and a Gaussian offset."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((CODE_DIM, CODE_DIM)))
    q = q * np.sign(np.diag(r))[None, :]  # makes Q Haar-distributed (unique QR).
    offset = offset_std * rng.standard_normal(CODE_DIM)
    return cls(matrix=scale * q, offset=offset)

  @classmethod
  def load(cls, path: str | os.PathLike, *, max_bytes: int = MAX_RIG_BYTES) -> "FaceRig":
    """Reads a rig saved by `save` (plain npz, never pickle).

    Args:
      path: the npz.
      max_bytes: the largest file, and total of its inflated members, accepted.

    Raises:
      ValueError: one line naming the file: unreadable, over `max_bytes`, an object array
        (pickle), or not a valid rig.
    """
    # The bounds are checked here, not with core/safe_files.load_npz (the general npz reader):
    # the manifest reader imports this module, and importing safe_files here would make the
    # package's import chain one file deeper than tests/unit/test_layers.py allows.
    try:
      if os.path.getsize(path) > max_bytes:
        raise ValueError(f"{os.path.getsize(path)} bytes, over the limit of {max_bytes}")
      with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would take a bare .npy (or a pickle) too.
          raise ValueError("not an npz (zip) file")
      with np.load(path, allow_pickle=False) as f:
        # zipfile never inflates a member past its declared size, so bounding the declared
        # sizes bounds the bytes read ...
        inflated = sum(info.file_size for info in f.zip.infolist())
        if inflated > max_bytes:
          raise ValueError(f"members inflate to {inflated} bytes, over the limit of {max_bytes}")
        # ... and numpy allocates each array at its header's shape before reading it, so the
        # shape must fit in the member's declared bytes.
        for info in f.zip.infolist():
          with f.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)(member)
            if member.tell() + math.prod(shape) * dtype.itemsize > info.file_size:
              raise ValueError(f"member {info.filename} declares {shape} {dtype}, more than "
                               f"its {info.file_size} bytes")
        fields = {k: f[k] for k in f.files}
    except Exception as e:  # pylint: disable=broad-except  (zipfile, zlib and numpy raise many)
      msg = " ".join(str(e).split())
      raise ValueError(f"face rig {path}: cannot read npz ({type(e).__name__}: {msg})") from e
    for key in ("matrix", "offset", "channels", "version"):
      if key not in fields:
        raise ValueError(f"face rig {path}: missing field {key!r}")
    version = fields["version"]
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != _FORMAT_VERSION:
      raise ValueError(f"face rig {path}: field 'version' is {version!r:.80}, expected "
                       f"{_FORMAT_VERSION}")
    channels = fields["channels"]
    if channels.ndim != 1 or tuple(str(c) for c in channels) != CHANNELS:
      raise ValueError(f"face rig {path}: field 'channels' is {channels.tolist()!r:.200}, "
                       f"expected {list(CHANNELS)}")
    try:
      return cls(matrix=fields["matrix"].astype(np.float64),
                 offset=fields["offset"].astype(np.float64))
    except (TypeError, ValueError) as e:
      raise ValueError(f"face rig {path}: {e}") from e

  def save(self, path: str | os.PathLike) -> None:
    """Writes the rig as an npz (arrays only; loadable with allow_pickle=False)."""
    with open(path, "wb") as f:
      np.savez(f, matrix=self.matrix, offset=self.offset, channels=np.array(CHANNELS),
               channel_center=np.float64(CHANNEL_CENTER),
               channel_gain=np.float64(CHANNEL_GAIN), version=np.int64(_FORMAT_VERSION))

  def encode(self, channels: np.ndarray, nuisance: np.ndarray | None = None) -> np.ndarray:
    """Channels (..., 6) in [0, 1] and nuisance (..., 250) (zeros if None) -> codes (..., 256).

    Returns float32 codes.
    """
    channels = np.asarray(channels, np.float64)
    if channels.shape[-1:] != (NUM_CHANNELS,):
      raise ValueError(f"encode: channels must be (..., {NUM_CHANNELS}), got {channels.shape}")
    if nuisance is None:
      nuisance = np.zeros(channels.shape[:-1] + (NUISANCE_DIM,))
    nuisance = np.asarray(nuisance, np.float64)
    if nuisance.shape != channels.shape[:-1] + (NUISANCE_DIM,):
      raise ValueError(f"encode: nuisance must be {channels.shape[:-1] + (NUISANCE_DIM,)}, "
                       f"got {nuisance.shape}")
    z = np.concatenate([(channels - CHANNEL_CENTER) * CHANNEL_GAIN, nuisance], axis=-1)
    return (z @ self.matrix + self.offset).astype(np.float32)

  def decode(self, codes: np.ndarray, clip: bool = False) -> np.ndarray:
    """Codes (..., 256) -> channels (..., 6) float32 (exact inverse of `encode`).

    Args:
      codes: expression codes.
      clip: clamp to [0, 1] (generated codes may decode slightly outside).
    """
    codes = np.asarray(codes, np.float64)
    if codes.shape[-1:] != (CODE_DIM,):
      raise ValueError(f"decode: codes must be (..., {CODE_DIM}), got {codes.shape}")
    z = (codes - self.offset) @ self._decode_matrix
    channels = z / CHANNEL_GAIN + CHANNEL_CENTER
    if clip:
      channels = np.clip(channels, 0.0, 1.0)
    return channels.astype(np.float32)
