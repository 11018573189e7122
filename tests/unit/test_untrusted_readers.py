"""Every reader of files from outside refuses hostile ones: one line, bounded memory, no code run.

Each hostile file is built here (a torch zip whose tensor views one float as 20000 x 20000, a
deflate bomb, a pickle naming `os.system`, a safetensors header claiming 10 GB, an object npz, a
wav header claiming 10 hours, an oversized manifest, random and mutated bytes); each read must
raise the reader's own error type with a one-line message naming the file, while the traced
Python/numpy allocations and the process' peak RSS stay small.
"""

import io
import json
import math
import os
import pickle
import resource
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from avflow_jax import convert_bigvgan
from avflow_jax.core import audio
from avflow_jax.core import face_rig
from avflow_jax.core import safe_files
from avflow_jax.core import torch_pickle
from avflow_jax.core import torch_reader
from avflow_jax.core.errors import BadInput
from avflow_jax.core.safe_files import UntrustedFileError
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.models import asr
from avflow_jax.models import bigvgan_checkpoint
from avflow_jax.models import wav2vec2_checkpoint

MAX_TRACED = 64 * 2**20  # Python and numpy allocations while refusing one file.
MAX_RSS_GROWTH = 200 * 2**20  # The process' peak resident memory, for native allocations.


def noise(n: int) -> bytes:
  """n random bytes, the same on every run (seeded by n)."""
  return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


def refused(fn, error_type, path) -> str:
  """Runs fn, expecting `error_type` with a one-line message naming `path`, in little memory."""
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  tracemalloc.start()
  try:
    with pytest.raises(error_type) as info:
      fn()
    traced = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024  # KiB
  msg = str(info.value)
  assert "\n" not in msg, msg
  assert os.path.basename(str(path)) in msg, msg
  assert traced < MAX_TRACED, (msg, traced)
  assert grown < MAX_RSS_GROWTH, (msg, grown)
  return msg


# ----------------------------------------------------------------------------- torch zips


def _op(x) -> bytes:
  """The pickle opcodes that push `x` (an int, str, bool or tuple of them), pickle's own."""
  return pickle.dumps(x, protocol=2)[2:-1]


def tensor_pickle(tensors: dict, storage_type: str = "FloatStorage") -> bytes:
  """data.pkl of an OrderedDict {key: tensor}, as torch.save writes it, built without torch.

  Args:
    tensors: key -> (storage key, storage numel, offset, size, stride).
    storage_type: the torch storage class named by every storage.
  """
  out = [b"\x80\x02", b"ccollections\nOrderedDict\n", b")R", b"("]
  for key, (skey, numel, offset, size, stride) in tensors.items():
    pid = [b"(", _op("storage"), f"ctorch\n{storage_type}\n".encode(), _op(skey), _op("cpu"),
           _op(numel), b"tQ"]
    out += [_op(key), b"ctorch._utils\n_rebuild_tensor_v2\n", b"(", *pid, _op(offset),
            _op(tuple(size)), _op(tuple(stride)), _op(False), b"tR"]
  return b"".join(out + [b"u."])


def torch_zip(path, pkl: bytes, storages: dict, compression=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, "w", compression) as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", "little")
    for key, data in storages.items():
      zf.writestr(f"archive/data/{key}", data)
  return str(path)


def zeros_member(zf: zipfile.ZipFile, name: str, n_bytes: int, prefix: bytes = b""):
  """A deflated member of `n_bytes` (mostly zeros), written in 1 MiB pieces (little memory)."""
  with zf.open(name, "w") as f:
    f.write(prefix)
    left, chunk = n_bytes - len(prefix), bytes(2**20)
    while left > 0:
      f.write(chunk[:min(left, len(chunk))])
      left -= len(chunk)


