"""Nested torch checkpoints without torch: `read_torch_checkpoint` and `write_torch_checkpoint`.

The official AV-Flow files (weights, Adam moments, iteration) read as torch.load reads them;
a weights-only read never touches the optimizer's storages; the writer's files read back
bit-exactly here and in torch (weights_only too), with torch's member layout and alignment; a
failed write leaves nothing; hostile pickles stay refused with the key path named.
"""

import collections
import os
import pathlib
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest

from avflow_jax.core import safe_files
from avflow_jax.core import torch_pickle
from avflow_jax.core import torch_reader
from avflow_jax.core.safe_files import UntrustedFileError
from avflow_jax.core.torch_reader import TensorInfo
from avflow_jax.core.torch_reader import read_torch_checkpoint
from avflow_jax.core.torch_writer import write_torch_checkpoint

_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL = next((p for p in (_ROOT / "shared/fixtures/official",
                             _ROOT.parent / "shared/fixtures/official") if p.is_dir()), None)


def official(name: str) -> str:
  if OFFICIAL is None:
    pytest.skip("the official fixtures (shared/fixtures/official) are not here")
  return str(OFFICIAL / name)


def assert_same(ours, ref, where=()):
  """`ours` (this reader's output) equals `ref` (torch.load's, or numpy / Python values), exactly.

  Arrays: same shape, dtype (float32 for float tensors, int64 for integer ones) and bytes;
  dicts (any OrderedDict in `ref`) are plain dicts with the same keys in the same order; tuples
  stay tuples.
  """
  if type(ref).__module__.startswith("torch"):  # a tensor (torch is imported when there is one)
    torch = sys.modules["torch"]
    ref = (ref.numpy() if ref.dtype == torch.bool else ref.float().numpy()
           if ref.is_floating_point() else ref.long().numpy())
  if isinstance(ref, np.ndarray):
    assert isinstance(ours, np.ndarray), where
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (where, ours.dtype, ref.dtype)
    assert ours.tobytes() == np.ascontiguousarray(ref).tobytes(), where
  elif isinstance(ref, dict):
    assert type(ours) is dict and list(ours) == list(ref), where
    for k in ref:
      assert_same(ours[k], ref[k], where + (k,))
  elif isinstance(ref, (list, tuple)):
    assert type(ours) is type(ref) and len(ours) == len(ref), where
    for i, (a, b) in enumerate(zip(ours, ref)):
      assert_same(a, b, where + (i,))
  else:
    assert type(ours) is type(ref) and ours == ref, (where, ours, ref)


# ----------------------------------------------------------------------------- official files


@pytest.mark.parametrize("name,iteration,n_model,n_state", [
    ("av_flow_small.pt", 1_000_000, 90, 0),
    ("av_flow_small_dyadic.pt", 1_000_000, 90, 0),
    ("head_vae_iter-0500000.pt", 500_000, 34, 34),
    ("text_to_tokens_small.pth", None, 241, None),
])
def test_official_files_read_as_torch_loads_them(name, iteration, n_model, n_state):
  path = official(name)
  got = read_torch_checkpoint(path)
  if iteration is None:  # the text-to-tokens file is a plain state dict with 0-d buffers
    assert len(got) == n_model and got["mean"].shape == got["std"].shape == ()
    assert abs(float(got["mean"]) + 2.8461) < 1e-4
    assert_same(got, torch_reader.read_torch_state_dict(path))
  else:
    assert list(got) == ["iteration", "model_state_dict", "optimizer_state_dict"]
    assert got["iteration"] == iteration and len(got["model_state_dict"]) == n_model
    opt = got["optimizer_state_dict"]
    assert len(opt["state"]) == n_state and len(opt["param_groups"]) == 1
    group = opt["param_groups"][0]
    assert group["betas"] == (0.9, 0.98) and group["foreach"] is None
    assert group["params"] == list(range(n_model))
    weights = list(got["model_state_dict"].values())
    for i, s in opt["state"].items():  # populated Adam state: a 0-d step and two moments
      assert s["step"].shape == () and s["exp_avg"].shape == weights[i].shape
  torch = pytest.importorskip("torch")
  assert_same(got, torch.load(path, map_location="cpu", weights_only=True))


