"""Reads torch zip checkpoints (`torch.save`, torch >= 1.6) without torch.

A checkpoint is `<dir>/data.pkl` plus raw little-endian storages `<dir>/data/<key>`. The pickle
is read by the restricted unpickler of `core/torch_pickle.py`, which only resolves the few
globals a checkpoint of tensors needs (tensor rebuild, storage classes, OrderedDict); anything
else (e.g. `os.system`) is refused by name before it can run.

Nothing is allocated from what the pickle claims. Unpickling only records, per tensor, its
storage, offset, shape and stride, and per storage, its declared element count (checked against
the zip member's declared size). Then every tensor's geometry is checked against its storage and
the limits below, and only then are the storages the wanted tensors use read (each zip member
bounded by its declared size, see `core/safe_files.py`) and the tensors copied out with numpy.

Two readers share this machinery:

- `read_torch_state_dict`: a flat {name: tensor} dict (or {"generator": ...}), all float.
- `read_torch_checkpoint`: any nesting of dicts, lists, tuples and plain scalars around the
  tensors (a training checkpoint: weights, optimizer moments, the iteration), reading only the
  tensors a `load` predicate selects; the others come back as `TensorInfo` placeholders and
  their storages are never read, so a weights-only read of a 0.8 GB checkpoint with two Adam
  moments reads about a third of it.
"""

import collections
import math
from typing import Any, Callable, Iterator, NamedTuple, Sequence
import zipfile

import numpy as np

from avflow_jax.core import safe_files
from avflow_jax.core import torch_pickle
from avflow_jax.core.safe_files import MAX_TENSOR_ELEMENTS
from avflow_jax.core.safe_files import MAX_ZIP_RATIO
from avflow_jax.core.torch_pickle import MAX_PICKLE_BYTES
from avflow_jax.core.torch_pickle import StorageRef
from avflow_jax.core.torch_pickle import TensorSpec

# The tensors of a checkpoint may hold more elements than its storages (views sharing one
# storage, tied weights, stride-0 expansions), but a state dict does not hold many times more:
# the default total is this many times the elements of the storages the tensors use ...
TOTAL_ELEMENTS_PER_STORAGE_ELEMENT = 4
# ... plus this floor (64 MiB of float32), so small checkpoints with expanded views still load.
# The reproduced attack (one 4-byte storage viewed as 20000 x 20000 with stride 0) is 4e8.
TOTAL_ELEMENTS_FLOOR = 2**24
# Containers nested deeper than this are refused: a training checkpoint nests 4 deep, and the
# walk over the unpickled object recurses once per level.
MAX_DEPTH = 64

KeyPath = tuple  # dict keys (str or int) and list / tuple indices from the root, in order


class TensorInfo(NamedTuple):
  """A tensor `read_torch_checkpoint` was asked not to load: what it would have been.

  Attributes:
    shape: the tensor's shape.
    dtype: torch's name of its stored element type ("float32", "float16", "bfloat16",
      "int64", "int32" or "bool").
  """
  shape: tuple[int, ...]
  dtype: str


def _check_geometry(src: str, key: str, spec: TensorSpec, max_elements: int) -> int:
  """Element count of `spec` after checking it lies inside its storage; raises otherwise."""
  if not isinstance(spec.storage, StorageRef):
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


def _materialise(spec: TensorSpec, flat: np.ndarray) -> np.ndarray:
  """Copies the strided view `spec` of `flat` (checked by `_check_geometry`) as its kind's out."""
  kind = spec.storage.kind
  size = tuple(spec.size)
  if not math.prod(size):
    return np.zeros(size, kind.out)
  view = np.lib.stride_tricks.as_strided(
      flat[spec.offset:], shape=size, strides=[s * flat.itemsize for s in spec.stride],
      writeable=False)
  # astype and in-place ops keep 0-d results arrays (a ufunc would return a numpy scalar).
  if kind.dtype == "bfloat16":  # its 16 bits are the top half of a float32.
    wide = view.astype(np.uint32)
    wide <<= 16
    return wide.view(np.float32)
  return view.astype(kind.out)  # bool: any nonzero byte is True, as torch reads it


def _check_total(path: str, counts: dict[str, int], refs: Sequence[StorageRef],
                 max_total_elements: int | None) -> None:
  """Refuses tensors (name -> element count) holding more than the limit for their storages."""
  if max_total_elements is None:
    used = {r.key: r.numel for r in refs}
    max_total_elements = (TOTAL_ELEMENTS_PER_STORAGE_ELEMENT * sum(used.values())
                          + TOTAL_ELEMENTS_FLOOR)
  total = sum(counts.values())
  if total > max_total_elements:
    biggest = max(counts, key=counts.get)
    raise safe_files.error(path, f"tensors hold {total} elements in all, over the limit of "
                           f"{max_total_elements} (largest: tensor {biggest!r}, "
                           f"{counts[biggest]} elements)")