def test_valid_handmade_and_torch_checkpoints_round_trip(tmp_path):
  data = np.arange(12, dtype="<f4")
  spec = {"w": ("0", 12, 0, (3, 4), (4, 1)), "t": ("0", 12, 1, (2, 3), (1, 4)),
          "e": ("0", 12, 0, (0, 5), (5, 1))}
  got = torch_reader.read_torch_state_dict(
      torch_zip(tmp_path / "ok.pt", tensor_pickle(spec), {"0": data.tobytes()}))
  np.testing.assert_array_equal(got["w"], data.reshape(3, 4))
  np.testing.assert_array_equal(got["t"], np.lib.stride_tricks.as_strided(
      data[1:], (2, 3), (4, 16)))
  assert got["e"].shape == (0, 5)

  torch = pytest.importorskip("torch")
  gen = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=gen)
  sd = {"conv.weight": torch.randn(8, 4, 3, generator=gen), "t": base.t(), "s": base[2:, 1:4],
        "h": torch.randn(7, generator=gen).half(),
        "bf": torch.randn(3, 2, generator=gen).bfloat16(),
        "expanded": torch.ones(1).expand(1000), "empty": torch.zeros(0, 3)}
  torch.save({"generator": sd}, tmp_path / "real.pt")
  got = torch_reader.read_torch_state_dict(str(tmp_path / "real.pt"))
  assert set(got) == set(sd)
  for k, v in sd.items():
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], v.float().numpy())
  # The reproduced attack, written by torch itself: one float viewed as 20000 x 20000.
  torch.save({"w": torch.zeros(1).expand(20000, 20000)}, tmp_path / "expand.pt")
  path = tmp_path / "expand.pt"
  msg = refused(lambda: torch_reader.read_torch_state_dict(str(path)), UntrustedFileError, path)
  assert "'w'" in msg and "400000000" in msg


@pytest.mark.parametrize("name,spec,storage,words", [
    ("zero_stride", {"w": ("0", 1, 0, (20000, 20000), (0, 0))}, 4, ["'w'", "limit"]),
    ("over_tensor_cap", {"w": ("0", 1, 0, (2**16, 2**16), (0, 0))}, 4,
     ["'w'", "per tensor"]),
    ("outside_storage", {"w": ("0", 10, 0, (4, 4), (4, 1))}, 40, ["'w'", "reaches element 15"]),
    ("offset_outside", {"w": ("0", 10, 9, (2,), (1,))}, 40, ["'w'", "storage 0"]),
    ("negative_stride", {"w": ("0", 3, 2, (3,), (-1,))}, 12, ["'w'", "negative"]),
    ("negative_size", {"w": ("0", 3, 0, (-3,), (1,))}, 12, ["'w'", "malformed shape"]),
    ("size_stride_mismatch", {"w": ("0", 3, 0, (3,), (1, 1))}, 12, ["'w'", "malformed"]),
    ("too_many_dims", {"w": ("0", 1, 0, (1,) * 40, (1,) * 40)}, 4, ["'w'", "malformed"]),
    ("storage_bytes_short", {"w": ("0", 1000, 0, (10,), (1,))}, 40, ["storage 0", "4000"]),
    ("storage_huge_numel", {"w": ("0", 2**40, 0, (1,), (1,))}, 4, ["storage 0", "limit"]),
])
def test_torch_reader_refuses_bad_geometry(tmp_path, name, spec, storage, words):
  path = torch_zip(tmp_path / f"{name}.pt", tensor_pickle(spec), {"0": bytes(storage)})
  msg = refused(lambda: torch_reader.read_torch_state_dict(path), UntrustedFileError, path)
  for w in words:
    assert w in msg, msg


