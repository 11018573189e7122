"""Reads tensors from a torch zip checkpoint (`torch.save`, torch >= 1.6) without torch.

A checkpoint is `<dir>/data.pkl` plus raw little-endian storages `<dir>/data/<key>`. The pickle
is read by a restricted unpickler that only resolves the few globals a plain tensor state dict
needs (tensor rebuild, float storages, OrderedDict); anything else (e.g. `os.system`) is refused
by name before it can run.

Nothing is allocated from what the pickle claims. Unpickling only records, per tensor, its
storage, offset, shape and stride, and per storage, its declared element count (checked against
the zip member's declared size). Then every tensor's geometry is checked against its storage and
the limits below, and only then are the storages the tensors use read (each zip member bounded
by its declared size, see `core/safe_files.py`) and the tensors copied out with numpy.
"""

import collections
import io
import math
import os
import pickle
import pickletools
from typing import Any, NamedTuple
import zipfile

import numpy as np

from avflow_jax.core import safe_files
from avflow_jax.core.safe_files import MAX_TENSOR_ELEMENTS
from avflow_jax.core.safe_files import MAX_ZIP_RATIO
from avflow_jax.core.safe_files import UntrustedFileError

# data.pkl of a state dict takes ~100 bytes per tensor; 16 MiB is >100k tensors, and bounds
# the Python objects a hostile pickle can build (memo references cost 2 bytes each).
MAX_PICKLE_BYTES = 16 * 2**20
# The tensors of a checkpoint may hold more elements than its storages (views sharing one
# storage, tied weights, stride-0 expansions), but a state dict does not hold many times more:
# the default total is this many times the elements of the storages the tensors use ...
TOTAL_ELEMENTS_PER_STORAGE_ELEMENT = 4
# ... plus this floor (64 MiB of float32), so small checkpoints with expanded views still load.
# The reproduced attack (one 4-byte storage viewed as 20000 x 20000 with stride 0) is 4e8.
TOTAL_ELEMENTS_FLOOR = 2**24

# Storage class name -> numpy dtype of its little-endian bytes (bfloat16 is read as uint16).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
}


class RefusedGlobalError(UntrustedFileError, pickle.UnpicklingError):
  """The pickle names a global outside the allow-list (also a pickle.UnpicklingError)."""


# Tuples, so a pickle's BUILD opcode cannot set attributes on them.
class _StorageType(NamedTuple):
  """Stand-in for torch.<X>Storage: only remembers which dtype the raw bytes hold."""
  name: str


class _StorageRef(NamedTuple):
  """A storage the pickle references: its zip member and element count, not yet read."""
  key: str
  dtype: np.dtype
  numel: int