def test_lazy_read_never_touches_unselected_storages(tmp_path, monkeypatch):
  path = official("head_vae_iter-0500000.pt")
  read = []
  real = safe_files.read_zip_member
  monkeypatch.setattr(safe_files, "read_zip_member",
                      lambda p, zf, name, **kw: read.append(name) or real(p, zf, name, **kw))
  got = read_torch_checkpoint(path, load=lambda kp: kp[0] == "model_state_dict")
  weights = got["model_state_dict"]
  assert all(isinstance(w, np.ndarray) for w in weights.values())
  assert len([n for n in read if "/data/" in n]) == len(weights) == 34
  shapes = [w.shape for w in weights.values()]
  for i, s in got["optimizer_state_dict"]["state"].items():
    assert s == {"step": TensorInfo((), "float32"), "exp_avg": TensorInfo(shapes[i], "float32"),
                 "exp_avg_sq": TensorInfo(shapes[i], "float32")}
  # The same with an optimizer storage corrupted: only a read that wants it fails.
  unread = max((n for n in zipfile.ZipFile(path).namelist() if "/data/" in n),
               key=lambda n: int(n.rsplit("/", 1)[1]))
  assert unread not in read
  raw = bytearray(open(path, "rb").read())
  info = zipfile.ZipFile(path).getinfo(unread)
  n, m = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
  raw[info.header_offset + 30 + n + m] ^= 0xFF
  bad = tmp_path / "corrupt.pt"
  bad.write_bytes(bytes(raw))
  lazy = read_torch_checkpoint(str(bad), load=lambda kp: kp[0] == "model_state_dict")
  assert_same(lazy["model_state_dict"], weights)
  with pytest.raises(UntrustedFileError, match=f"corrupt.pt.*{unread}.*corrupt"):
    read_torch_checkpoint(str(bad))


# ----------------------------------------------------------------------------- writer


def sample_checkpoint():
  """An official-shaped checkpoint, with the edge cases: NaN, -0.0, 0-d, empty, views, ints."""
  w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
  w[0, :2] = np.nan, -0.0
  model = collections.OrderedDict([("enc.weight", w), ("enc.bias", np.zeros(3, np.float32)),
                                   ("mean", np.array(-2.8461, np.float32)),
                                   ("empty", np.zeros((3, 0), np.float32))])
  state = {0: {"step": np.array(1.0, np.float32), "exp_avg": w.T, "exp_avg_sq": w[1:] ** 2}}
  group = {"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-9, "amsgrad": False, "foreach": None,
           "params": [0, 1, 2, 3]}
  misc = [(), (1,), ("ünï", 2**70, -2**40, 70000, -1, True), [], {}, np.arange(3) - 1,
          np.array([True, False])]
  return {"iteration": 500000, "model_state_dict": model,
          "optimizer_state_dict": {"state": state, "param_groups": [group]}, "misc": misc}


def local_data_offsets(path) -> dict:
  raw = open(path, "rb").read()
  out = {}
  for info in zipfile.ZipFile(path).infolist():
    n, m = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    out[info.filename] = info.header_offset + 30 + n + m
  return out


def test_writer_round_trips_here_and_in_torch(tmp_path):
  obj = sample_checkpoint()
  path = str(tmp_path / "iter-0500000.pt")
  write_torch_checkpoint(path, obj)
  assert_same(read_torch_checkpoint(path), obj)
  offsets = local_data_offsets(path)
  assert list(offsets) == [f"iter-0500000/{n}" for n in (
      "data.pkl", ".format_version", ".storage_alignment", "byteorder",
      *(f"data/{i}" for i in range(9)), "version")]
  assert all(o % 64 == 0 for o in offsets.values()), offsets
  named = str(tmp_path / "named.pt")
  write_torch_checkpoint(named, [np.ones(2)], archive_name="archive")  # float64 -> float32
  assert_same(read_torch_checkpoint(named), [np.ones(2, np.float32)])
  assert zipfile.ZipFile(named).namelist()[0] == "archive/data.pkl"

  torch = pytest.importorskip("torch")
  for weights_only in (True, False):
    back = torch.load(path, weights_only=weights_only)
    assert_same(read_torch_checkpoint(path), back)
    assert type(back) is collections.OrderedDict
    assert back["model_state_dict"]["enc.weight"].type() == "torch.FloatTensor"
    assert back["misc"][5].dtype == torch.int64 and back["misc"][6].dtype == torch.bool
  # And torch's own files, with what torch adds: views sharing a storage, a tied tensor, half,
  # bfloat16 and int32 storages, an OrderedDict's _metadata attribute.
  base = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
  sd = collections.OrderedDict(t=base.t(), s=base[2:, 1:4], h=base[0].half(),
                               bf=base[1].bfloat16(), i=torch.arange(4, dtype=torch.int32))
  sd._metadata = {"": {"version": 1}}
  saved = {"sd": sd, "tied": [sd["t"], sd["t"]], "x": (None, 1.5, torch.tensor(7))}
  torch.save(saved, tmp_path / "torch.pt")
  got = read_torch_checkpoint(str(tmp_path / "torch.pt"))
  assert_same(got, saved)
  assert got["tied"][0] is got["tied"][1] is got["sd"]["t"]  # shared as torch shares it


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
  path = tmp_path / "ckpt.pt"
  write_torch_checkpoint(str(path), {"w": np.ones(3, np.float32)})
  before = path.read_bytes()
  for bad, words in [({"a": {"b": [1, {2, 3}]}}, ["['a']['b'][1]", "set"]),
                     ({"a": [np.array(["x"])]}, ["['a'][0]", "dtype <U1"]),
                     ({"a": {(1, 2): 0}}, ["['a']", "key"])]:
    with pytest.raises(ValueError) as info:
      write_torch_checkpoint(str(path), bad)
    assert all(w in str(info.value) for w in words), info.value
  real_open = zipfile.ZipFile.open

  def failing_open(self, name, mode="r", **kw):
    if mode == "w" and getattr(name, "filename", name).endswith("data/1"):
      raise OSError("disk full")
    return real_open(self, name, mode, **kw)

  monkeypatch.setattr(zipfile.ZipFile, "open", failing_open)
  two = {"a": np.zeros(2), "b": np.zeros(3)}
  for target in (path, tmp_path / "new.pt"):
    with pytest.raises(OSError, match="disk full"):
      write_torch_checkpoint(str(target), two)
  assert path.read_bytes() == before and not (tmp_path / "new.pt").exists()
  assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]  # no temporaries left


