"""Synthetic data for tests, benchmarks and smoke runs, without recordings.

Two kinds:
  * shards in the documented record format (`write_synthetic_shards`), whose streams are smooth
    functions of the tokens so that a model can learn them, for code that must not depend on
    data prep;
  * tiny corpora in every layout `data_prep` reads (`make_a2p`, `make_avflow50h`,
    `make_generic`, `make_ljspeech`): audio is a few seconds of voiced-like tones plus noise;
    face codes, head poses and SMIRK features are smooth known functions of the video frame
    index so tests can check values.
"""

import json
import os

from array_record.python import array_record_module
import numpy as np
import soundfile as sf

from avflow_jax.core import constants as C
from avflow_jax.core import face_rig
from avflow_jax.core import records
from data_prep import shards as shards_lib
from data_prep import source_files

TOKEN_DIR = source_files.TOKEN_DIR


def tone(seconds: float, sr: int, seed: int, channels: int = 1) -> np.ndarray:
  rng = np.random.default_rng(seed)
  n = int(round(seconds * sr))
  t = np.arange(n) / sr
  out = []
  for c in range(channels):
    f0 = 110.0 + 40 * c + 10 * seed
    x = sum(0.15 / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 6))
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t)) + 0.01 * rng.standard_normal(n)
    out.append(x)
  return np.stack(out, -1).astype(np.float32)


def write_wav(path: str, audio: np.ndarray, sr: int) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path, audio, sr, subtype="PCM_16")


def face_codes(frames: int, seed: int) -> np.ndarray:
  k = np.arange(frames)[:, None]
  d = np.arange(C.FACE_DIM)[None]
  return (np.sin(0.1 * k + 0.05 * d + seed) + 0.01 * d).astype(np.float32)


def token_file(frames_tok: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(100 + seed)
  return rng.normal(size=(2, frames_tok, C.TOKEN_DIM)).astype(np.float32)


def n_tokens(seconds: float) -> int:
  """wav2vec2 frame count of `seconds` of audio (hop 320, window 400 at 16 kHz)."""
  return (int(round(seconds * 16000)) - 400) // 320 + 1


def make_a2p(root: str, subject: str = "PXB184", scenes: int = 4, video_frames: int = 75,
             tokens: bool = True, missing: tuple = (0, 1, 30, 31, 74)) -> str:
  """An audio2photoreal subject dir: 48 kHz stereo, 30 fps pose/face, missing list."""
  sub = os.path.join(root, subject)
  os.makedirs(sub, exist_ok=True)
  for s in range(1, scenes + 1):
    scene = f"scene{s:02d}"
    base = os.path.join(sub, scene)
    seconds = video_frames / 30.0
    write_wav(base + "_audio.wav", tone(seconds, 48000, s, 2), 48000)
    pose = np.zeros((video_frames, 104), np.float32)
    pose[:, 12:16] = np.sin(0.05 * np.arange(video_frames)[:, None] + np.arange(4) + s)
    np.save(base + "_body_pose.npy", pose)
    np.save(base + "_face_expression.npy", face_codes(video_frames, s))
    np.save(base + "_missing_face_frames.npy", np.asarray(missing, np.int64))
    if tokens:
      os.makedirs(os.path.join(sub, TOKEN_DIR), exist_ok=True)
      np.save(os.path.join(sub, TOKEN_DIR, scene + ".npy"), token_file(n_tokens(seconds), s))
  return root


def quat_to_rot(q: np.ndarray) -> np.ndarray:
  """Hamilton [w, x, y, z] -> rotation matrices (for building fixtures)."""
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
  ], -2)


def head_quats(frames: int, seed: int) -> np.ndarray:
  k = np.arange(frames)[:, None]
  q = np.concatenate([np.ones((frames, 1)),
                      0.2 * np.sin(0.07 * k + np.arange(3)[None] + seed)], -1)
  return q / np.linalg.norm(q, axis=-1, keepdims=True)


