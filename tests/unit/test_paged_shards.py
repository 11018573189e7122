"""Paged shards (format 2), frame-uniform crop sampling and the prefetching device feed."""

import collections

import grain
import jax
import ml_collections
import numpy as np
import pytest

from avflow_jax.core import checkpointing
from avflow_jax.core import records
from avflow_jax.core import sharding
from avflow_jax.data import clips
from avflow_jax.data import crops
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.training import input_feed
from data_prep import synthetic

STREAMS = ("mel", "tokens", "face", "head")


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
  """The same synthetic clips as whole-clip records (format 1) and as 32-frame pages."""
  root = tmp_path_factory.mktemp("formats")
  whole = synthetic.write_synthetic_shards(str(root / "whole"), page_frames=0)
  paged = synthetic.write_synthetic_shards(str(root / "paged"), page_frames=32)
  return whole, paged


def _batches(data_dir, sampling, n=6, seed=3, crop=100, rows=None):
  manifest = manifest_lib.load_manifest(data_dir)
  it = iter(crops.make_crop_dataset(data_dir, manifest, "train", global_batch_size=4,
                                    crop=crop, streams=STREAMS, seed=seed, sampling=sampling,
                                    rows=rows))
  return [next(it) for _ in range(n)]


def test_split_and_join_pages_round_trip():
  rng = np.random.default_rng(0)
  clip = {"name": "c", "text": "hello", "mel": rng.normal(size=(130, 80)).astype(np.float32),
          "face_mask": np.ones(130, np.float32),
          "audio": rng.integers(-9, 9, 130 * 256).astype(np.int16)}
  pages = records.split_pages(clip, 64, 256)
  assert [p["page"] for p in pages] == [0, 1, 2] and pages[2]["mel"].shape == (2, 80)
  assert "text" in pages[0] and "text" not in pages[1] and pages[1]["name"] == "c"
  back = records.join_pages([records.decode_record(records.encode_record(p)) for p in pages])
  assert back.keys() == clip.keys()
  for k in ("mel", "face_mask", "audio"):
    np.testing.assert_array_equal(back[k], clip[k])
  with pytest.raises(ValueError, match="clip 'c': pages \\[0, 2\\]"):
    records.join_pages([pages[0], pages[2]])


@pytest.mark.parametrize("sampling", ["frames", "clips"])
def test_paged_shards_give_the_same_crops_and_clips(both_formats, sampling):
  whole, paged = both_formats
  for a, b in zip(_batches(whole, sampling), _batches(paged, sampling)):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for split in ("train", "val"):
    got = []
    for data in (whole, paged):
      manifest = manifest_lib.load_manifest(data)
      shards, entries = clips.split_entries(data, manifest, split)
      got.append(list(clips.iter_split_records(shards, entries, clips.page_frames(manifest))))
    for (_, x), (_, y) in zip(*got):
      assert x.keys() == y.keys()
      for k in x:
        np.testing.assert_array_equal(x[k], y[k])
  manifest = manifest_lib.load_manifest(paged)
  assert manifest["format_version"] == 2 and manifest["page_frames"] == 32
  rec = clips.read_clip(paged, manifest, "val003")
  assert rec["mel"].shape == (120 + 21, 80) and rec["audio"].shape == (141 * 256,)


def test_a_crop_reads_at_most_twice_its_bytes_however_long_the_clip(tmp_path):
  data = synthetic.write_synthetic_shards(str(tmp_path / "long"), n_train=2, n_val=1,
                                          frames=3000, page_frames=64)
  source = crops.open_split(data, manifest_lib.load_manifest(data), "train")
  read = []
  original = source.read_bytes
  source.read_bytes = lambda idx: read.extend(original(idx)) or read[-len(idx):]
  fields = STREAMS + ("face_mask",)
  for start in (0, 1, 63, 64, 1000, 2600):
    read.clear()
    x = source.frames(0, start, start + 345, fields)
    crop_bytes = sum(v.nbytes for v in x.values())
    assert x["mel"].shape == (345, 80)
    assert sum(len(r) for r in read) <= 2 * crop_bytes, start