class _TensorSpec(NamedTuple):
  """A tensor as `_rebuild_tensor_v2` describes it, before any of it is read."""
  storage: Any
  offset: Any
  size: Any
  stride: Any


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """Stands in for torch._utils._rebuild_tensor_v2: records the geometry, checked later."""
  del requires_grad, backward_hooks, metadata  # irrelevant for inference weights
  return _TensorSpec(storage, storage_offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler for torch tensor state dicts that resolves no other globals.

  Storages are checked against their zip members' declared sizes here, but not read.
  """

  _ALLOWED = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("collections", "OrderedDict"): collections.OrderedDict,
  }

  def __init__(self, fileobj, zf: zipfile.ZipFile, prefix: str, src: str, *,
               max_storage_elements: int = MAX_TENSOR_ELEMENTS,
               max_ratio: float = MAX_ZIP_RATIO):
    super().__init__(fileobj)
    self._zf = zf
    self._prefix = prefix
    self._src = src
    self._archive_bytes = os.path.getsize(src)
    self._max_storage_elements = max_storage_elements
    self._max_ratio = max_ratio
    self.storages: dict[str, _StorageRef] = {}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise RefusedGlobalError(safe_files.one_line(
        f"{self._src}: refusing to load global {module}.{name} (only tensor state dicts are "
        "allowed)"))

  def persistent_load(self, pid):
    # torch.save writes ('storage', storage_type, key, location, numel).
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise safe_files.error(self._src, f"unsupported persistent id {pid!r:.200}")
    stype, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(stype, _StorageType) or stype.name not in _STORAGE_DTYPES:
      raise safe_files.error(self._src, f"storage of unsupported type {stype!r:.100}")
    if not (isinstance(key, (str, int)) and not isinstance(key, bool)
            and isinstance(numel, int) and not isinstance(numel, bool) and numel >= 0):
      raise safe_files.error(self._src, f"malformed storage id {pid!r:.200}")
    if numel > self._max_storage_elements:
      raise safe_files.error(self._src, f"storage {key} has {numel} elements, over the limit "
                             f"of {self._max_storage_elements}")
    key, dtype = str(key), _STORAGE_DTYPES[stype.name]
    ref = _StorageRef(key, dtype, numel)
    if key in self.storages:
      if self.storages[key] != ref:
        raise safe_files.error(self._src, f"storage {key} is referenced with two types or "
                               "sizes")
      return ref
    member = f"{self._prefix}data/{key}"
    try:
      info = self._zf.getinfo(member)
    except KeyError as e:
      raise safe_files.error(self._src, f"storage {key} missing from the archive") from e
    # The zip member's declared size must be what the pickle's element count needs: only then
    # do later reads (bounded by the declared size) give exactly the bytes the tensors index.
    if info.file_size != numel * dtype.itemsize:
      raise safe_files.error(self._src, f"storage {key} declares {info.file_size} bytes, its "
                             f"{numel} {stype.name} elements need {numel * dtype.itemsize}")
    safe_files.check_zip_member(self._src, info, archive_bytes=self._archive_bytes,
                                max_ratio=self._max_ratio)
    self.storages[key] = ref
    return ref


def _check_geometry(src: str, key: str, spec: _TensorSpec, max_elements: int) -> int:
  """Element count of `spec` after checking it lies inside its storage; raises otherwise."""
  if not isinstance(spec.storage, _StorageRef):
    raise safe_files.error(src, f"tensor {key!r} is rebuilt from something that is not a "
                           "storage")
  size, stride, offset = spec.size, spec.stride, spec.offset
  n = safe_files.check_shape(src, key, size, max_elements=max_elements)
  if not (isinstance(stride, (tuple, list)) and len(stride) == len(size)
          and all(isinstance(s, int) and not isinstance(s, bool) for s in stride)
          and isinstance(offset, int) and not isinstance(offset, bool)):
    raise safe_files.error(src, f"tensor {key!r} has malformed geometry (offset "
                           f"{offset!r:.50}, size {size!r:.100}, stride {stride!r:.100})")
  # torch never saves negative strides or offsets; numpy would read before the storage.
  if offset < 0 or any(s < 0 for s in stride):
    raise safe_files.error(src, f"tensor {key!r}: negative offset or stride (offset {offset}, "
                           f"stride {tuple(stride)})")
  if n:
    extent = offset + sum((d - 1) * s for d, s in zip(size, stride)) + 1
    if extent > spec.storage.numel:
      raise safe_files.error(
          src, f"tensor {key!r} (offset {offset}, size {tuple(size)}, stride {tuple(stride)}) "
          f"reaches element {extent - 1} of storage {spec.storage.key}, which has "
          f"{spec.storage.numel}")
  return n


def _materialise(spec: _TensorSpec, flat: np.ndarray) -> np.ndarray:
  """Copies the strided view `spec` of `flat` (checked by `_check_geometry`) as float32."""
  size = tuple(spec.size)
  if not math.prod(size):
    return np.zeros(size, np.float32)
  view = np.lib.stride_tricks.as_strided(
      flat[spec.offset:], shape=size, strides=[s * flat.itemsize for s in spec.stride],
      writeable=False)
  if flat.dtype == np.uint16:  # bfloat16: its 16 bits are the top half of a float32.
    return (view.astype(np.uint32) << 16).view(np.float32)
  return np.array(view, dtype=np.float32)


def _check_opcodes(path: str, name: str, data: bytes) -> None:
  """Walks the pickle's opcodes without running them; refuses a malformed or truncated one.

  The unpickler allocates a counted bytes or string object at its declared length before it
  reads it, so a 20-byte pickle could make it allocate 4 GiB; pickletools reads each object's
  bytes first and fails when fewer remain than declared.
  """
  try:
    for _ in pickletools.genops(data):
      pass
  except Exception as e:  # pylint: disable=broad-except  (ValueError mostly; any is malformed)
    raise safe_files.error(path, f"malformed {name} ({type(e).__name__}: {e})") from e


def read_torch_state_dict(path: str, *, max_tensor_elements: int = MAX_TENSOR_ELEMENTS,
                          max_total_elements: int | None = None,
                          max_pickle_bytes: int = MAX_PICKLE_BYTES,
                          max_ratio: float = MAX_ZIP_RATIO) -> dict[str, np.ndarray]:
  """Reads tensors from a torch zip checkpoint without torch.

  Args:
    path: a `torch.save` file (zip format, torch >= 1.6) holding a state dict or
      {"generator": state_dict}.
    max_tensor_elements: the largest element count of one tensor, and of one storage.
    max_total_elements: the largest element count of all tensors together; by default
      TOTAL_ELEMENTS_PER_STORAGE_ELEMENT times the elements of the storages they use, plus
      TOTAL_ELEMENTS_FLOOR.
    max_pickle_bytes: the largest `data.pkl` accepted.
    max_ratio: the largest compression ratio of a zip member (deflate bombs).

  Returns:
    key -> float32 numpy array.

  Raises:
    FileNotFoundError: no file at `path`.
    RefusedGlobalError: the pickle names a global outside the allow-list (an
      UntrustedFileError and a pickle.UnpicklingError).
    UntrustedFileError: (a ValueError) with one line naming the file, and the tensor where
      there is one: not a torch zip checkpoint, big-endian, not a flat tensor dict, a tensor
      outside its storage or over a limit, a corrupt or oversized member.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"torch checkpoint not found: {path}")
  if not zipfile.is_zipfile(path):
    raise safe_files.error(path, "not a torch zip checkpoint (truncated, or the legacy "
                           "torch.save format, which is not supported; re-save it with "
                           "torch >= 1.6)")
  with safe_files.open_zip(path, "torch zip checkpoint") as zf:
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise safe_files.error(path, f"expected one <dir>/data.pkl in the archive, found "
                             f"{pkls[:4]}")
    prefix = pkls[0][:-len("data.pkl")]
    if f"{prefix}byteorder" in names:
      order = safe_files.read_zip_member(path, zf, f"{prefix}byteorder", max_bytes=16)
      if order.strip() != b"little":
        raise safe_files.error(path, f"byteorder {order[:16]!r} is not supported")
    data = safe_files.read_zip_member(path, zf, pkls[0], max_bytes=max_pickle_bytes,
                                      max_ratio=max_ratio)
    _check_opcodes(path, pkls[0], data)
    unpickler = RestrictedUnpickler(io.BytesIO(data), zf, prefix, path,
                                    max_storage_elements=max_tensor_elements,
                                    max_ratio=max_ratio)
    try:
      obj = unpickler.load()
    except UntrustedFileError:
      raise
    # A malformed pickle raises any type (EOFError, KeyError on a bad memo, TypeError, ...).
    except Exception as e:  # pylint: disable=broad-except
      raise safe_files.error(path, f"malformed {pkls[0]} ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and "generator" in obj:
      obj = obj["generator"]
    if not isinstance(obj, dict) or not all(isinstance(v, _TensorSpec) for v in obj.values()):
      raise safe_files.error(path, "expected a dict of tensors (or {'generator': ...})")
    specs = {str(k): v for k, v in obj.items()}
    if len(specs) != len(obj):  # e.g. keys 1 and "1": one would silently replace the other.
      raise safe_files.error(path, "two tensor keys have the same name")
    counts = {k: _check_geometry(path, k, s, max_tensor_elements) for k, s in specs.items()}
    used = {s.storage.key: s.storage for s in specs.values()}
    if max_total_elements is None:
      max_total_elements = (TOTAL_ELEMENTS_PER_STORAGE_ELEMENT
                            * sum(r.numel for r in used.values()) + TOTAL_ELEMENTS_FLOOR)
    if sum(counts.values()) > max_total_elements:
      biggest = max(counts, key=counts.get)
      raise safe_files.error(path, f"tensors hold {sum(counts.values())} elements in all, over "
                             f"the limit of {max_total_elements} (largest: tensor {biggest!r}, "
                             f"{counts[biggest]} elements)")
    # Each storage is read when its first tensor needs it and dropped after its last one.
    uses = collections.Counter(s.storage.key for s in specs.values())
    flats, out = {}, {}
    for k, spec in specs.items():
      ref = spec.storage
      if ref.key not in flats:
        raw = safe_files.read_zip_member(path, zf, f"{prefix}data/{ref.key}",
                                         max_bytes=ref.numel * ref.dtype.itemsize,
                                         max_ratio=max_ratio)
        flats[ref.key] = np.frombuffer(raw, ref.dtype, count=ref.numel)
      out[k] = _materialise(spec, flats[ref.key])
      uses[ref.key] -= 1
      if not uses[ref.key]:
        del flats[ref.key]
  return out