def test_torch_reader_refuses_deflate_bombs_before_inflating(tmp_path):
  # A storage member of 200 MB of zeros deflates to ~200 KB (1028:1).
  n = 50_000_000
  path = str(tmp_path / "bomb.pt")
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("archive/data.pkl", tensor_pickle({"w": ("0", n, 0, (n,), (1,))}))
    zeros_member(zf, "archive/data/0", 4 * n)
  assert os.path.getsize(path) < 400_000
  msg = refused(lambda: torch_reader.read_torch_state_dict(path), UntrustedFileError, path)
  assert "archive/data/0" in msg and "bomb" in msg
  # A data.pkl over its own limit is refused by its declared size, deflated or not.
  path = str(tmp_path / "big_pickle.pt")
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    zeros_member(zf, "archive/data.pkl", torch_reader.MAX_PICKLE_BYTES + 1, prefix=b"\x80\x02")
  msg = refused(lambda: torch_reader.read_torch_state_dict(path), UntrustedFileError, path)
  assert "data.pkl" in msg and "limit" in msg
  # The limits are keyword arguments.
  path = torch_zip(tmp_path / "small.pt", tensor_pickle({"w": ("0", 4, 0, (4,), (1,))}),
                   {"0": bytes(16)})
  with pytest.raises(UntrustedFileError, match="over the limit of 3"):
    torch_reader.read_torch_state_dict(path, max_tensor_elements=3)
  with pytest.raises(UntrustedFileError, match="data.pkl"):
    torch_reader.read_torch_state_dict(path, max_pickle_bytes=10)


