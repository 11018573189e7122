"""Synthetic shards in the documented format, for tests of the core that must not depend on
data prep. The streams are smooth functions of the tokens so that a model can learn them."""

import json
import os

from array_record.python import array_record_module
import numpy as np

from avflow_jax.core import records


def make_clip(rng: np.random.Generator, name: str, frames: int, head_dim: int = 7,
              participant: bool = False) -> dict:
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


def write_synthetic_shards(out_dir: str, n_train: int = 12, n_val: int = 4, frames: int = 120,
                           seed: int = 0, head_dim: int = 7, participant: bool = False) -> str:
  os.makedirs(out_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  manifest = {"format_version": 1, "source_format": "synthetic", "frame_rate": 86.1328125,
              "sample_rate": 22050, "hop_length": 256,
              "dims": {"mel": 80, "tokens": 29, "face": 256, "head": head_dim,
                       "participant": 87 if participant else 0},
              "head_kind": "quat_trans" if head_dim == 7 else "a2p_4d",
              "splits": {}, "stats": {}, "face_decoder": None, "skipped": []}
  sums = {}
  for split, n, shards in (("train", n_train, 2), ("val", n_val, 1)):
    clips = [make_clip(rng, f"{split}{i:03d}", frames + 7 * i, head_dim, participant)
             for i in range(n)]
    names, entries = [], []
    for s in range(shards):
      name = f"{split}-{s:05d}-of-{shards:05d}.array_record"
      writer = array_record_module.ArrayRecordWriter(os.path.join(out_dir, name), "group_size:1")
      for j, clip in enumerate(clips[s::shards]):
        writer.write(records.encode_record(clip))
        entries.append({"name": clip["name"], "frames": clip["mel"].shape[0], "shard": s,
                        "index": j})
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


def random_bigvgan_state_dict(config, seed: int = 0, std: float = 0.1) -> dict:
  """A BigVGAN generator state dict (weight-norm spelling) with random weights.

  The anti-aliasing filters are the real Kaiser-sinc ones (they are buffers, not weights), the
  weight-norm gains stay in [0.3, 0.8] so activations neither vanish nor explode.
  """
  from avflow_jax.models import bigvgan as bv  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  sd = {}
  for k, shape in bv.state_dict_shapes(config).items():
    if k.endswith("filter"):
      sd[k] = bv.kaiser_sinc_filter().reshape(shape)
    elif k.endswith("weight_g"):
      sd[k] = rng.uniform(0.3, 0.8, shape).astype(np.float32)
    else:
      sd[k] = rng.normal(0, std, shape).astype(np.float32)
  return sd


def shards_with_face_rig(shards_dir: str, out: str, seed: int = 0,
                         name: str = "face_rig.npz") -> str:
  """A shard directory (shards linked, not copied) whose manifest names a demo face rig.

  The rig is `FaceRig.create(seed)` saved as `out/name`; the source directory is untouched.
  """
  from avflow_jax.core import face_rig  # pylint: disable=g-import-not-at-top
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
