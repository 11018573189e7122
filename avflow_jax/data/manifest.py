"""A shard directory's manifest.json: dims, splits, per-stream statistics, the face rig.

Written by `python -m data_prep` (docs/data_format.md); read by training, sampling and
evaluation. Statistics are applied here and nowhere else (`normalise`, `denormalise`).
"""

import os

import numpy as np

from avflow_jax.core import face_rig
from avflow_jax.core import safe_files
from avflow_jax.core.errors import AvatarError

MANIFEST = "manifest.json"

# Streams normalised with the manifest statistics before they reach the model.
NORMALISED = ("mel", "tokens", "face", "head", "participant")


def load_manifest(data_dir: str, *, max_bytes: int = safe_files.MAX_JSON_BYTES) -> dict:
  """Reads DATA_DIR/manifest.json with a clear error when it is missing or malformed.

  Args:
    data_dir: the shard directory.
    max_bytes: the largest manifest read (checked before parsing; see core/safe_files).

  Returns:
    The manifest.

  Raises:
    FileNotFoundError: no manifest.
    ValueError: one line naming the file: over `max_bytes`, not JSON, or missing a field.
  """
  path = os.path.join(os.path.expanduser(data_dir), "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no manifest; prepare shards with `python -m data_prep`")
  manifest = safe_files.read_json(path, max_bytes=max_bytes, what="manifest")
  if not isinstance(manifest, dict):
    raise ValueError(f"{path}: the manifest is not a JSON object")
  for key in ("dims", "splits", "stats"):
    if key not in manifest:
      raise ValueError(f"{path}: missing field {key!r}")
  return manifest


def with_stats_from(manifest: dict, data_dir: str, stats_dir) -> dict:
  """`manifest` with the normalisation statistics of STATS_DIR/manifest.json, if given.

  A fine-tuned model keeps the statistics its initial weights were trained with (an imported
  official model's, say), while `data_dir` supplies the clips. The streams both manifests have
  must have the same widths.

  Raises:
    FileNotFoundError / ValueError: naming STATS_DIR's manifest and the stream that differs.
  """
  if not stats_dir:
    return manifest
  other = load_manifest(stats_dir)
  path = os.path.join(os.path.expanduser(stats_dir), MANIFEST)
  for name, width in manifest["dims"].items():
    theirs = other["dims"].get(name)
    if width and theirs is not None and int(theirs) != int(width):
      raise ValueError(f"{path}: stream {name!r} is {theirs}-d there, {width}-d in "
                       f"{data_dir}/{MANIFEST} (data.stats_from must describe the same streams)")
  missing = [n for n, w in manifest["dims"].items() if w and n in NORMALISED
             and n not in other["stats"]]
  if missing:
    raise ValueError(f"{path}: no statistics for {missing} (data.stats_from)")
  return dict(manifest, stats=other["stats"], stats_from=os.path.abspath(
      os.path.expanduser(stats_dir)))


def shard_paths(data_dir: str, manifest: dict, split: str) -> list[str]:
  if split not in manifest["splits"]:
    raise ValueError(f"split {split!r} is not in the manifest of {data_dir} (has "
                     f"{sorted(manifest['splits'])})")
  shards = manifest["splits"][split]["shards"]
  if not shards:
    raise ValueError(f"split {split!r} of {data_dir} has no shards")
  return [os.path.join(os.path.expanduser(data_dir), s) for s in shards]


def stats_arrays(manifest: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{stream: (mean, std)} as float32 arrays."""
  out = {}
  for name, s in manifest["stats"].items():
    out[name] = (np.asarray(s["mean"], np.float32),
                 np.maximum(np.asarray(s["std"], np.float32), 1e-5))
  return out


def normalise(x: np.ndarray, stats, name: str) -> np.ndarray:
  """(x - mean) / std in float32, as a new array."""
  mean, std = stats[name]
  out = np.subtract(x, mean, dtype=np.float32)
  out /= std  # In place: the crop path normalises about 1 MB per crop.
  return out


def denormalise(x, stats, name: str):
  mean, std = stats[name]
  return x * std + mean


def load_face_rig(data_dir: str, manifest: dict):
  """The demo face rig named by `manifest["face_decoder"]` (relative to data_dir), or None."""
  rel = manifest.get("face_decoder")
  if not rel:
    return None
  path = rel if os.path.isabs(rel) else os.path.join(data_dir, rel)
  if not os.path.exists(path):
    raise AvatarError(f"{path}: missing (manifest.json face_decoder of {data_dir})")
  try:
    return face_rig.FaceRig.load(path)
  except ValueError as e:
    raise AvatarError(str(e)) from e


# Record fields whose last dim is a manifest `dims` entry (docs/data_format.md).
DIM_FIELDS = ("mel", "tokens", "face", "head", "participant")


def check_record_dims(record: dict, manifest: dict, where: str) -> None:
  """Raises ValueError when a record's stream widths disagree with `manifest["dims"]`.

  Only the dims the manifest states are checked; a dim of 0 means the field is absent.

  Args:
    record: a decoded record.
    manifest: the parsed manifest.
    where: names the record in the message (shard file, record index, clip).
  """
  dims = manifest.get("dims", {})
  for field in DIM_FIELDS:
    if field not in dims:
      continue
    want = int(dims[field])
    value = record.get(field)
    if value is None:
      if want:
        raise ValueError(f"{where}: field {field!r} is missing, manifest.json dims say "
                         f"{want}; the shards and manifest.json do not belong together "
                         "(rerun `python -m data_prep`)")
      continue
    shape = tuple(np.shape(value))
    if len(shape) != 2 or shape[1] != want:
      raise ValueError(f"{where}: field {field!r} has shape {shape}, manifest.json dims say "
                       f"(T, {want}); the shards and manifest.json do not belong together "
                       "(rerun `python -m data_prep`)")