# ----------------------------------------------------------------------------- hostile files


def op(x) -> bytes:
  """Pickle opcodes pushing `x` (plain values), pickle's own."""
  return pickle.dumps(x, protocol=2)[2:-1]


def tensor_ops(numel, offset, size, stride, skey="0") -> bytes:
  pid = (b"(" + op("storage") + b"ctorch\nFloatStorage\n" + op(skey) + op("cuda:0")
         + op(numel) + b"tQ")
  return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + op(offset) + op(tuple(size))
          + op(tuple(stride)) + op(False) + b"tR")


def checkpoint_zip(path, value_ops: bytes, storages=None) -> str:
  """A zip whose data.pkl is {"model_state_dict": {"w": <value_ops>}}."""
  pkl = b"\x80\x02}(" + op("model_state_dict") + b"}(" + op("w") + value_ops + b"uu."
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", "little")
    for key, data in (storages or {"0": bytes(40)}).items():
      zf.writestr(f"archive/data/{key}", data)
  return str(path)


@pytest.mark.parametrize("case,value_ops,words", [
    ("outside", tensor_ops(10, 0, (4, 4), (4, 1)), ["reaches element 15"]),
    ("bytes", b"C\x03abc", ["value of type bytes"]),  # SHORT_BINBYTES (protocol 3)
    ("storage", b"(" + op("storage") + b"ctorch\nFloatStorage\n" + op("0") + op("cpu")
     + op(10) + b"tQ", ["bare storage"]),
    ("cycle", b"]q\x07h\x07a", ["contains itself"]),
    ("deep", b"]" * 100 + b"a" * 99, ["nested over 64"]),
    ("dict_key", b"}(" + op(1.5) + op(1) + b"u", ["dict key", "float"]),
], ids=lambda x: x if isinstance(x, str) else "")
def test_hostile_checkpoints_refused_with_key_path(tmp_path, case, value_ops, words):
  path = checkpoint_zip(tmp_path / f"{case}.pt", value_ops)
  # Refused whether or not the tensor is to be loaded: its geometry is checked either way.
  for load in (lambda kp: True, lambda kp: False):
    with pytest.raises(UntrustedFileError) as info:
      read_torch_checkpoint(path, load=load)
    msg = str(info.value)
    assert "\n" not in msg and f"{case}.pt" in msg and "['model_state_dict']['w']" in msg, msg
    assert all(w in msg for w in words), msg


def test_globals_outside_the_allow_list_refused_without_running(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  marker = tmp_path / "pwned_marker"
  path = checkpoint_zip(tmp_path / "evil.pt", b"]cos\nsystem\n" + op(f"touch {marker}")
                        + b"\x85Ra")
  with pytest.raises(torch_pickle.RefusedGlobalError, match="evil.pt.*os.system"):
    read_torch_checkpoint(path, load=lambda kp: False)
  assert not marker.exists()
  # A BUILD on the tensor stand-in cannot set attributes on the object every load shares.
  path = checkpoint_zip(tmp_path / "build.pt", b"ctorch._utils\n_rebuild_tensor_v2\n}("
                        + op("__defaults__") + op((True,)) + b"ub")
  with pytest.raises(UntrustedFileError, match="build.pt: malformed"):
    read_torch_checkpoint(path)
  assert not hasattr(torch_pickle._rebuild_tensor_v2, "__dict__")
