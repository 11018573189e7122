"""Grain pipeline of text-to-tokens training batches: one example per utterance.

Records (docs/data_format.md) carry `utterances` (JSON list of {"text", "start", "end"} on the
mel frame grid) or, for LJSpeech-style data, a `text` spanning the whole clip. The pipeline
builds a global index of (record, start, end, symbol ids) once (phonemising every utterance;
optionally cached on disk), drops utterances that do not fit the fixed shapes, then shuffles,
repeats, takes this process's slice and reads/crops/pads records lazily:

  {"ids": (B, max_symbols) int32, "ids_len": (B,) int32,
   "tokens": (B, max_frames, 29) float32 raw logits, "tokens_len": (B,) int32}.

Every process builds the same global index, so the per-process slices are disjoint and equally
long, and the order is a pure function of the seed.
"""

import collections
import hashlib
import json
import os
import re
import time
from typing import Any, Optional, Sequence
import unicodedata

from absl import logging
import grain
import jax
import numpy as np

from avflow_jax.core import constants
from avflow_jax.core import files
from avflow_jax.data import clips
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.data import rows as rows_lib
from avflow_jax.text import frontend
from avflow_jax.text import symbols

# Bump when the text front end changes the ids it produces (invalidates cached indices).
INDEX_VERSION = 3


def clip_utterances(clip: dict[str, Any], where: str) -> list[tuple[str, int, int]]:
  """(text, start, end) frame spans of a decoded record's utterances.

  Args:
    clip: decoded record.
    where: record description for error messages.

  Returns:
    The utterances (an empty list when the record has neither `utterances` nor `text`).
  """
  n_frames = int(np.asarray(clip["tokens"]).shape[0]) if "tokens" in clip else None
  if n_frames is None:
    raise ValueError(f"{where}: record has no 'tokens' field")
  if "utterances" in clip:
    try:
      utts = json.loads(clip["utterances"])
    except (TypeError, json.JSONDecodeError) as e:
      raise ValueError(f"{where}: field 'utterances' is not a JSON string ({e})") from e
    if not isinstance(utts, list):
      raise ValueError(f"{where}: field 'utterances' must be a JSON list, got "
                       f"{type(utts).__name__}")
    out = []
    for k, u in enumerate(utts):
      if not isinstance(u, dict) or not {"text", "start", "end"} <= set(u):
        raise ValueError(f"{where}: utterances[{k}] must have text, start and end, got {u!r}")
      start, end = int(u["start"]), int(u["end"])
      if not 0 <= start < end <= n_frames:
        raise ValueError(f"{where}: utterances[{k}] frames [{start}, {end}) are outside the "
                         f"clip's {n_frames} frames")
      out.append((str(u["text"]), start, end))
    return out
  if "text" in clip:
    return [(str(clip["text"]), 0, n_frames)]
  return []


def _index_cache_path(cache_dir: str, manifest: dict, split: str, add_blank: bool) -> str:
  key = json.dumps({"split": manifest["splits"][split], "add_blank": add_blank,
                    "symbols": "".join(symbols.SYMBOLS), "version": INDEX_VERSION},
                   sort_keys=True)
  digest = hashlib.sha1(key.encode()).hexdigest()[:16]
  return os.path.join(os.path.expanduser(cache_dir), f"t2t_index_{split}_{digest}.json")