def make_avflow50h(root: str, dates=("20230101", "20230102", "20230103"), per_date: int = 1,
                   video_frames: int = 60, participant: bool = True, stats_files: bool = False,
                   transcripts: bool = True, rig: bool = True) -> list:
  """The 50-hour layout; returns the segment names."""
  segs = []
  for d in dates:
    for i in range(per_date):
      seg = f"{d}_sess{i}"
      segs.append(seg)
      seed = len(segs)
      seconds = video_frames / 30.0
      write_wav(os.path.join(root, "audio", seg + ".wav"), tone(seconds, 48000, seed, 2), 48000)
      os.makedirs(os.path.join(root, "expression_codes"), exist_ok=True)
      np.save(os.path.join(root, "expression_codes", seg + ".npy"), face_codes(video_frames, seed))
      rot = quat_to_rot(head_quats(video_frames, seed))
      # Flip the sign convention of every other frame's source: the transform is the same.
      tr = np.zeros((video_frames, 4, 4), np.float32)
      tr[:, :3, :3] = rot
      tr[:, :3, 3] = 0.01 * np.arange(video_frames)[:, None] + np.arange(3)[None]
      tr[:, 3, 3] = 1
      os.makedirs(os.path.join(root, "headpose"), exist_ok=True)
      np.save(os.path.join(root, "headpose", seg + "--headpose.npy"), tr)
      os.makedirs(os.path.join(root, TOKEN_DIR), exist_ok=True)
      np.save(os.path.join(root, TOKEN_DIR, seg + ".npy"), token_file(n_tokens(seconds), seed))
      if participant:
        smirk = os.path.join(root, "participant", "camera01", "smirk_outputs")
        os.makedirs(smirk, exist_ok=True)
        k = np.arange(video_frames)[:, None]
        np.save(os.path.join(smirk, seg + "--expression.npy"),
                (3.0 * np.sin(0.1 * k + np.arange(55)[None] + seed)).astype(np.float32))
        np.save(os.path.join(smirk, seg + "--headpose.npy"),
                (0.5 * np.cos(0.1 * k + np.arange(3)[None])).astype(np.float32))
      if transcripts:
        os.makedirs(os.path.join(root, "transcripts"), exist_ok=True)
        with open(os.path.join(root, "transcripts", seg + ".json"), "w") as f:
          json.dump([{"speaker": "actor", "start": 0.5, "end": 1.0, "text": "hello there"},
                     {"speaker": "participant", "start": 1.0, "end": 1.5, "text": "hi"},
                     {"speaker": "actor", "start": 0.1, "end": 0.4, "text": "well"}], f)
  if participant and stats_files:
    os.makedirs(os.path.join(root, "stats"), exist_ok=True)
    np.save(os.path.join(root, "stats", "expression_min.npy"), -3.0 * np.ones(55))
    np.save(os.path.join(root, "stats", "expression_max.npy"), 3.0 * np.ones(55))
    np.save(os.path.join(root, "stats", "headpose_min.npy"), -0.5 * np.ones(3))
    np.save(os.path.join(root, "stats", "headpose_max.npy"), 0.5 * np.ones(3))
  if rig:
    os.makedirs(os.path.join(root, "demo_rig"), exist_ok=True)
    np.savez(os.path.join(root, "demo_rig", "face_rig.npz"), w=np.eye(3))
  return segs


def make_generic(root: str, names=("a", "b", "c"), video_frames: int = 60, head_dim: int = 4,
                 splits: dict = None, sr: int = 16000) -> None:
  os.makedirs(root, exist_ok=True)
  for i, n in enumerate(names):
    seconds = video_frames / 25.0
    write_wav(os.path.join(root, n + ".wav"), tone(seconds, sr, i, 1), sr)
    np.save(os.path.join(root, n + ".face.npy"), face_codes(video_frames, i))
    head = np.sin(0.05 * np.arange(video_frames)[:, None] + np.arange(head_dim)[None])
    np.save(os.path.join(root, n + ".head.npy"), head.astype(np.float32))
    np.save(os.path.join(root, n + ".tokens.npy"), token_file(n_tokens(seconds), i)[0])
    with open(os.path.join(root, n + ".txt"), "w") as f:
      f.write(f"clip {n} says hello\n")
  with open(os.path.join(root, "layout.json"), "w") as f:
    json.dump({"fps": 25}, f)
  if splits is not None:
    with open(os.path.join(root, "splits.json"), "w") as f:
      json.dump(splits, f)


def make_ljspeech(root: str, n: int = 3, seconds: float = 2.0) -> list:
  ids = [f"LJ001-{i:04d}" for i in range(1, n + 1)]
  os.makedirs(os.path.join(root, "wavs"), exist_ok=True)
  with open(os.path.join(root, "metadata.csv"), "w", encoding="utf-8") as f:
    for i, clip in enumerate(ids):
      write_wav(os.path.join(root, "wavs", clip + ".wav"), tone(seconds, 22050, i), 22050)
      f.write(f"{clip}|Text {i}, raw.|text {i} normalised\n")
  return ids


# ---- Shards in the record format ------------------------------------------------------------