def test_torch_reader_refuses_globals_by_name_without_running_them(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  marker = tmp_path / "pwned_marker"
  evil = b"\x80\x02cos\nsystem\n" + _op(f"touch {marker}") + b"\x85R."
  path = torch_zip(tmp_path / "evil.pt", evil, {})
  msg = refused(lambda: torch_reader.read_torch_state_dict(path),
                torch_pickle.RefusedGlobalError, path)
  assert "os.system" in msg and not marker.exists()
  # Also a pickle.UnpicklingError and an UntrustedFileError, as callers may catch either.
  with pytest.raises(pickle.UnpicklingError):
    torch_reader.read_torch_state_dict(path)
  # A global hidden inside the tensor geometry, and a storage class outside the list.
  hidden = tensor_pickle({"w": ("0", 1, 0, (1,), (1,))}).replace(
      b"ccollections\nOrderedDict\n", b"cbuiltins\neval\n")
  path = torch_zip(tmp_path / "eval.pt", hidden, {"0": bytes(4)})
  assert "builtins.eval" in refused(lambda: torch_reader.read_torch_state_dict(path),
                                    UntrustedFileError, path)
  path = torch_zip(tmp_path / "long.pt", tensor_pickle({"w": ("0", 1, 0, (1,), (1,))},
                                                       "LongStorage"), {"0": bytes(8)})
  assert "torch.LongStorage" in refused(lambda: torch_reader.read_torch_state_dict(path),
                                        UntrustedFileError, path)


def test_torch_reader_refuses_truncated_corrupt_and_random_files(tmp_path):
  good = torch_zip(tmp_path / "good.pt", tensor_pickle({"w": ("0", 256, 0, (256,), (1,))}),
                   {"0": np.arange(256, dtype="<f4").tobytes()})
  raw = open(good, "rb").read()
  cases = {"truncated.pt": raw[: len(raw) // 2], "random.pt": noise(5000),
           "empty.pt": b""}
  # One flipped byte in the storage: the zip CRC catches it.
  at = raw.index(np.arange(256, dtype="<f4").tobytes()) + 100
  cases["flipped.pt"] = raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]
  # The central directory kept, the last member's data cut.
  cases["cut_member.pt"] = raw[:at] + raw[at + 600:]
  for name, data in cases.items():
    path = tmp_path / name
    path.write_bytes(data)
    refused(lambda: torch_reader.read_torch_state_dict(str(path)), UntrustedFileError, path)
  # A counted bytes object claiming 4 GiB in a 20-byte pickle is refused before allocating.
  claim = b"\x80\x04\x8e" + struct.pack("<Q", 2**32) + b"xyz."
  path = torch_zip(tmp_path / "claim.pt", claim, {})
  assert "data.pkl" in refused(lambda: torch_reader.read_torch_state_dict(path),
                               UntrustedFileError, path)


def test_torch_reader_fuzz_mutated_pickles(tmp_path):
  """Random byte flips of a valid data.pkl either load as float32 tensors or raise one line."""
  spec = {"a": ("0", 12, 0, (3, 4), (4, 1)), "b": ("1", 6, 2, (2, 2), (2, 1))}
  pkl = tensor_pickle(spec)
  storages = {"0": bytes(48), "1": bytes(24)}
  rng = np.random.default_rng(0)
  outcomes = {"loaded": 0, "refused": 0}
  for i in range(150):
    data = bytearray(pkl)
    for at in rng.integers(0, len(data), size=rng.integers(1, 4)):
      data[at] = int(rng.integers(0, 256))
    path = torch_zip(tmp_path / f"m{i}.pt", bytes(data), storages)
    try:
      got = torch_reader.read_torch_state_dict(path)
    except UntrustedFileError as e:
      assert "\n" not in str(e) and path in str(e)
      outcomes["refused"] += 1
    else:
      # What the limits guarantee: a few times the storages' elements, plus the floor.
      assert all(v.dtype == np.float32 for v in got.values())
      assert sum(v.size for v in got.values()) <= torch_reader.TOTAL_ELEMENTS_FLOOR + 4 * 18
      outcomes["loaded"] += 1
  assert outcomes["refused"] > 50, outcomes


def test_torch_reader_fuzz_geometry(tmp_path):
  """Random offsets, shapes, strides and storage sizes: exact numpy views, or one-line refusals."""
  rng = np.random.default_rng(1)
  values = [-1, 0, 1, 2, 3, 5, 12, 2**31, 2**40]
  outcomes = {"loaded": 0, "refused": 0}
  for i in range(120):
    numel = int(rng.choice([0, 1, 12, 2**40]))
    ndim = int(rng.integers(0, 4))
    size = tuple(int(rng.choice(values)) for _ in range(ndim))
    stride = tuple(int(rng.choice(values)) for _ in range(ndim))
    offset = int(rng.choice(values))
    present = min(numel, 12) * 4 if rng.random() < 0.8 else 4 * 5
    storage = np.arange(present // 4, dtype="<f4")
    path = torch_zip(tmp_path / f"g{i}.pt",
                     tensor_pickle({"w": ("0", numel, offset, size, stride)}),
                     {"0": storage.tobytes()})
    try:
      got = torch_reader.read_torch_state_dict(path)["w"]
    except UntrustedFileError as e:
      assert "\n" not in str(e) and path in str(e)
      outcomes["refused"] += 1
    else:
      want = (np.zeros(size, np.float32) if not math.prod(size) else
              np.lib.stride_tricks.as_strided(storage[offset:], size, [4 * s for s in stride]))
      np.testing.assert_array_equal(got, want)
      outcomes["loaded"] += 1
  assert outcomes["loaded"] > 10 and outcomes["refused"] > 10, outcomes


def test_convert_command_prints_one_line_and_writes_nothing(tmp_path, capsys):
  bad = torch_zip(tmp_path / "bad.pt", tensor_pickle({"w": ("0", 1, 0, (20000, 20000), (0, 0))}),
                  {"0": bytes(4)})
  out = tmp_path / "out.safetensors"
  assert convert_bigvgan.main(["convert_bigvgan", bad, str(out)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and "bad.pt" in err
  assert not out.exists() and not list(tmp_path.glob(".*partial*"))


# ----------------------------------------------------------------------------- safetensors


def safetensors_file(path, header: dict, data: bytes = b"", length: int | None = None) -> str:
  raw = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
  return str(path)


def test_safetensors_readers_refuse_hostile_headers(tmp_path):
  # 1.25e9 float64 elements (10 GB): under the element limit, so refused for its offsets.
  ten_gb = {"w": {"dtype": "F64", "shape": [35355, 35355], "data_offsets": [0, 8 * 35355**2]}}
  cases = {
      "claims_10gb_header": safetensors_file(tmp_path / "h.safetensors", {}, length=10**10),
      "claims_10gb_tensor": safetensors_file(tmp_path / "t.safetensors", ten_gb, bytes(64)),
      "over_element_cap": safetensors_file(
          tmp_path / "c.safetensors",
          {"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 4]}}, bytes(4)),
      "shape_vs_bytes": safetensors_file(
          tmp_path / "s.safetensors",
          {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)),
      "overlap": safetensors_file(
          tmp_path / "o.safetensors",
          {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
      "bad_dtype": safetensors_file(
          tmp_path / "d.safetensors",
          {"w": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)),
      "not_json": str(tmp_path / "j.safetensors"),
      "random": str(tmp_path / "r.safetensors"),
      "short": str(tmp_path / "x.safetensors"),
  }
  with open(cases["not_json"], "wb") as f:
    f.write(struct.pack("<Q", 5) + b"{{{{{")
  with open(cases["random"], "wb") as f:
    f.write(noise(4096))
  with open(cases["short"], "wb") as f:
    f.write(b"\x01\x02")
  for name, path in cases.items():
    for load in (bigvgan_checkpoint.load_bigvgan, wav2vec2_checkpoint.load_wav2vec2,
                 asr.load_asr):
      refused(lambda: load(path), UntrustedFileError, path)
  msg = refused(lambda: safe_files.load_safetensors(cases["claims_10gb_header"]),
                UntrustedFileError, cases["claims_10gb_header"])
  assert "10000000000" in msg
  # A valid file still loads, through the same checks.
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float16)}
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(arrays, str(tmp_path / "ok.safetensors"))
  got = safe_files.load_safetensors(str(tmp_path / "ok.safetensors"))
  for k, v in arrays.items():
    np.testing.assert_array_equal(got[k], v)


# ----------------------------------------------------------------------------- npz


class _Evil:

  def __reduce__(self):
    return (os.system, ("touch pwned_marker",))


def test_npz_readers_refuse_objects_bombs_and_garbage(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  objects = tmp_path / "objects.npz"
  np.savez(objects, matrix=np.array([_Evil()], dtype=object))
  msg = refused(lambda: bigvgan_checkpoint.load_bigvgan(str(objects)), UntrustedFileError, objects)
  assert "Python objects" in msg
  refused(lambda: face_rig.FaceRig.load(objects), ValueError, objects)
  assert not (tmp_path / "pwned_marker").exists()

  bomb = tmp_path / "bomb.npz"
  header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.float64))
  header["shape"] = (8 * 2**20,)
  with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    zeros_member(zf, "matrix.npy", len(buf.getvalue()) + 64 * 2**20, prefix=buf.getvalue())
  assert "bomb" in refused(lambda: bigvgan_checkpoint.load_bigvgan(str(bomb)), UntrustedFileError,
                           bomb)
  assert "limit" in refused(lambda: face_rig.FaceRig.load(bomb), ValueError, bomb)

  # A .npy header claiming far more than its member holds.
  lying = tmp_path / "lying.npz"
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                             "shape": (2**30,)})
  with zipfile.ZipFile(lying, "w") as zf:
    zf.writestr("matrix.npy", buf.getvalue() + bytes(64))
  assert "'matrix'" in refused(lambda: bigvgan_checkpoint.load_bigvgan(str(lying)),
                               UntrustedFileError, lying)
  refused(lambda: face_rig.FaceRig.load(lying), ValueError, lying)

  garbage = tmp_path / "garbage.npz"
  for data in (noise(3000), b"PK\x03\x04" + noise(3000), pickle.dumps(_Evil())):
    garbage.write_bytes(data)
    refused(lambda: bigvgan_checkpoint.load_bigvgan(str(garbage)), UntrustedFileError, garbage)
    refused(lambda: face_rig.FaceRig.load(garbage), ValueError, garbage)
  assert not (tmp_path / "pwned_marker").exists()

  big = tmp_path / "big.npz"
  with open(big, "wb") as f:
    f.truncate(face_rig.MAX_RIG_BYTES + 1)
  assert "limit" in refused(lambda: face_rig.FaceRig.load(big), ValueError, big)
  # A real rig and a plain npz still load.
  face_rig.FaceRig.create(seed=1).save(tmp_path / "rig.npz")
  face_rig.FaceRig.load(tmp_path / "rig.npz")
  np.savez(tmp_path / "w.npz", a=np.arange(5.0))
  np.testing.assert_array_equal(safe_files.load_npz(str(tmp_path / "w.npz"))["a"],
                                np.arange(5.0))


# ----------------------------------------------------------------------------- wav


def wav_header(channels: int, rate: int, data_bytes: int, bits: int = 16) -> bytes:
  block = channels * bits // 8
  fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
  return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt "
          + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data_bytes))


def test_read_wav_refuses_long_wide_and_garbage_headers(tmp_path):
  ten_hours = tmp_path / "ten_hours.wav"
  ten_hours.write_bytes(wav_header(1, 16000, 10 * 3600 * 16000 * 2) + bytes(1000))
  refused(lambda: audio.read_wav(str(ten_hours)), BadInput, ten_hours)
  # Ten hours that are really declared by the header (1 Hz): refused before decoding.
  slow = tmp_path / "slow.wav"
  slow.write_bytes(wav_header(1, 1, 36000 * 2) + bytes(36000 * 2))
  assert "limit" in refused(lambda: audio.read_wav(str(slow)), BadInput, slow)
  ok = tmp_path / "ok.wav"
  ok.write_bytes(wav_header(1, 16000, 3200) + np.full(1600, 1000, "<i2").tobytes())
  assert audio.read_wav(str(ok))[0].shape == (1600, 1)
  assert "over the limit of 0.05 s" in refused(lambda: audio.read_wav(str(ok), max_seconds=0.05),
                                            BadInput, ok)
  wide = tmp_path / "wide.wav"
  wide.write_bytes(wav_header(200, 16000, 400 * 10) + bytes(400 * 10))
  refused(lambda: audio.read_wav(str(wide), channels=tuple(range(1, 300))), BadInput, wide)
  fast = tmp_path / "fast.wav"
  fast.write_bytes(wav_header(1, 10**7, 200) + bytes(200))
  refused(lambda: audio.read_wav(str(fast)), BadInput, fast)
  garbage = tmp_path / "garbage.wav"
  for data in (noise(2000), wav_header(1, 16000, 100)[:30], b"RIFF" + noise(100)):
    garbage.write_bytes(data)
    refused(lambda: audio.read_wav(str(garbage)), BadInput, garbage)


# ----------------------------------------------------------------------------- JSON


def test_manifest_and_configs_refuse_oversized_and_malformed_json(tmp_path):
  path = tmp_path / "manifest.json"
  with open(path, "wb") as f:  # sparse: over the limit on disk, nothing to read in memory
    f.write(b"{")
    f.truncate(safe_files.MAX_JSON_BYTES + 1)
  assert "limit" in refused(lambda: manifest_lib.load_manifest(str(tmp_path)), ValueError, path)
  path.write_text(json.dumps({"dims": {}, "splits": {}, "stats": {}}) + " " * 1000)
  assert "limit of 100" in refused(
      lambda: manifest_lib.load_manifest(str(tmp_path), max_bytes=100), ValueError, path)
  for data in (noise(3000), b"[" * 200_000, b"[1, 2, 3]", b"\xff\xfe{}"):
    path.write_bytes(data)
    refused(lambda: manifest_lib.load_manifest(str(tmp_path)), ValueError, path)
  # The weights loaders' config.json goes through the same reader.
  cfg = tmp_path / "config.json"
  cfg.write_bytes(b"[" * 200_000)
  refused(lambda: bigvgan_checkpoint.config_from_json(str(cfg)), ValueError, cfg)
  weights = safetensors_file(tmp_path / "model.safetensors", {})
  refused(lambda: wav2vec2_checkpoint.load_wav2vec2(weights), ValueError, cfg)