def _read_tensors(path: str, zf: zipfile.ZipFile, prefix: str, specs: Sequence[TensorSpec],
                  max_ratio: float) -> Iterator[np.ndarray]:
  """Yields the tensors `specs` (geometry checked), reading only the storages they use.

  Each storage is read when its first tensor needs it and dropped after its last one, so the
  memory held beyond the tensors themselves is the storages of the tensors in progress.
  """
  uses = collections.Counter(s.storage.key for s in specs)
  flats = {}
  for spec in specs:
    ref = spec.storage
    if ref.key not in flats:
      raw = safe_files.read_zip_member(path, zf, f"{prefix}data/{ref.key}",
                                       max_bytes=ref.numel * ref.kind.raw.itemsize,
                                       max_ratio=max_ratio)
      flats[ref.key] = np.frombuffer(raw, ref.kind.raw, count=ref.numel)
    yield _materialise(spec, flats[ref.key])
    uses[ref.key] -= 1
    if not uses[ref.key]:
      del flats[ref.key]


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
  with torch_pickle.unpickled(path, max_tensor_elements=max_tensor_elements,
                              max_pickle_bytes=max_pickle_bytes, max_ratio=max_ratio,
                              storage_kinds=torch_pickle.FLOAT_STORAGES,
                              allowed="tensor state dicts") as (zf, prefix, obj):
    if isinstance(obj, dict) and "generator" in obj:
      obj = obj["generator"]
    if not isinstance(obj, dict) or not all(isinstance(v, TensorSpec) for v in obj.values()):
      raise safe_files.error(path, "expected a dict of tensors (or {'generator': ...})")
    specs = {str(k): v for k, v in obj.items()}
    if len(specs) != len(obj):  # e.g. keys 1 and "1": one would silently replace the other.
      raise safe_files.error(path, "two tensor keys have the same name")
    counts = {k: _check_geometry(path, k, s, max_tensor_elements) for k, s in specs.items()}
    _check_total(path, counts, [s.storage for s in specs.values()], max_total_elements)
    return dict(zip(specs, _read_tensors(path, zf, prefix, list(specs.values()), max_ratio)))


def _describe(keypath: KeyPath) -> str:
  """`keypath` as Python indexing (["model_state_dict"]["w"]), cut to 200 characters."""
  text = "".join(f"[{k!r}]" for k in keypath) or "(the whole checkpoint)"
  return text if len(text) <= 200 else text[:197] + "..."


_PLAIN_TYPES = (int, float, bool, str, type(None))
_CONTAINER_TYPES = (dict, collections.OrderedDict, list, tuple)


def _convert(path: str, root: Any, on_tensor: Callable[[KeyPath, TensorSpec], Any]) -> Any:
  """A copy of the unpickled `root` as plain Python, each tensor replaced by `on_tensor`'s value.

  Exact types only: the stand-ins (TensorSpec, storages) are tuples, and must not pass as
  ones. An object the pickle references twice (its memo) is converted once and shared, as
  torch.load shares it; `on_tensor` sees the first key path that reaches it. Sharing makes the
  walk linear in the pickle's objects (a chain of tuples each holding the next twice would
  otherwise double the work per link); a cycle is refused.
  """
  memo: dict[int, Any] = {}
  active: set[int] = set()

  def visit(x, keypath: KeyPath):
    t = type(x)
    if t in _PLAIN_TYPES:
      return x
    if id(x) in memo:
      return memo[id(x)]
    if t is TensorSpec:
      memo[id(x)] = out = on_tensor(keypath, x)
      return out
    if t not in _CONTAINER_TYPES:
      raise safe_files.error(path, f"{_describe(keypath)} is a "
                             f"{torch_pickle.describe_value(x)}; a checkpoint may only hold "
                             "tensors, dicts, lists, tuples, str, int, float, bool and None")
    if id(x) in active:
      raise safe_files.error(path, f"{_describe(keypath)} contains itself")
    if len(keypath) >= MAX_DEPTH:
      raise safe_files.error(path, f"{_describe(keypath)}: containers nested over "
                             f"{MAX_DEPTH} deep")
    active.add(id(x))
    if t is list or t is tuple:
      out = [visit(v, keypath + (i,)) for i, v in enumerate(x)]
      out = out if t is list else tuple(out)
    else:
      out = {}
      for k, v in x.items():
        # int64 bounds keep every key printable (str() of a huge int raises) and hashable cheaply.
        if not (type(k) is str or (type(k) is int and k.bit_length() < 64)):
          raise safe_files.error(path, f"{_describe(keypath)} has a dict key that is a "
                                 f"{torch_pickle.describe_value(k)}; only str and int keys "
                                 "are supported")
        out[k] = visit(v, keypath + (k,))
    active.discard(id(x))
    memo[id(x)] = out
    return out

  return visit(root, ())