def make_clip(rng: np.random.Generator, name: str, frames: int, head_dim: int = 7,
              participant: bool = False) -> dict:
  """One clip record (docs/data_format.md) whose streams are smooth functions of the tokens."""
  t = np.arange(frames)
  tokens = rng.normal(size=(frames, 29)).astype(np.float32)
  phase = rng.uniform(0, 2 * np.pi)
  base = np.sin(t[:, None] * 0.05 + phase + np.arange(8)[None] * 0.7)
  face = (base @ rng.normal(size=(8, 256)) * 0.3).astype(np.float32)
  face += 0.2 * tokens[:, :1]
  mel = (-5.0 + np.cos(t[:, None] * 0.03 + np.arange(80)[None] * 0.1)).astype(np.float32)
  head = np.zeros((frames, head_dim), np.float32)
  head[:, 0] = 1.0
  head[:, 1:] = 0.05 * np.sin(t[:, None] * 0.02 + np.arange(head_dim - 1)[None])
  mask = np.ones(frames, np.float32)
  mask[frames // 3: frames // 3 + 5] = 0.0
  clip = {"name": name, "mel": mel, "tokens": tokens, "face": face, "face_mask": mask,
          "head": head, "audio": (rng.normal(size=frames * 256) * 1000).astype(np.int16)}
  if participant:
    clip["participant"] = rng.normal(size=(frames, 87)).astype(np.float32)
  return clip


def speech_clip(rng: np.random.Generator, name: str, sentence: str, head_dim: int = 7,
                participant: bool = False) -> dict:
  """A `make_clip` record whose audio, mel and `utterances` are `sentence` spoken by eSpeak."""
  from avflow_jax.text import espeak  # pylint: disable=g-import-not-at-top  (optional dep.)
  from data_prep import mel as mel_lib  # pylint: disable=g-import-not-at-top
  speech, _ = espeak.synthesize(sentence)
  pad = np.zeros(C.SAMPLE_RATE // 4, np.int16)  # 0.25 s of silence either side.
  audio = np.concatenate([pad, speech, pad])
  frames = audio.shape[0] // C.HOP_LENGTH
  clip = make_clip(rng, name, frames, head_dim, participant)
  clip["audio"] = audio[:frames * C.HOP_LENGTH]
  clip["mel"] = mel_lib.clip_mel(clip["audio"].astype(np.float64) / 32768.0)
  start = pad.shape[0] // C.HOP_LENGTH
  clip["utterances"] = json.dumps([{"text": sentence, "start": start,
                                    "end": min(frames, start + speech.shape[0] // C.HOP_LENGTH)}])
  return clip


def write_synthetic_shards(out_dir: str, n_train: int = 12, n_val: int = 4, frames: int = 120,
                           seed: int = 0, head_dim: int = 7, participant: bool = False,
                           val_speech: tuple[str, ...] = (),
                           page_frames: int = shards_lib.DEFAULT_PAGE_FRAMES) -> str:
  """A shard directory in the documented format (train: 2 shards, val: 1) with its manifest.

  `page_frames` > 0 writes paged records (format 2), 0 one record per clip (format 1).

  Clip i of a split has `frames + 7 * i` frames; stats are computed over the train split.
  `val_speech` replaces the first val clips by eSpeak speaking these sentences
  (`speech_clip`: real speech and its transcript, for the recogniser).
  """
  os.makedirs(out_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  manifest = {**shards_lib.format_fields(page_frames), "source_format": "synthetic", "frame_rate": 86.1328125,
              "sample_rate": 22050, "hop_length": 256,
              "dims": {"mel": 80, "tokens": 29, "face": 256, "head": head_dim,
                       "participant": 87 if participant else 0},
              "head_kind": "quat_trans" if head_dim == 7 else "a2p_4d",
              "splits": {}, "stats": {}, "face_decoder": None, "skipped": []}
  sums = {}
  for split, n, shards in (("train", n_train, 2), ("val", n_val, 1)):
    clips = [make_clip(rng, f"{split}{i:03d}", frames + 7 * i, head_dim, participant)
             for i in range(n)]
    if split == "val":
      for i, sentence in enumerate(val_speech[:n]):
        clips[i] = speech_clip(rng, f"val{i:03d}", sentence, head_dim, participant)
    names, entries = [], []
    for s in range(shards):
      name = f"{split}-{s:05d}-of-{shards:05d}.array_record"
      writer = array_record_module.ArrayRecordWriter(os.path.join(out_dir, name), "group_size:1")
      group = clips[s::shards]
      for clip in group:
        for data in shards_lib.clip_records([records.encode_record(clip)], page_frames):
          writer.write(data)
      entries.extend(shards_lib.clip_entries(
          [(c["name"], None, c["mel"].shape[0]) for c in group], s, page_frames))
      writer.close()
      names.append(name)
    frames_total = sum(e["frames"] for e in entries)
    manifest["splits"][split] = {"shards": names, "clips": entries,
                                 "hours": frames_total / 86.1328125 / 3600}
    if split == "train":
      for clip in clips:
        for k in ("mel", "tokens", "face", "head", "participant"):
          if k in clip:
            x = clip[k].astype(np.float64)
            s = sums.setdefault(k, [0, 0, 0])
            s[0] += x.shape[0]; s[1] = s[1] + x.sum(0); s[2] = s[2] + (x ** 2).sum(0)
  for k, (n, s1, s2) in sums.items():
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-10))
    manifest["stats"][k] = {"mean": mean.tolist(), "std": np.maximum(std, 1e-5).tolist()}
  with open(os.path.join(out_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  return out_dir


def shards_with_face_rig(shards_dir: str, out: str, seed: int = 0,
                         name: str = "face_rig.npz") -> str:
  """A shard directory (shards linked, not copied) whose manifest names a demo face rig.

  The rig is `FaceRig.create(seed)` saved as `out/name`; the source directory is untouched.
  """
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(shards_dir, "manifest.json")) as f:
    manifest = json.load(f)
  for split in manifest["splits"].values():
    for s in split["shards"]:
      os.symlink(os.path.join(os.path.abspath(shards_dir), s), os.path.join(out, s))
  face_rig.FaceRig.create(seed).save(os.path.join(out, name))
  manifest["face_decoder"] = name
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  return out
