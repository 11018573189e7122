"""Writes torch zip checkpoints (what `torch.save` writes) without torch.

The layout is torch's own (torch 2.x `torch.save`): `<archive>/data.pkl` (a protocol-2 pickle),
`.format_version`, `.storage_alignment`, `byteorder`, one raw little-endian member
`data/<key>` per tensor, then `version`; every member is stored uncompressed with its data
aligned to 64 bytes, as torch aligns it (for mmap loading). torch's random
`.data/serialization_id` is left out: torch.load does not need it.

The pickle's opcodes are emitted here rather than by `pickle.Pickler`: the pickler verifies each
global it writes by importing it, and `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage`
cannot be imported without torch. The globals are the three a weights-only `torch.load` allows
(`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, the storage classes), so
`torch.load(path, weights_only=True)` reads the files.
"""

import math
import os
import struct
from typing import Any, Sequence
import zipfile

import numpy as np

from avflow_jax.core import files

ALIGNMENT = 64  # torch's storage alignment (the `.storage_alignment` record)

_OPS_ORDERED_DICT = b"ccollections\nOrderedDict\n)R"  # OrderedDict(): GLOBAL, (), REDUCE
_OP_REBUILD = b"ctorch._utils\n_rebuild_tensor_v2\n"
_STORAGE_CLASSES = {np.dtype("<f4"): b"FloatStorage", np.dtype("<i8"): b"LongStorage",
                    np.dtype(bool): b"BoolStorage"}


def _describe(keypath: tuple) -> str:
  return "".join(f"[{k!r}]" for k in keypath) or "the checkpoint"


def _str_op(s: str) -> bytes:
  data = s.encode("utf-8", "surrogatepass")  # as pickle encodes str
  return b"X" + struct.pack("<I", len(data)) + data


def _int_op(n: int) -> bytes:
  if 0 <= n < 256:
    return b"K" + bytes([n])
  if 0 <= n < 65536:
    return b"M" + struct.pack("<H", n)
  if -2**31 <= n < 2**31:
    return b"J" + struct.pack("<i", n)
  data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
  if len(data) < 256:
    return b"\x8a" + bytes([len(data)]) + data  # LONG1
  return b"\x8b" + struct.pack("<i", len(data)) + data  # LONG4


def _tuple_ops(items: Sequence[bytes]) -> bytes:
  if len(items) <= 3:
    return b"".join(items) + (b")", b"\x85", b"\x86", b"\x87")[len(items)]
  return b"(" + b"".join(items) + b"t"


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
  # torch counts an empty dimension as 1 in the strides after it: zeros(3, 0) has (1, 1).
  return tuple(math.prod(max(d, 1) for d in shape[i + 1:]) for i in range(len(shape)))


def _as_storage_array(x: Any, keypath: tuple) -> np.ndarray:
  """`x` as a C-contiguous little-endian float32, int64 or bool array; ValueError otherwise."""
  # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
  a = np.asarray(x)
  if a.dtype.kind == "f" or a.dtype.name == "bfloat16":  # ml_dtypes' bfloat16 is kind "V"
    return np.asarray(a, "<f4", order="C")
  if a.dtype.kind == "i" or (a.dtype.kind == "u" and a.dtype.itemsize < 8):
    return np.asarray(a, "<i8", order="C")
  if a.dtype.kind == "b":
    return np.asarray(a, order="C")
  raise ValueError(f"{_describe(keypath)}: cannot write an array of dtype {a.dtype} (only "
                   "floating arrays, written as float32, integer arrays that fit int64, and "
                   "bool arrays)")