def test_frame_uniform_sampling_weights_clips_by_their_starts(tmp_path):
  data = synthetic.write_synthetic_shards(str(tmp_path / "lengths"), n_train=4, n_val=1,
                                          frames=100, page_frames=64)
  manifest = manifest_lib.load_manifest(data)
  frames = {c["name"]: c["frames"] for c in manifest["splits"]["train"]["clips"]}
  # Whole passes of the sampler are deterministic for a seed and differ between seeds.
  a, b = _batches(data, "frames", n=3, crop=60), _batches(data, "frames", n=3, crop=60)
  c = _batches(data, "frames", n=3, crop=60, seed=4)
  np.testing.assert_array_equal(a[2]["mel"], b[2]["mel"])
  assert not np.array_equal(a[2]["mel"], c[2]["mel"])
  crop = 60
  layout = clips.layout(manifest, "train")
  starts = crops.ClipStart(layout.frames, crop)
  assert len(starts) == sum(f - crop + 1 for f in frames.values())
  # One pass over the shuffled starts visits every (clip, start) exactly once.
  seen = collections.Counter(starts.map(u) for u in range(len(starts)))
  assert len(seen) == len(starts) and max(seen.values()) == 1
  assert {c for c, _ in seen} == set(range(4))
  # Shuffled as the pipeline does it, a pass draws each clip as often as it has starts.
  ds = grain.MapDataset.range(len(starts)).seed(5).shuffle().repeat().map(starts)
  first_pass = collections.Counter(ds[i][0] for i in range(len(starts)))
  by_clip = [f - crop + 1 for f in layout.frames]
  assert [first_pass[c] for c in range(4)] == by_clip and len(set(by_clip)) == 4


def test_sampling_is_validated(tiny_shards):
  with pytest.raises(ValueError, match="crop_sampling='words'"):
    _batches(tiny_shards, "words", n=1)


def test_device_feed_prefetches_and_resumes_exactly(tiny_shards, tmp_path):
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
  manifest = manifest_lib.load_manifest(tiny_shards)

  def dataset():
    return crops.make_crop_dataset(tiny_shards, manifest, "train", global_batch_size=8,
                                   crop=32, streams=STREAMS, seed=1)

  reference = [next(it)["tokens"] for it in [iter(dataset())] for _ in range(8)]
  it = iter(input_feed.to_devices(dataset(), mesh))
  first = next(it)
  assert isinstance(first["tokens"], jax.Array)
  assert first["tokens"].sharding == sharding.batch_sharding(mesh)
  np.testing.assert_array_equal(np.asarray(first["tokens"]), reference[0])
  for _ in range(4):
    next(it)
  # The feed has read ahead, but the saved position is that of the 5 batches handed out.
  manager = checkpointing.make_manager(str(tmp_path), keep=1, async_save=False)
  checkpointing.save(manager, 5, {"x": jax.numpy.zeros(1)}, it, force=True)
  manager.wait_until_finished()
  fresh = iter(input_feed.to_devices(dataset(), mesh))
  checkpointing.restore(manager, {"x": jax.ShapeDtypeStruct((1,), np.float32)}, fresh)
  for i in range(5, 8):
    np.testing.assert_array_equal(np.asarray(next(fresh)["tokens"]), reference[i])


def test_repage_converts_whole_clip_shards_to_the_same_crops(both_formats, tmp_path):
  from data_prep import repage  # pylint: disable=g-import-not-at-top
  whole, _ = both_formats
  out = str(tmp_path / "repaged")
  assert repage.main([whole, out, "--page-frames", "32", "--no-progress"]) == 0
  manifest = manifest_lib.load_manifest(out)
  assert manifest["format_version"] == 2 and manifest["page_frames"] == 32
  assert manifest["stats"] == manifest_lib.load_manifest(whole)["stats"]
  for a, b in zip(_batches(whole, "frames"), _batches(out, "frames")):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # The source is only read, and an existing dataset is never overwritten.
  assert manifest_lib.load_manifest(whole)["format_version"] == 1
  assert repage.main([whole, out, "--no-progress"]) == 1
