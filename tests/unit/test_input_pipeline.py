"""Grain pipeline: crops, masks, per-host disjointness, determinism, exact resume, shard checks."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from avflow_jax.core import checkpointing
from avflow_jax.data import clips
from avflow_jax.data import crops
from avflow_jax.data import manifest as manifest_lib

STREAMS = ("mel", "tokens", "face", "head")


def _ds(data_dir, seed=0, pi=0, pc=1, batch=4, crop=32):
  manifest = manifest_lib.load_manifest(data_dir)
  return crops.make_crop_dataset(data_dir, manifest, "train", global_batch_size=batch,
                                          crop=crop, streams=STREAMS, seed=seed,
                                          process_index=pi, process_count=pc)


def test_batches_have_fixed_shapes_and_masks(tiny_shards):
  batch = next(iter(_ds(tiny_shards)))
  assert batch["mel"].shape == (4, 32, 80) and batch["tokens"].shape == (4, 32, 29)
  assert batch["face"].shape == (4, 32, 256) and batch["head"].shape == (4, 32, 7)
  assert batch["valid"].shape == (4, 32) and batch["face_mask"].shape == (4, 32)
  assert batch["mel"].dtype == np.float32


def test_short_clips_are_padded_and_marked_invalid(tiny_shards):
  batch = next(iter(_ds(tiny_shards, crop=400)))  # Longer than every clip.
  valid = batch["valid"]
  assert (valid.sum(1) < 400).all() and (valid[:, 0] == 1).all()
  assert (batch["mel"][valid == 0] == 0).all()


def test_same_seed_same_batches_and_hosts_disjoint(tiny_shards):
  a = [next(it) for it in [iter(_ds(tiny_shards))] for _ in range(3)]
  b = [next(it) for it in [iter(_ds(tiny_shards))] for _ in range(3)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["mel"], y["mel"])
  # Two hosts read disjoint rows that together are exactly the single-host global batch.
  single = iter(_ds(tiny_shards))
  h0, h1 = iter(_ds(tiny_shards, pi=0, pc=2)), iter(_ds(tiny_shards, pi=1, pc=2))
  for _ in range(3):
    a, b, full = next(h0), next(h1), next(single)
    assert a["mel"].shape[0] == 2
    np.testing.assert_array_equal(np.concatenate([a["tokens"], b["tokens"]]), full["tokens"])


def test_batch_must_divide_over_hosts(tiny_shards):
  with pytest.raises(ValueError, match="batch_size=5 .* 2 processes"):
    _ds(tiny_shards, pc=2, batch=5)


def test_iterator_state_checkpoint_resumes_exactly(tiny_shards, tmp_path):
  reference = iter(_ds(tiny_shards))
  stream = [next(reference)["tokens"] for _ in range(8)]
  it = iter(_ds(tiny_shards))
  for _ in range(5):
    next(it)
  manager = checkpointing.make_manager(str(tmp_path), keep=1, async_save=False)
  checkpointing.save(manager, 5, {"x": jax.numpy.zeros(1)}, it, force=True)
  manager.wait_until_finished()
  fresh = iter(_ds(tiny_shards))
  checkpointing.restore(manager, {"x": jax.ShapeDtypeStruct((1,), np.float32)}, fresh)
  for i in range(5, 8):
    np.testing.assert_array_equal(next(fresh)["tokens"], stream[i])


def test_missing_manifest_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no manifest"):
    manifest_lib.load_manifest(str(tmp_path))


def _copy(tiny_shards, tmp_path):
  out = str(tmp_path / "shards")
  shutil.copytree(tiny_shards, out)
  return out


def _edit_manifest(data_dir, edit):
  path = os.path.join(data_dir, "manifest.json")
  with open(path) as f:
    manifest = json.load(f)
  edit(manifest)
  with open(path, "w") as f:
    json.dump(manifest, f)


def test_dims_disagreeing_with_the_shards_name_shard_clip_and_field(tiny_shards, tmp_path):
  data = _copy(tiny_shards, tmp_path)
  _edit_manifest(data, lambda m: m["dims"].update(face=255))
  manifest = manifest_lib.load_manifest(data)
  first = manifest["splits"]["train"]["clips"][0]["name"]
  with pytest.raises(clips.ShardError) as err:
    _ds(data)
  msg = str(err.value)
  assert "train-00000-of-00002.array_record record 0" in msg and repr(first) in msg
  assert "'face'" in msg and "(T, 255)" in msg and "\n" not in msg
  # A stream the manifest says is absent but the records hold is a mismatch too.
  _edit_manifest(data, lambda m: m["dims"].update(face=256, head=0))
  with pytest.raises(ValueError, match="field 'head' has shape"):
    _ds(data)


def test_shard_from_another_run_is_refused(tiny_shards, tmp_path):
  data = _copy(tiny_shards, tmp_path)
  # The manifest lists one clip less for shard 1 than the file holds (a stale manifest).
  def drop_last(m):
    last = max(c["index"] for c in m["splits"]["train"]["clips"] if c["shard"] == 1)
    m["splits"]["train"]["clips"] = [c for c in m["splits"]["train"]["clips"]
                                     if c["shard"] != 1 or c["index"] != last]
  _edit_manifest(data, drop_last)
  with pytest.raises(clips.ShardError, match=r"train-00001-of-00002.array_record: \d+ records, "
                     r"manifest.json lists \d+ pages of 5 clips"):
    _ds(data)
  # A clip left out in the middle: the others no longer tile the records.
  data = _copy(tiny_shards, tmp_path / "middle")
  _edit_manifest(data, lambda m: m["splits"]["train"]["clips"].pop(1))
  with pytest.raises(clips.ShardError, match=r"array_record: (\d+ records|manifest.json's "
                     r"clips of train shard 0 do not tile)"):
    _ds(data)


def test_shard_missing_or_deleted_during_training_is_one_line(tiny_shards, tmp_path):
  data = _copy(tiny_shards, tmp_path)
  shard = os.path.join(data, "train-00001-of-00002.array_record")
  os.rename(shard, shard + ".away")
  with pytest.raises(clips.ShardError, match="train-00001-of-00002.array_record: shard listed "
                     "in manifest.json is missing"):
    _ds(data)
  os.rename(shard + ".away", shard)
  it = iter(_ds(data))  # Opened and checked; the shard disappears before it is read.
  os.remove(shard)
  with pytest.raises(ValueError) as err:
    for _ in range(20):
      next(it)
  assert str(err.value).startswith(f"{shard}: cannot read record ")
  assert "\n" not in str(err.value)


def test_truncated_shard_is_named(tiny_shards, tmp_path):
  data = _copy(tiny_shards, tmp_path)
  shard = os.path.join(data, "train-00000-of-00002.array_record")
  with open(shard, "rb") as f:
    blob = f.read()
  with open(shard, "wb") as f:
    f.write(blob[: len(blob) // 2])
  with pytest.raises(clips.ShardError, match="train-00000-of-00002.array_record: unreadable "
                     "shard"):
    _ds(data)
