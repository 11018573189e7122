"""Per-clip cache under `<output>/.cache/`: the resumable part of a run.

Each processed clip leaves `<key>.rec` (the encoded record) and then `<key>.meta` (frames,
stats sums): both are written to a temporary name and renamed, and the meta file is the
commit marker, so an interrupted run never leaves a half entry that looks complete. The
key holds a fingerprint of the clip's inputs and options, so changed input is redone.
"""

import hashlib
import json
import os
import re
from typing import Any

from flax import serialization

from avflow_jax.core import files
import data_prep


def _file_stamp(path: str) -> list:
  try:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]
  except OSError:
    return [path, None, None]


def fingerprint(source_format: str, name: str, files: dict, extra: dict, options: Any,
                asr_weights: str = "") -> str:
  """Hash of everything that determines a clip's record."""
  payload = {"version": data_prep.PREP_VERSION, "format": source_format, "name": name,
             "files": {role: _file_stamp(p) for role, p in sorted(files.items())},
             "extra": extra, "options": options,
             "asr": _file_stamp(asr_weights) if asr_weights else None}
  blob = json.dumps(payload, sort_keys=True, default=str).encode()
  return hashlib.sha1(blob).hexdigest()[:16]


def clip_key(name: str, fp: str) -> str:
  """File-system-safe cache key of a clip."""
  return f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.{fp}"


class ClipCache:
  """Directory of processed clips."""

  def __init__(self, directory: str):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)

  def _path(self, key: str, ext: str) -> str:
    return os.path.join(self.directory, f"{key}.{ext}")

  def has(self, key: str) -> bool:
    return os.path.exists(self._path(key, "meta")) and os.path.exists(self._path(key, "rec"))

  def put(self, key: str, record: bytes, meta: dict) -> None:
    files.write_atomic(self._path(key, "rec"), record, fsync=True)
    files.write_atomic(self._path(key, "meta"), serialization.msgpack_serialize(meta),
                       fsync=True)

  def meta(self, key: str) -> dict:
    with open(self._path(key, "meta"), "rb") as f:
      return serialization.msgpack_restore(f.read())

  def record(self, key: str) -> bytes:
    with open(self._path(key, "rec"), "rb") as f:
      return f.read()