def build_utterance_index(data_dir: str, split: str, *, add_blank: bool = True,
                          cache_dir: Optional[str] = None) -> list[dict[str, Any]]:
  """Reads every record of `split` once and phonemises its utterances.

  Args:
    data_dir: shard directory with manifest.json.
    split: manifest split.
    add_blank: intersperse blanks in the ids.
    cache_dir: if set, the index is saved there and reused while the split is unchanged.

  Returns:
    [{"record": global record index, "start", "end": frames, "text": str, "ids": list of int}]
    in record order (utterances that phonemise to nothing are left out).
  """
  data_dir = os.path.expanduser(data_dir)
  manifest = manifest_lib.load_manifest(data_dir)
  paths = manifest_lib.shard_paths(data_dir, manifest, split)
  cache = _index_cache_path(cache_dir, manifest, split, add_blank) if cache_dir else None
  if cache and os.path.exists(cache):
    with open(cache) as f:
      index = json.load(f)
    logging.info("t2t data: %d %s utterances from cache %s", len(index), split, cache)
    return index
  # A missing or truncated shard: ShardError naming it.
  source = clips.DecodedClips(paths, clips.layout(manifest, split))
  n = len(source)
  index, empty = [], 0
  t0 = time.time()
  for i in range(n):
    clip = source.decode(i)
    where = f"{data_dir} split {split!r} record {i} ({clip.get('name', '?')})"
    for text, start, end in clip_utterances(clip, where):
      ids = frontend.text_to_ids(text, add_blank=add_blank)
      if ids.size <= int(add_blank):  # nothing but blanks: no speech to align.
        empty += 1
        continue
      index.append({"record": i, "start": start, "end": end, "text": text,
                    "ids": ids.tolist()})
    if (i + 1) % 500 == 0 or i + 1 == n:
      rate = (i + 1) / max(time.time() - t0, 1e-9)
      logging.info("t2t data: indexed %d/%d %s records (%.0f/s, ETA %.0f s), %d utterances",
                   i + 1, n, split, rate, (n - i - 1) / rate, len(index))
  if empty:
    logging.warning("t2t data: %d %s utterances have no phonemes and are skipped", empty, split)
  if cache:
    files.write_atomic(cache, json.dumps(index))  # Concurrent readers never see a partial file.
  return index


def text_key(text: str) -> str:
  """Identity of a sentence for held-out sets: NFKC, case, punctuation and spacing ignored."""
  text = unicodedata.normalize("NFKC", text).lower()
  return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def drop_texts(index: list[dict[str, Any]], texts: set[str]) -> list[dict[str, Any]]:
  """Leaves out utterances whose `text_key` is in `texts` (logged)."""
  kept = [u for u in index if text_key(u["text"]) not in texts]
  logging.info("t2t data: held out %d of %d utterances (%d held-out sentences)",
               len(index) - len(kept), len(index), len(texts))
  return kept


def filter_index(index: list[dict[str, Any]], max_symbols: int,
                 max_frames: int) -> list[dict[str, Any]]:
  """Drops utterances that do not fit the padded shapes or cannot be aligned (logged)."""
  kept, dropped = [], collections.Counter()
  for u in index:
    n_sym, n_frames = len(u["ids"]), u["end"] - u["start"]
    if n_sym > max_symbols:
      dropped["more symbols than max_symbols"] += 1
    elif n_frames > max_frames:
      dropped["more frames than max_frames"] += 1
    elif n_sym > n_frames:  # alignment search needs at least one frame per symbol.
      dropped["fewer frames than symbols"] += 1
    else:
      kept.append(u)
  for reason, count in dropped.items():
    logging.warning("t2t data: dropped %d of %d utterances: %s", count, len(index), reason)
  return kept


class LoadUtterance(grain.transforms.Map):
  """Index entry -> padded example, reading the clip's tokens lazily.

  An utterance needs only its tokens: paged shards read just the pages it overlaps; whole-clip
  records (format 1) are decoded whole, so their tokens are cached per record (`cache_mb` per
  process; 0 = re-read each time).
  """

  def __init__(self, paths: list[str], clip_layout: clips.ClipLayout, max_symbols: int,
               max_frames: int, cache_mb: float = 0):
    self.paths = paths
    self.layout = clip_layout
    self.max_symbols = max_symbols
    self.max_frames = max_frames
    self.cache_mb = cache_mb
    self._source = None

  def __getstate__(self):  # Workers reopen the shards themselves.
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    if self._source is None:
      self._source = clips.DecodedClips(self.paths, self.layout, self.cache_mb,
                                        keep=("name", "tokens"))
    record, start, end = element["record"], element["start"], element["end"]
    tokens = self._source.frames(record, start, end, ("tokens",)).get("tokens")
    shape = None if tokens is None else tokens.shape
    if tokens is None or tokens.ndim != 2 or tokens.shape[1] != constants.TOKEN_DIM:
      raise ValueError(f"record {record} ({self.layout.names[record]}): field 'tokens' "
                       f"has shape {shape}, expected (T, {constants.TOKEN_DIM})")
    tokens = np.asarray(tokens, np.float32)
    ids = np.asarray(element["ids"], np.int32)
    out_ids = np.zeros((self.max_symbols,), np.int32)
    out_ids[:ids.size] = ids
    out_tokens = np.zeros((self.max_frames, constants.TOKEN_DIM), np.float32)
    out_tokens[:tokens.shape[0]] = tokens
    return {"ids": out_ids, "ids_len": np.int32(ids.size), "tokens": out_tokens,
            "tokens_len": np.int32(tokens.shape[0])}


