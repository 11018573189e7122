"""Serialisation of clips as ArrayRecord records (msgpack of numpy arrays, never pickle).

A record holds a whole clip (manifest format 1) or one page of a clip (format 2).
"""

from typing import Any, Mapping, Sequence

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


# Paged shards (manifest format 2, docs/data_format.md): a clip is stored as consecutive
# records of `page_frames` frames each, so a training crop reads only the pages it overlaps
# instead of the whole clip. These fields are cut into pages; every other field (name, text,
# utterances, ...) is kept whole in page 0.
FRAME_FIELDS = ("mel", "tokens", "face", "face_mask", "head", "participant")
SAMPLE_FIELDS = ("audio",)  # Per audio sample: `hop` samples per frame.
PAGE_KEYS = ("page", "pages", "frames")  # Bookkeeping fields of a page record.


def num_pages(frames: int, page_frames: int) -> int:
  """Pages of a clip of `frames` frames (at least one)."""
  return max(-(-int(frames) // int(page_frames)), 1)


def split_pages(clip: Mapping[str, Any], page_frames: int, hop: int) -> list[dict[str, Any]]:
  """Cuts a decoded clip into page records (each a dict for `encode_record`).

  Args:
    clip: a decoded clip record; its frame count is `mel`'s length.
    page_frames: frames per page (> 0).
    hop: audio samples per frame.

  Returns:
    `num_pages` dicts: page p holds frames [p * page_frames, (p + 1) * page_frames) of every
    per-frame field, the matching audio samples, `page`, `pages` and `frames`; page 0 also
    holds the clip-level fields.
  """
  if page_frames <= 0:
    raise ValueError(f"page_frames={page_frames}: must be positive")
  frames = int(np.shape(clip["mel"])[0])
  n = num_pages(frames, page_frames)
  pages = []
  for p in range(n):
    a, b = p * page_frames, (p + 1) * page_frames
    page: dict[str, Any] = {"page": p, "pages": n, "frames": frames}
    for key, value in clip.items():
      if key in FRAME_FIELDS:
        page[key] = np.asarray(value)[a:b]
      elif key in SAMPLE_FIELDS:
        page[key] = np.asarray(value)[a * hop:b * hop]
      elif p == 0:
        page[key] = value
    if p and "name" in clip:
      page["name"] = clip["name"]  # Every page names its clip: errors can say which.
    pages.append(page)
  return pages


def join_pages(pages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Inverse of `split_pages`: the whole clip from all its pages, in order.

  Raises:
    ValueError: naming the clip when the pages are not its pages 0..n-1.
  """
  if not pages:
    raise ValueError("no pages")
  name = pages[0].get("name", "?")
  n = pages[0].get("pages")
  if [pg.get("page") for pg in pages] != list(range(len(pages))) or n != len(pages):
    raise ValueError(f"clip {name!r}: pages {[pg.get('page') for pg in pages]} are not its "
                     f"{n} pages in order")
  clip = {k: v for k, v in pages[0].items() if k not in PAGE_KEYS}
  for key in FRAME_FIELDS + SAMPLE_FIELDS:
    if key in clip:
      clip[key] = np.concatenate([np.asarray(pg[key]) for pg in pages])
  return clip


def slice_pages(pages: Sequence[Mapping[str, Any]], first_page: int, start: int, stop: int,
                page_frames: int, fields: Sequence[str]) -> dict[str, np.ndarray]:
  """Frames [start, stop) of `fields` from consecutive pages beginning at `first_page`.

  Fields the pages do not hold are left out.
  """
  offset = start - first_page * page_frames
  out = {}
  for key in fields:
    if key not in pages[0]:
      continue
    parts = [np.asarray(pg[key]) for pg in pages]
    x = parts[0] if len(parts) == 1 else np.concatenate(parts)
    out[key] = x[offset:offset + stop - start]
  return out