class _Emitter:
  """Builds data.pkl's opcodes for a value, collecting the arrays to write as storages."""

  def __init__(self):
    self.storages: list[np.ndarray] = []
    self._active: set[int] = set()

  def value(self, x: Any, keypath: tuple) -> bytes:
    if x is None:
      return b"N"
    if isinstance(x, np.generic) and x.dtype.kind in "biuf":
      x = x.item()  # a numpy scalar is the Python scalar (a 0-d array is a tensor)
    if isinstance(x, bool):
      return b"\x88" if x else b"\x89"
    if isinstance(x, int):
      return _int_op(int(x))
    if isinstance(x, float):
      return b"G" + struct.pack(">d", x)
    if isinstance(x, str):
      return _str_op(str(x))
    if isinstance(x, np.ndarray) or (hasattr(x, "__array__") and hasattr(x, "dtype")
                                     and hasattr(x, "shape")):  # jax arrays among others
      return self._tensor(_as_storage_array(x, keypath))
    if not isinstance(x, (dict, list, tuple)):
      raise ValueError(f"{_describe(keypath)}: cannot write a value of type "
                       f"{type(x).__name__} (only dicts, lists, tuples, str, int, float, bool, "
                       "None and numpy arrays)")
    if id(x) in self._active:
      raise ValueError(f"{_describe(keypath)} contains itself")
    self._active.add(id(x))
    try:
      if isinstance(x, dict):
        return self._dict(x, keypath)
      items = [self.value(v, keypath + (i,)) for i, v in enumerate(x)]
      if isinstance(x, tuple):
        return _tuple_ops(items)
      return b"]" + (b"(" + b"".join(items) + b"e" if items else b"")
    finally:
      self._active.discard(id(x))

  def _dict(self, x: dict, keypath: tuple) -> bytes:
    parts = [_OPS_ORDERED_DICT]
    if x:
      parts.append(b"(")
      for k, v in x.items():
        # The int64 bound is the reader's (`read_torch_checkpoint` refuses larger keys).
        if isinstance(k, bool) or not (isinstance(k, str) or (isinstance(k, int)
                                                              and int(k).bit_length() < 64)):
          raise ValueError(f"{_describe(keypath)}: cannot write a dict key of type "
                           f"{type(k).__name__} (only str keys and int keys that fit int64)")
        parts += [_str_op(k) if isinstance(k, str) else _int_op(int(k)),
                  self.value(v, keypath + (k,))]
      parts.append(b"u")
    return b"".join(parts)

  def _tensor(self, a: np.ndarray) -> bytes:
    key = str(len(self.storages))
    self.storages.append(a)
    storage_id = _tuple_ops([_str_op("storage"),
                             b"ctorch\n" + _STORAGE_CLASSES[a.dtype] + b"\n", _str_op(key),
                             _str_op("cpu"), _int_op(a.size)])
    # torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())
    args = _tuple_ops([storage_id + b"Q", _int_op(0),
                       _tuple_ops([_int_op(d) for d in a.shape]),
                       _tuple_ops([_int_op(s) for s in _contiguous_strides(a.shape)]),
                       b"\x89", _OPS_ORDERED_DICT])
    return _OP_REBUILD + args + b"R"


def _write_member(zf: zipfile.ZipFile, f, name: str, data) -> None:
  """Appends one stored member whose data starts at a multiple of ALIGNMENT, like torch's."""
  size = memoryview(data).nbytes
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  info.file_size = size
  # The local header is 30 bytes, the name, this padding field (torch's "FB" id, 4 bytes plus
  # the padding) and, for members zipfile writes as zip64, its 20-byte zip64 field; zipfile
  # decides zip64 as below (Lib/zipfile.py, _open_to_write). A wrong guess costs only the
  # alignment, not the file's validity.
  zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
  header = 30 + len(name.encode("utf-8")) + 4 + (20 if zip64 else 0)
  pad = -(f.tell() + header) % ALIGNMENT
  info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
  with zf.open(info, "w") as out:
    out.write(data)


def write_torch_checkpoint(path: str, obj: Any, *, archive_name: str | None = None) -> None:
  """Writes `obj` as a torch zip checkpoint that torch.load reads back, without torch.

  `torch.load(path, weights_only=True)` (and plain `torch.load(path)`) gives the same structure
  with every array a CPU tensor, every dict a collections.OrderedDict; `read_torch_checkpoint`
  reads it back bit-exactly. The file is written atomically: a failure leaves no file (nor a
  temporary) and keeps a file that was at `path`.

  Args:
    path: the file to write.
    obj: dicts (str or int keys, in their order), lists, tuples, str, int, float, bool, None
      and arrays, nested in any way (without cycles; an object present twice is written twice).
      Arrays: numpy arrays (and objects with __array__, dtype and shape, e.g. jax arrays), 0-d
      included. Floating arrays (float16, bfloat16, float64, ...) are written as float32
      tensors (torch.FloatTensor), integer arrays that fit int64 as int64 tensors
      (torch.LongTensor), bool arrays as bool tensors; complex, uint64, str and object arrays
      are refused. numpy scalars are
      written as the Python scalars they hold.
    archive_name: the folder of the members inside the zip; by default the file name without
      its extension, as torch.save names it.

  Raises:
    ValueError: naming the key path (e.g. ["optimizer_state_dict"]["state"][0]): a value of
      another type, an array of another dtype, a dict key that is not str or int, a container
      that contains itself; or an archive_name that is empty or holds a "/" or "\\".
  """
  if archive_name is None:
    archive_name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
  if not archive_name or "/" in archive_name or "\\" in archive_name:
    raise ValueError(f"archive_name {archive_name!r} must be a non-empty name without / or \\")
  # Everything is checked (and the pickle built) before the file is touched.
  emitter = _Emitter()
  pickle_bytes = b"\x80\x02" + emitter.value(obj, ()) + b"."
  with files.atomic_path(os.fspath(path)) as tmp:
    with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:

      def member(name: str, data) -> None:
        _write_member(zf, f, f"{archive_name}/{name}", data)

      member("data.pkl", pickle_bytes)
      member(".format_version", b"1")
      member(".storage_alignment", str(ALIGNMENT).encode())
      member("byteorder", b"little")
      for key, a in enumerate(emitter.storages):
        member(f"data/{key}", a.reshape(-1).view(np.uint8))
      member("version", b"3\n")

