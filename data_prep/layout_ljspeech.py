"""The ljspeech layout: metadata.csv (id|text|normalized text) + wavs/<id>.wav (mono).

docs/data_prep.md describes it. Audio and text only: tokens always come from the wav2vec2
port; splits.json or --val-fraction.
"""

import csv
import os

from avflow_jax.core import audio as audio_lib
from avflow_jax.core.errors import FatalError
from data_prep import splits
from data_prep.source_types import ClipSpec
from data_prep.source_types import DatasetPlan
from data_prep.source_types import RawClip


def plan_ljspeech(root: str, args) -> DatasetPlan:
  """Lists the clips of metadata.csv with their text; raises FatalError on a bad row."""
  meta = os.path.join(root, "metadata.csv")
  if not os.path.exists(meta):
    raise FatalError(f"{meta}: missing (ljspeech layout: metadata.csv + wavs/<id>.wav)")
  rows = {}
  with open(meta, encoding="utf-8", newline="") as f:
    for line_no, row in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), 1):
      if not row:
        continue
      if len(row) < 2 or not row[0]:
        raise FatalError(f"{meta}:{line_no}: expected 'id|text|normalized text'")
      text = row[2] if len(row) > 2 and row[2].strip() else row[1]
      rows[row[0]] = " ".join(text.split())
  clip_splits, excluded = splits.split_names(root, list(rows), args)
  clips = [ClipSpec(i, clip_splits[i], {"audio": os.path.join(root, "wavs", i + ".wav")},
                    {"text": rows[i]}) for i in sorted(rows) if i in clip_splits]
  notes = [f"{len(excluded)} clip(s) not listed in splits.json: {excluded[:5]}"] if excluded else []
  return DatasetPlan("ljspeech", clips, [], face=False, head_dim=0, head_kind=None,
                     participant=False, options={}, notes=notes)


def load_ljspeech(spec: ClipSpec, options: dict) -> RawClip:
  """Reads one mono wav; the transcript is the whole clip's one utterance."""
  del options
  audio, sr = audio_lib.read_wav(spec.files["audio"], channels=(1,))
  text = spec.extra["text"]
  return RawClip(spec.name, audio[:, 0], sr, text=text,
                 utterances=[(text, 0.0, audio.shape[0] / sr)])