def make_t2t_dataset(data_dir: str, split: str, batch_size: int, seed: int, max_symbols: int,
                     max_frames: int, *, num_epochs: Optional[int] = None,
                     shuffle: bool = True, add_blank: bool = True,
                     rows: Optional[Sequence[int]] = None,
                     process_index: Optional[int] = None, process_count: Optional[int] = None,
                     num_workers: int = 0, cache_dir: Optional[str] = None,
                     index: Optional[list[dict[str, Any]]] = None,
                     holdout_split: str = "", cache_mb: float = 0) -> grain.IterDataset:
  """Per-process batches of padded (ids, tokens) utterances.

  Args:
    data_dir: shard directory with manifest.json.
    split: manifest split ("train", "val").
    batch_size: global batch; each process yields batch_size // process_count examples.
    seed: seeds the shuffle (a different order every epoch).
    max_symbols: padded symbol length; longer utterances are dropped.
    max_frames: padded frame length; longer utterances are dropped.
    num_epochs: None repeats forever (training); an integer gives that many passes.
    shuffle: shuffle the utterances.
    add_blank: intersperse blanks in the ids (as the model was trained).
    rows: the rows of each global batch this process reads (`rows.process_rows`); default:
      the contiguous slice `process_index` of `process_count` (default: JAX's).
    num_workers: Grain worker processes (0 = read in this process).
    cache_dir: where to cache the phonemised utterance index (None = rebuild every time).
    index: a prebuilt `build_utterance_index` result (skips the reading pass).
    holdout_split: if set (and not `split`), utterances whose sentence also occurs in that
      split are left out, so its sentences stay unseen text.
    cache_mb: per-process cache of decoded record tokens (0 = decode a record per utterance).

  Returns:
    A grain IterDataset of numpy batch dicts (drop_remainder batching).
  """
  data_dir = os.path.expanduser(data_dir)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  rows = rows_lib.resolve_rows(batch_size, rows, process_index, process_count)
  if index is None:
    index = build_utterance_index(data_dir, split, add_blank=add_blank, cache_dir=cache_dir)
  if holdout_split and holdout_split != split:
    held = build_utterance_index(data_dir, holdout_split, add_blank=add_blank,
                                 cache_dir=cache_dir)
    index = drop_texts(index, {text_key(u["text"]) for u in held})
  index = filter_index(index, max_symbols, max_frames)
  if len(index) < batch_size:
    raise ValueError(f"{data_dir} split {split!r}: {len(index)} usable utterances, fewer than "
                     f"one batch of {batch_size} (max_symbols={max_symbols}, "
                     f"max_frames={max_frames})")
  manifest = manifest_lib.load_manifest(data_dir)
  paths = manifest_lib.shard_paths(data_dir, manifest, split)
  ds = grain.MapDataset.source(index).seed(seed)
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs)
  if num_epochs is not None:
    # Equal work on every process: cut to whole global batches before slicing.
    ds = ds[:len(ds) // batch_size * batch_size]
  ds = rows_lib.HostRows(ds, rows, batch_size)
  ds = ds.map(LoadUtterance(paths, clips.layout(manifest, split), max_symbols, max_frames,
                            cache_mb))
  ds = ds.batch(len(rows), drop_remainder=True)
  it = ds.to_iter_dataset()
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it
