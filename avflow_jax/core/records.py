"""Serialisation of one clip per ArrayRecord record (msgpack of numpy arrays, never pickle)."""

from typing import Any, Mapping

from flax import serialization
import numpy as np

RECORD_VERSION = 1


def encode_record(clip: Mapping[str, Any]) -> bytes:
  """Serialises a clip dict (str -> np.ndarray | str | int | float) to bytes."""
  out = {}
  for key, value in clip.items():
    if isinstance(value, np.ndarray):
      out[key] = np.ascontiguousarray(value)
    elif isinstance(value, (str, int, float)):
      out[key] = value
    else:
      raise TypeError(f"record field {key!r}: unsupported type {type(value).__name__}")
  out["_version"] = RECORD_VERSION
  return serialization.msgpack_serialize(out)


def decode_record(data: bytes) -> dict[str, Any]:
  """Inverse of `encode_record`; raises ValueError naming the problem on bad bytes."""
  try:
    clip = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several unrelated types.
    raise ValueError(f"record does not decode: {e}") from e
  if not isinstance(clip, dict) or clip.get("_version") != RECORD_VERSION:
    raise ValueError("record is not an avflow_jax clip of format version "
                     f"{RECORD_VERSION}")
  clip.pop("_version")
  return dict(clip)
