r"""Generates the demo dyadic avatar corpus in AV-Flow's 50-hour layout.

  python -m data_prep.demo --output DIR [--minutes 30] [--seed 0] [--workers N]

An "actor" (one fixed eSpeak NG voice, as the 50-hour set has one main actor) talks with
"participants" (one per recording date, different voices). Speech comes from eSpeak NG;
the actor's face (six rig channels -> 256-d codes through the demo face rig), head pose,
ASR-style tokens and the participant's SMIRK features are all derived from eSpeak's word
and phoneme timings, so the audio-visual mapping is learnable:

* lips close on p/b/m (and at rest in silences), the jaw opens with vowel openness, the
  lips round on o/u/w; brows rise on some stressed syllables and at questions; random
  blinks; the actor smiles 0.4-0.9 s after the participant smiles; head nods on stressed
  syllables and while listening, over a slow drift.

Layout written under DIR (read by data_prep's avflow50h reader):

  audio/<seg>.wav                         48 kHz, 2 ch int16 (0 actor, 1 participant),
                                          exactly 1600 samples per 30 fps frame
  expression_codes/<seg>.npy              (N, 256) float32, 30 fps
  headpose/<seg>--headpose.npy            (N, 4, 4) float32 rigid transforms, 30 fps
                                          (rotation; translation in millimetres)
  wav2vec2_fairseq_base_ls960_asr_ls960_vad100/<seg>.npy
                                          (2, N_tok, 29) float32 CTC-style logits at
                                          16 kHz / hop 320 (~49.95 Hz), channel 0 actor
  participant/camera01/smirk_outputs/<seg>--expression.npy  (N, 55) float32:
                                          FLAME expression 50 ; jaw pose 3 ; eyelids 2
  participant/camera01/smirk_outputs/<seg>--headpose.npy    (N, 3) float32: head
                                          rotation (axis-angle, radians); 55 + 3 = 58
  participant/camera01/smirk_outputs/stats/{expression,headpose}_{min,max}.npy and the
  same four files in stats/ (min / max over all segments, for the [-1, 1] scaling)
  transcripts/<seg>.json                  [{speaker, start, end, text}] (seconds)
  demo_rig/face_rig.npz                   the rig (avflow_jax.face_rig.FaceRig)
  demo_rig/<seg>.npy                      (N, 6) float32 ground-truth rig channels, 30 fps
  demo_rig/corpus.json                    generation settings and per-segment summary

Segments are named YYYYMMDD_sNNNN; the last two recording dates hold ~12.5 % of the
segments (the reader's default validation split). Output is byte-identical for a given
(--minutes, --seed) whatever --workers is: every segment draws from its own seeded RNG and
is synthesised in a fresh process (eSpeak keeps pitch-flutter state across calls).
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np

from avflow_jax.core import face_rig
from data_prep import demo_motion as motion
from data_prep import demo_speech as speech
from data_prep import demo_tokens as tokens_lib
from data_prep import layout_avflow50h
from data_prep import source_files

TOKEN_DIR = source_files.TOKEN_DIR
SMIRK_DIR = layout_avflow50h.SMIRK_DIR
RIG_DIR = "demo_rig"
LAYOUT_DIRS = ("audio", "expression_codes", "headpose", TOKEN_DIR, "participant", "stats",
               "transcripts", RIG_DIR)
SEGMENT_SECONDS = (20.0, 40.0)
MIN_SEGMENT_SECONDS = 8.0
VAL_FRACTION = 0.125
SEGMENTS_PER_TRAIN_DATE = 8
SEGMENTS_PER_TASK = 4  # segments synthesised in order by one fresh worker process.
FIRST_DATE = datetime.date(2024, 1, 8)
NUM_PARTICIPANTS = 20


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
  name: str
  index: int
  date_index: int
  participant: int
  num_frames: int


def plan_corpus(minutes: float, seed: int) -> list[SegmentPlan]:
  """Segment names, dates, participants and lengths (deterministic in minutes and seed)."""
  if not minutes > 0:
    raise ValueError(f"--minutes must be > 0, got {minutes}")
  rng = np.random.default_rng([seed, 1])
  total = minutes * 60.0
  n = max(3, int(round(total / np.mean(SEGMENT_SECONDS))))
  durations = rng.uniform(*SEGMENT_SECONDS, size=n)
  durations = np.maximum(durations * total / durations.sum(), MIN_SEGMENT_SECONDS)
  n_val = max(2, int(round(VAL_FRACTION * n)))
  n_train = n - n_val
  n_train_dates = max(1, math.ceil(n_train / SEGMENTS_PER_TRAIN_DATE))
  date_of = [i * n_train_dates // n_train for i in range(n_train)]
  date_of += [n_train_dates + (0 if k < (n_val + 1) // 2 else 1) for k in range(n_val)]
  plans = []
  for i, (d, date_idx) in enumerate(zip(durations, date_of)):
    date = FIRST_DATE + datetime.timedelta(days=3 * date_idx)
    plans.append(SegmentPlan(name=f"{date:%Y%m%d}_s{i:04d}", index=i, date_index=date_idx,
                             participant=date_idx % NUM_PARTICIPANTS,
                             num_frames=int(round(d * motion.VIDEO_FPS))))
  return plans


class _Corpus:
  """Per-corpus fixed pieces, rebuilt identically in every worker from the seed."""

  def __init__(self, seed: int, rig_path: str):
    self.seed = seed
    self.rig = face_rig.FaceRig.load(rig_path)
    self.mix = motion.nuisance_mix(np.random.default_rng([seed, 3]))
    self.basis = motion.SmirkBasis.create(np.random.default_rng([seed, 4]))

  def identity(self, participant: int) -> np.ndarray:
    return 0.3 * np.random.default_rng([self.seed, 5, participant]).standard_normal(50)


def _save(path: str, array: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.save(path, array)


def generate_segment(out_dir: str, plan: SegmentPlan, corpus: _Corpus) -> dict:
  """Synthesises one segment and writes all its files; returns a small summary."""
  import soundfile  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([corpus.seed, 100, plan.index])
  n = plan.num_frames
  duration = n / motion.VIDEO_FPS
  fine = n * (motion.RIG_RATE // motion.VIDEO_FPS)
  actor = speech.Voice(**speech.ACTOR_VOICE)
  utts = speech.build_conversation(rng, duration, actor,
                                   speech.participant_voice(corpus.seed, plan.participant))
  timeline = {"actor": ([], [], []), "participant": ([], [], [])}
  transcript = []
  for u in utts:
    phones, words, span = speech.utterance_timeline(u)
    timeline[u.speaker][0].extend(phones)
    timeline[u.speaker][1].extend(words)
    timeline[u.speaker][2].append(span)
    transcript.append({"speaker": u.speaker, "start": round(span[0], 4),
                       "end": round(span[1], 4), "text": u.text})
  a_phones, a_words, a_spans = timeline["actor"]
  p_phones, p_words, p_spans = timeline["participant"]

  audio = speech.stereo_48k(utts, n, rng)

  # Participant smiles at random; the actor answers with a smile a moment later.
  p_smiles = [(s, e, rng.uniform(0.6, 1.0))
              for s, e in motion.events(rng, duration, 10.0, 2.0, (1.5, 4.0))]
  a_smiles = []
  for s, e, _ in p_smiles:
    delay = rng.uniform(0.4, 0.9)
    a_smiles.append((s + delay, e + delay + rng.uniform(0.3, 0.8), rng.uniform(0.7, 1.0)))
  questions = [span for u, span in zip([u for u in utts if u.speaker == "actor"], a_spans)
               if u.text.rstrip().endswith("?")]
  channels = motion.to_video(motion.actor_channels(rng, a_phones, questions, a_smiles, fine),
                             n).astype(np.float32)
  codes = corpus.rig.encode(channels, motion.nuisance(corpus.mix, channels, rng))
  head = motion.head_transforms(rng, a_phones, p_spans, fine, n)
  smirk_exp, smirk_head = motion.participant_smirk(
      rng, corpus.basis, corpus.identity(plan.participant), p_phones, p_smiles, a_spans,
      fine, n)
  n_tok = tokens_lib.num_token_frames(n * speech.SAMPLES_PER_FRAME // 3)  # 48 kHz -> 16 kHz.
  toks = np.stack([tokens_lib.token_logits(a_words, a_spans, n_tok, rng),
                   tokens_lib.token_logits(p_words, p_spans, n_tok, rng)])

  seg = plan.name
  os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
  soundfile.write(os.path.join(out_dir, "audio", seg + ".wav"), audio, speech.AUDIO_SR,
                  subtype="PCM_16")
  _save(os.path.join(out_dir, "expression_codes", seg + ".npy"), codes)
  _save(os.path.join(out_dir, "headpose", seg + "--headpose.npy"), head)
  _save(os.path.join(out_dir, TOKEN_DIR, seg + ".npy"), toks)
  _save(os.path.join(out_dir, SMIRK_DIR, seg + "--expression.npy"), smirk_exp)
  _save(os.path.join(out_dir, SMIRK_DIR, seg + "--headpose.npy"), smirk_head)
  _save(os.path.join(out_dir, RIG_DIR, seg + ".npy"), channels)
  os.makedirs(os.path.join(out_dir, "transcripts"), exist_ok=True)
  with open(os.path.join(out_dir, "transcripts", seg + ".json"), "w") as f:
    json.dump(transcript, f, indent=1)
  return {"name": seg, "frames": n, "seconds": duration, "participant": plan.participant,
          "utterances": {"actor": len(a_spans), "participant": len(p_spans)},
          "actor_speech_s": round(sum(e - s for s, e in a_spans), 3),
          "smirk_exp_min": smirk_exp.min(0).tolist(), "smirk_exp_max": smirk_exp.max(0).tolist(),
          "smirk_head_min": smirk_head.min(0).tolist(),
          "smirk_head_max": smirk_head.max(0).tolist()}


def _run_task(out_dir: str, plans: list, seed: int, rig_path: str) -> list:
  corpus = _Corpus(seed, rig_path)
  return [generate_segment(out_dir, p, corpus) for p in plans]


def _prepare_output(out_dir: str, overwrite: bool) -> None:
  existing = [d for d in LAYOUT_DIRS if os.path.exists(os.path.join(out_dir, d))]
  if existing and not overwrite:
    raise SystemExit(f"{out_dir}: already holds {existing}; pass --overwrite to replace them")
  for d in existing:
    shutil.rmtree(os.path.join(out_dir, d))
  os.makedirs(os.path.join(out_dir, RIG_DIR), exist_ok=True)


def _write_stats(out_dir: str, summaries: list) -> dict:
  stats = {"expression_min": np.min([s["smirk_exp_min"] for s in summaries], 0),
           "expression_max": np.max([s["smirk_exp_max"] for s in summaries], 0),
           "headpose_min": np.min([s["smirk_head_min"] for s in summaries], 0),
           "headpose_max": np.max([s["smirk_head_max"] for s in summaries], 0)}
  # The official loader reads smirk_outputs/stats/; data_prep's reader reads <root>/stats/.
  for folder in (os.path.join(out_dir, SMIRK_DIR, "stats"), os.path.join(out_dir, "stats")):
    for key, value in stats.items():
      _save(os.path.join(folder, key + ".npy"), value.astype(np.float32))
  return stats


def generate(out_dir: str, minutes: float = 30.0, seed: int = 0, workers: int | None = None,
             overwrite: bool = False, progress: bool = True) -> dict:
  """Writes the corpus; returns the corpus summary (also saved to demo_rig/corpus.json).

  Args:
    out_dir: output root.
    minutes: total duration of all segments.
    seed: corpus seed.
    workers: worker processes (default: all CPUs).
    overwrite: replace an existing corpus in out_dir.
    progress: show a tqdm bar.
  """
  t0 = time.time()
  plans = plan_corpus(minutes, seed)
  _prepare_output(out_dir, overwrite)
  rig_path = os.path.join(out_dir, RIG_DIR, "face_rig.npz")
  face_rig.FaceRig.create(seed).save(rig_path)
  workers = max(1, workers or os.cpu_count() or 1)
  tasks = [plans[i:i + SEGMENTS_PER_TASK] for i in range(0, len(plans), SEGMENTS_PER_TASK)]
  summaries = []
  # spawn + one task per process: every task starts from a fresh eSpeak state.
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                              mp_context=ctx, max_tasks_per_child=1) as pool:
    futures = [pool.submit(_run_task, out_dir, task, seed, rig_path) for task in tasks]
    bar = None
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm(total=len(plans), unit="seg", desc="demo corpus")
    for fut in concurrent.futures.as_completed(futures):
      done = fut.result()
      summaries.extend(done)
      if bar is not None:
        bar.update(len(done))
    if bar is not None:
      bar.close()
  summaries.sort(key=lambda s: s["name"])
  _write_stats(out_dir, summaries)
  dates = sorted({s["name"][:8] for s in summaries})
  info = {
      "generator": "data_prep.demo", "seed": seed, "minutes": minutes,
      "segments": len(summaries), "hours": sum(s["seconds"] for s in summaries) / 3600.0,
      "dates": dates, "val_dates": dates[-2:],
      "actor_voice": speech.ACTOR_VOICE,
      "participant_voices": {str(p): dataclasses.asdict(speech.participant_voice(seed, p))
                             for p in sorted({s["participant"] for s in summaries})},
      "smirk_layout": {"expression": "(N, 55) = FLAME expression 50 ; jaw pose 3 ; eyelids 2",
                       "headpose": "(N, 3) = head rotation, axis-angle radians"},
      "headpose_units": "rotation matrix; translation in millimetres",
      "rig_channels": list(face_rig.CHANNELS),
      "clips": [{k: s[k] for k in ("name", "frames", "participant", "utterances",
                                   "actor_speech_s")} for s in summaries],
  }
  with open(os.path.join(out_dir, RIG_DIR, "corpus.json"), "w") as f:
    json.dump(info, f, indent=1)
  logging.info("demo corpus: %d segments, %.1f min in %.1f s (%d workers) -> %s",
               len(summaries), info["hours"] * 60, time.time() - t0, workers, out_dir)
  return info


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output", required=True, help="output directory")
  parser.add_argument("--minutes", type=float, default=30.0, help="total corpus duration")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a corpus already in --output")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  t0 = time.time()
  info = generate(args.output, args.minutes, args.seed, args.workers, args.overwrite)
  print(f"wrote {info['segments']} segments ({info['hours'] * 60:.1f} min) to {args.output} "
        f"in {time.time() - t0:.1f} s; val dates {info['val_dates']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