def read_torch_checkpoint(path: str, *, load: Callable[[KeyPath], bool] = lambda keypath: True,
                          max_tensor_elements: int = MAX_TENSOR_ELEMENTS,
                          max_total_elements: int | None = None,
                          max_pickle_bytes: int = MAX_PICKLE_BYTES,
                          max_ratio: float = MAX_ZIP_RATIO) -> Any:
  """Reads a nested torch zip checkpoint without torch, loading only the tensors asked for.

  For example, the weights of an official AV-Flow training checkpoint without its Adam moments:

    ckpt = read_torch_checkpoint(path, load=lambda kp: kp[0] == "model_state_dict")
    weights = ckpt["model_state_dict"]

  Args:
    path: a `torch.save` file (zip format, torch >= 1.6) of tensors inside any nesting of dicts
      (OrderedDicts), lists and tuples, with str, int, float, bool and None values, e.g.
      {"iteration": 500000, "model_state_dict": {...}, "optimizer_state_dict": {"state": {0:
      {"step": ..., "exp_avg": ...}}, "param_groups": [...]}}. Float32, float16, bfloat16,
      int64, int32 and bool tensors; the device a tensor was saved from is ignored.
    load: called with each tensor's key path (the dict keys and list / tuple indices from the
      root, e.g. ("model_state_dict", "encoder.0.weight")); only the tensors it returns true
      for are read. A tensor the pickle shares between places (tied weights) is asked about, and
      read, once: at the first key path that reaches it.
    max_tensor_elements: the largest element count of one tensor (loaded or not), and of one
      storage.
    max_total_elements: the largest element count of the loaded tensors together; by default
      TOTAL_ELEMENTS_PER_STORAGE_ELEMENT times the elements of the storages they use, plus
      TOTAL_ELEMENTS_FLOOR.
    max_pickle_bytes: the largest `data.pkl` accepted.
    max_ratio: the largest compression ratio of a zip member (deflate bombs).

  Returns:
    The checkpoint as plain Python: dict (for dict and OrderedDict, in the saved order), list,
    tuple, str, int, float, bool, None. Each loaded tensor is a numpy array: float32 for float
    tensors, int64 for integer ones, bool for bool ones (0-d tensors are 0-d arrays); each
    other tensor is a `TensorInfo` (shape, dtype) and none of its bytes are read. Objects the
    pickle shares are shared in the result, as torch.load shares them.

  Raises:
    FileNotFoundError: no file at `path`.
    RefusedGlobalError: the pickle names a global outside the allow-list (an
      UntrustedFileError and a pickle.UnpicklingError).
    UntrustedFileError: (a ValueError) with one line naming the file, and the key path where
      there is one: not a torch zip checkpoint, big-endian, a value of another type (bytes, a
      set, a bare storage), a container that contains itself or is nested over MAX_DEPTH deep,
      a tensor outside its storage or over a limit, a corrupt or oversized member.
  """
  with torch_pickle.unpickled(path, max_tensor_elements=max_tensor_elements,
                              max_pickle_bytes=max_pickle_bytes, max_ratio=max_ratio,
                              storage_kinds=torch_pickle.CHECKPOINT_STORAGES,
                              allowed="tensors and plain containers") as (zf, prefix, obj):
    # First walk: check every tensor's geometry (reading nothing) and choose those to read.
    wanted: list[TensorSpec] = []
    counts: dict[str, int] = {}

    def check(keypath: KeyPath, spec: TensorSpec) -> None:
      name = _describe(keypath)
      n = _check_geometry(path, name, spec, max_tensor_elements)
      if load(keypath):
        wanted.append(spec)
        # Names cut to 200 characters could collide, and a collision would drop a count.
        counts[name if name not in counts else f"{name} (#{len(counts)})"] = n
      return None

    _convert(path, obj, check)
    _check_total(path, counts, [s.storage for s in wanted], max_total_elements)
    arrays = dict(zip(map(id, wanted), _read_tensors(path, zf, prefix, wanted, max_ratio)))

    # Second walk: the same structure with the arrays, or placeholders for the others.
    def value(keypath: KeyPath, spec: TensorSpec):
      del keypath
      if id(spec) in arrays:
        return arrays[id(spec)]
      return TensorInfo(tuple(spec.size), spec.storage.kind.dtype)

    return _convert(path, obj, value)
