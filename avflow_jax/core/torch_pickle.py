"""The restricted unpickler of torch zip checkpoints: it builds stand-ins, never runs code.

A checkpoint (`torch.save`, torch >= 1.6) is a zip of `<dir>/data.pkl` plus raw little-endian
storages `<dir>/data/<key>`. `unpickled` opens the zip, checks its layout and byte order, walks
data.pkl's opcodes without running them, then unpickles it with `RestrictedUnpickler`, which
only resolves the few globals a checkpoint of tensors needs (tensor rebuild, storage classes,
OrderedDict); anything else (e.g. `os.system`) is refused by name before it can run.

Nothing is allocated from what the pickle claims: a tensor comes back as a `TensorSpec` (its
storage, offset, size and stride, unchecked) and a storage as a `StorageRef` (its zip member,
kind and element count, checked against the member's declared size, not read). Checking the
geometry and reading the storages is `core/torch_reader.py`'s part.
"""

import collections
import contextlib
import io
import os
import pickle
import pickletools
from typing import Any, Iterator, NamedTuple
import zipfile

import numpy as np

from avflow_jax.core import safe_files
from avflow_jax.core.safe_files import MAX_TENSOR_ELEMENTS
from avflow_jax.core.safe_files import MAX_ZIP_RATIO
from avflow_jax.core.safe_files import UntrustedFileError

# data.pkl of a state dict takes ~100 bytes per tensor; 16 MiB is >100k tensors, and bounds
# the Python objects a hostile pickle can build (memo references cost 2 bytes each).
MAX_PICKLE_BYTES = 16 * 2**20


class StorageKind(NamedTuple):
  """A torch storage class: its bytes' little-endian numpy dtype, torch's name, what it reads as."""
  raw: np.dtype
  dtype: str
  out: np.dtype


# Storage class name -> kind (bfloat16 is read as uint16, then widened to float32).
FLOAT_STORAGES = {
    "FloatStorage": StorageKind(np.dtype("<f4"), "float32", np.dtype(np.float32)),
    "HalfStorage": StorageKind(np.dtype("<f2"), "float16", np.dtype(np.float32)),
    "BFloat16Storage": StorageKind(np.dtype("<u2"), "bfloat16", np.dtype(np.float32)),
}
# Training checkpoints may also hold integer and bool tensors (BatchNorm's num_batches_tracked,
# older optimizers' step counts, masks); they keep their integer / bool meaning.
CHECKPOINT_STORAGES = {
    **FLOAT_STORAGES,
    "LongStorage": StorageKind(np.dtype("<i8"), "int64", np.dtype(np.int64)),
    "IntStorage": StorageKind(np.dtype("<i4"), "int32", np.dtype(np.int64)),
    "BoolStorage": StorageKind(np.dtype("u1"), "bool", np.dtype(bool)),
}


class RefusedGlobalError(UntrustedFileError, pickle.UnpicklingError):
  """The pickle names a global outside the allow-list (also a pickle.UnpicklingError)."""


# Tuples, so a pickle's BUILD opcode cannot set attributes on them.
class StorageType(NamedTuple):
  """Stand-in for torch.<X>Storage: only remembers which storage class the pickle named."""
  name: str


class StorageRef(NamedTuple):
  """A storage the pickle references: its zip member, kind and element count, not yet read."""
  key: str
  kind: StorageKind
  numel: int


class TensorSpec(NamedTuple):
  """A tensor as `_rebuild_tensor_v2` describes it, before any of it is read."""
  storage: Any
  offset: Any
  size: Any
  stride: Any


