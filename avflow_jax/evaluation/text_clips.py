"""The clips `evaluate_text` reads, with their sentences; what it learns from the training split.

`split_utterances` yields a split's clips with their sentences (the records' `utterances`: text
and frame span); `speakable` sets aside those that phonemise to nothing (they count as pauses);
`evaluated_clips` gives the clips to score; `training_split_summary` reads the training split
once for the pause token frame and the sentences the text model saw.
"""

import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core.errors import InputError
from avflow_jax.data import clips


def split_utterances(loaded, split: str, strict: bool = True):
  """Yields (clip name, record, [(text, start, end)] sorted by start) for the split's clips.

  Args:
    loaded: the avatar's `inference.loading.LoadedAvatar` (its data dir and manifest).
    split: manifest split name.
    strict: overlapping utterances are an InputError naming the clip; without it (reading the
      training split only for its statistics) such a clip is still yielded, and a clip whose
      utterances cannot be read is skipped.
  """
  from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
  shards, entries = clips.split_entries(loaded.data_dir, loaded.manifest, split)
  page_size = clips.page_frames(loaded.manifest)
  for e, record in clips.iter_split_records(shards, entries, page_size):
    where = f"{loaded.data_dir} split {split!r} clip {e['name']!r}"
    try:
      utts = sorted(utterances.clip_utterances(record, where), key=lambda u: u[1])
    except ValueError as err:
      if not strict:
        continue
      raise InputError(str(err)) from err
    if strict:
      for (_, _, prev_end), (text, start, _) in zip(utts, utts[1:]):
        if start < prev_end:
          raise InputError(f"{where}: utterance {text!r} starts at frame {start}, before the "
                           f"previous one ends ({prev_end})")
    yield e["name"], record, utts


def speakable(utts: list, add_blank: bool = True) -> tuple[list, list]:
  """Splits utterances into (speakable, unspeakable): the latter phonemise to nothing.

  Training skips such utterances (utterances.build_utterance_index); here they count as pauses.
  """
  from avflow_jax.text import frontend  # pylint: disable=g-import-not-at-top
  keep, drop = [], []
  for u in utts:
    (keep if frontend.text_to_ids(u[0], add_blank=add_blank).size > int(add_blank)
     else drop).append(u)
  return keep, drop


def evaluated_clips(loaded, split: str, add_blank: bool, log):
  """Yields (name, record, speakable utterances) of the split's clips that have any, one at a time.

  Args:
    loaded: the avatar's `inference.loading.LoadedAvatar`.
    split: manifest split name.
    add_blank: the text model's `data.add_blank` (for `speakable`).
    log: a line per clip with unspeakable utterances.

  Raises:
    InputError: overlapping utterances, or a record without the fields the scoring reads.
  """
  for name, record, utts in split_utterances(loaded, split):
    utts, dropped = speakable(utts, add_blank)
    if dropped:
      log(f"clip {name}: {len(dropped)} utterance(s) with no speakable symbols count as "
          f"pauses ({dropped[0][0]!r}, ...)")
    if utts:
      needed = ("tokens", "face") + (("participant",) if loaded.uses_participant else ())
      missing = [k for k in needed if k not in record]
      if missing:
        raise InputError(f"{loaded.data_dir} split {split!r} clip {name!r}: record has "
                         f"no {', '.join(missing)} field")
      yield name, record, utts


def training_split_summary(loaded, t2t_config, train_split: str):
  """One pass over the training split: (pause token frame or None, sentences the text model saw).

  The pause frame is the mean token frame outside utterances (what the ASR sees in a pause; from
  the training data, never the evaluated clip), None when the split has no pause at all. The
  seen sentences are the `text_key`s of the training split's utterances, minus those of the
  text model's `data.holdout_split` (as its training left them out).
  """
  from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
  total, count, seen = np.zeros((C.TOKEN_DIM,), np.float64), 0, set()
  for _, record, utts in split_utterances(loaded, train_split, strict=False):
    tokens = np.asarray(record["tokens"], np.float64)
    pause = np.ones((tokens.shape[0],), bool)
    for text, s, e in utts:
      pause[s:e] = False
      seen.add(utterances.text_key(text))
    total += tokens[pause].sum(0)
    count += int(pause.sum())
  held = t2t_config.data.get("holdout_split", "")
  if held and held != train_split:
    seen -= {utterances.text_key(text)
             for _, _, utts in split_utterances(loaded, held, strict=False)
             for text, _, _ in utts}
  return ((total / count).astype(np.float32) if count else None), seen
