r"""Converts an official BigVGAN `bigvgan_generator.pt` into `.safetensors` / `.npz`, without torch.

  python -m avflow_jax.convert_bigvgan bigvgan_generator.pt out.safetensors

A torch zip checkpoint is `<dir>/data.pkl` plus raw little-endian storages `<dir>/data/<key>`.
The pickle is read by a restricted unpickler that only resolves the few globals a plain tensor
state dict needs (tensor rebuild, float storages, OrderedDict); anything else (e.g. `os.system`)
raises before it can run. Tensors are rebuilt from the raw storages with numpy.
A `config.json` next to the input is copied next to the output, where `load_bigvgan` reads it.
"""

import collections
import io
import os
import pickle
import shutil
import zipfile

from absl import app
from absl import logging
import numpy as np

from avflow_jax.core import files

# Storage class name -> numpy dtype of its little-endian bytes (bfloat16 is read as uint16).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
}


class _StorageType:
  """Stand-in for torch.<X>Storage: only remembers which dtype the raw bytes hold."""

  def __init__(self, name: str):
    self.name = name


class _Storage:
  """A flat numpy view of one storage blob."""

  def __init__(self, data: np.ndarray, name: str):
    self.data = data
    self.name = name


def _bf16_to_f32(u16: np.ndarray) -> np.ndarray:
  return (u16.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """numpy equivalent of torch._utils._rebuild_tensor_v2 (strided view, then a copy)."""
  del requires_grad, backward_hooks, metadata  # irrelevant for inference weights
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or any(s < 0 for s in size + stride) or storage_offset < 0:
    raise pickle.UnpicklingError(f"bad tensor geometry size={size} stride={stride}")
  flat = storage.data
  if all(size):
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
      raise pickle.UnpicklingError(
          f"tensor (offset {storage_offset}, size {size}, stride {stride}) overruns storage "
          f"{storage.name} of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[storage_offset:], shape=size, strides=[s * flat.itemsize for s in stride],
        writeable=False)
    out = np.array(view)
  else:
    out = np.zeros(size, flat.dtype)
  if out.dtype == np.uint16:
    out = _bf16_to_f32(out)
  return out.astype(np.float32)


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler for torch tensor state dicts that resolves no other globals."""

  _ALLOWED = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("collections", "OrderedDict"): collections.OrderedDict,
  }

  def __init__(self, fileobj, zf: zipfile.ZipFile, prefix: str, src: str):
    super().__init__(fileobj)
    self._zf = zf
    self._prefix = prefix
    self._src = src
    self._cache = {}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"{self._src}: refusing to load global {module}.{name} (only tensor state dicts are "
        "allowed)")

  def persistent_load(self, pid):
    # torch.save writes ('storage', storage_type, key, location, numel).
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{self._src}: unsupported persistent id {pid!r}")
    stype, key, numel = pid[1], str(pid[2]), int(pid[4])
    if not isinstance(stype, _StorageType):
      raise pickle.UnpicklingError(f"{self._src}: storage of unsupported type {stype!r}")
    if key not in self._cache:
      dtype = _STORAGE_DTYPES[stype.name]
      try:
        raw = self._zf.read(f"{self._prefix}data/{key}")
      except KeyError as e:
        raise pickle.UnpicklingError(f"{self._src}: storage {key} missing from the archive") from e
      if len(raw) < numel * dtype.itemsize:
        raise pickle.UnpicklingError(f"{self._src}: storage {key} has {len(raw)} bytes, "
                                     f"expected {numel * dtype.itemsize}")
      self._cache[key] = _Storage(np.frombuffer(raw, dtype, count=numel), key)
    return self._cache[key]


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads tensors from a torch zip checkpoint without torch.

  Args:
    path: a `torch.save` file (zip format, torch >= 1.6) holding a state dict or
      {"generator": state_dict}.

  Returns:
    key -> float32 numpy array.

  Raises:
    ValueError: not a torch zip checkpoint, big-endian, or not a flat tensor dict.
    pickle.UnpicklingError: the pickle references a class outside the allow-list.
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not a torch zip checkpoint (legacy torch.save format is not "
                     "supported; re-save it with torch >= 1.6)")
  with zipfile.ZipFile(path) as zf:
    pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise ValueError(f"{path}: expected one <dir>/data.pkl in the archive, found {pkls}")
    prefix = pkls[0][:-len("data.pkl")]
    if f"{prefix}byteorder" in zf.namelist():
      order = zf.read(f"{prefix}byteorder").decode().strip()
      if order != "little":
        raise ValueError(f"{path}: byteorder {order!r} is not supported")
    obj = RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), zf, prefix, path).load()
  if isinstance(obj, dict) and "generator" in obj:
    obj = obj["generator"]
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f"{path}: expected a dict of tensors (or {{'generator': ...}})")
  return {str(k): v for k, v in obj.items()}


def save_arrays(arrays: dict[str, np.ndarray], out_path: str) -> None:
  """Writes `arrays` to `.safetensors` or `.npz` (written to a temp name, then renamed)."""
  arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
  if not out_path.endswith((".safetensors", ".npz")):
    raise ValueError(f"{out_path}: output must end with .safetensors or .npz")
  with files.atomic_path(out_path) as tmp:
    if out_path.endswith(".safetensors"):
      from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
      save_file(arrays, tmp)
    else:
      with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def convert(pt_path: str, out_path: str) -> dict[str, np.ndarray]:
  """Converts `pt_path` to `out_path`, copies a sibling config.json, and checks the keys."""
  arrays = read_torch_state_dict(pt_path)
  out_dir = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(out_dir, exist_ok=True)
  save_arrays(arrays, out_path)
  logging.info("wrote %d tensors (%.2f M values) to %s", len(arrays),
               sum(v.size for v in arrays.values()) / 1e6, out_path)
  src_cfg = os.path.join(os.path.dirname(os.path.abspath(pt_path)), "config.json")
  dst_cfg = os.path.join(out_dir, "config.json")
  if os.path.exists(src_cfg) and not os.path.exists(dst_cfg):
    shutil.copyfile(src_cfg, dst_cfg)
    logging.info("copied %s to %s", src_cfg, dst_cfg)
  from avflow_jax.models import bigvgan  # pylint: disable=g-import-not-at-top
  try:
    config, params = bigvgan.load_bigvgan(out_path)
    logging.info("checked: %s loads as BigVGAN (%.2f M params, upsample %s)", out_path,
                 bigvgan.num_params(params) / 1e6, config.upsample_rates)
  except (KeyError, ValueError) as e:
    logging.warning("%s was written but does not load as a BigVGAN generator: %s", out_path, e)
  return arrays


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: python -m avflow_jax.convert_bigvgan IN.pt OUT.safetensors|npz")
  convert(argv[1], argv[2])


if __name__ == "__main__":
  app.run(main)