class _RebuildTensorV2:
  """Stands in for torch._utils._rebuild_tensor_v2: records the geometry, checked later.

  An instance without a __dict__ (not a function): a pickle's BUILD opcode could otherwise set
  attributes on the one object every load shares.
  """
  __slots__ = ()

  def __call__(self, storage, storage_offset, size, stride, requires_grad=False,
               backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata  # irrelevant for stored weights
    return TensorSpec(storage, storage_offset, size, stride)


_rebuild_tensor_v2 = _RebuildTensorV2()


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler for torch checkpoints that resolves no globals beyond tensors and OrderedDict.

  Storages are checked against their zip members' declared sizes here, but not read.
  """

  _ALLOWED = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("collections", "OrderedDict"): collections.OrderedDict,
  }

  def __init__(self, fileobj, zf: zipfile.ZipFile, prefix: str, src: str, *,
               max_storage_elements: int = MAX_TENSOR_ELEMENTS,
               max_ratio: float = MAX_ZIP_RATIO,
               storage_kinds: dict[str, StorageKind] | None = None,
               allowed: str = "tensor state dicts"):
    super().__init__(fileobj)
    self._zf = zf
    self._prefix = prefix
    self._src = src
    self._archive_bytes = os.path.getsize(src)
    self._max_storage_elements = max_storage_elements
    self._max_ratio = max_ratio
    self._kinds = FLOAT_STORAGES if storage_kinds is None else storage_kinds
    self._allowed_what = allowed
    self.storages: dict[str, StorageRef] = {}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in self._kinds:
      return StorageType(name)
    raise RefusedGlobalError(safe_files.one_line(
        f"{self._src}: refusing to load global {module}.{name} (only {self._allowed_what} are "
        "allowed)"))

  def persistent_load(self, pid):
    # torch.save writes ('storage', storage_type, key, location, numel); the location
    # ('cpu', 'cuda:0') is where the tensor lived when saved, irrelevant to its bytes.
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise safe_files.error(self._src, f"unsupported persistent id {pid!r:.200}")
    stype, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(stype, StorageType) or stype.name not in self._kinds:
      raise safe_files.error(self._src, f"storage of unsupported type {stype!r:.100}")
    if not (isinstance(key, (str, int)) and not isinstance(key, bool)
            and isinstance(numel, int) and not isinstance(numel, bool) and numel >= 0):
      raise safe_files.error(self._src, f"malformed storage id {pid!r:.200}")
    if numel > self._max_storage_elements:
      raise safe_files.error(self._src, f"storage {key} has {numel} elements, over the limit "
                             f"of {self._max_storage_elements}")
    key, kind = str(key), self._kinds[stype.name]
    ref = StorageRef(key, kind, numel)
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
    itemsize = kind.raw.itemsize
    if info.file_size != numel * itemsize:
      raise safe_files.error(self._src, f"storage {key} declares {info.file_size} bytes, its "
                             f"{numel} {stype.name} elements need {numel * itemsize}")
    safe_files.check_zip_member(self._src, info, archive_bytes=self._archive_bytes,
                                max_ratio=self._max_ratio)
    self.storages[key] = ref
    return ref


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


@contextlib.contextmanager
def unpickled(path: str, *, max_tensor_elements: int, max_pickle_bytes: int,
              max_ratio: float, storage_kinds: dict[str, StorageKind],
              allowed: str) -> Iterator[tuple[zipfile.ZipFile, str, Any]]:
  """Opens the checkpoint and unpickles data.pkl; yields (open zip, member prefix, object).

  The zip stays open inside the block so the caller can read the storages it wants.

  Args:
    path: a `torch.save` file (zip format, torch >= 1.6).
    max_tensor_elements: the largest element count of one storage.
    max_pickle_bytes: the largest `data.pkl` accepted.
    max_ratio: the largest compression ratio of a zip member (deflate bombs).
    storage_kinds: the storage classes allowed (`FLOAT_STORAGES` or `CHECKPOINT_STORAGES`).
    allowed: what the allow-list admits, for the message of a refused global.

  Yields:
    (the open zip, the prefix of its members, the unpickled object): the object holds
    `TensorSpec`s (geometry unchecked) on `StorageRef`s (not read) where the tensors were.

  Raises:
    FileNotFoundError: no file at `path`.
    RefusedGlobalError: the pickle names a global outside the allow-list.
    UntrustedFileError: not a torch zip checkpoint, big-endian, a malformed pickle, a storage
      missing, of another type or size than its zip member, or over a limit.
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
                                    max_ratio=max_ratio, storage_kinds=storage_kinds,
                                    allowed=allowed)
    try:
      obj = unpickler.load()
    except UntrustedFileError:
      raise
    # A malformed pickle raises any type (EOFError, KeyError on a bad memo, TypeError, ...).
    except Exception as e:  # pylint: disable=broad-except
      raise safe_files.error(path, f"malformed {pkls[0]} ({type(e).__name__}: {e})") from e
    yield zf, prefix, obj


def describe_value(x) -> str:
  """A name for a value a checkpoint may not hold, without repr() (it may be huge).

  Args:
    x: any object the unpickler built (a stand-in, a global it resolved, or a plain value).

  Returns:
    e.g. "bare storage (not inside a tensor)" or "value of type bytes".
  """
  if isinstance(x, StorageRef):
    return "bare storage (not inside a tensor)"
  if isinstance(x, StorageType):
    return f"storage class torch.{x.name}"
  if x is _rebuild_tensor_v2 or x is collections.OrderedDict:
    return "global (a function or class, not a value)"
  return f"value of type {type(x).__name__}"
