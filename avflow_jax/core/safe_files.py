"""Limits for reading files that come from outside: sizes, element counts, zip members.

Weights, configs and manifests are files a user downloads or is handed. A malformed or hostile
one must fail with one line naming the file, in bounded memory, and without running anything.
So every size a file *declares* (a header's length, a tensor's shape, a zip member's
uncompressed size) is checked against the bytes actually present and against the limits below
before anything is allocated or decompressed.

The limits are module constants so they are documented in one place; every function takes them
as keyword arguments, so a caller with a legitimately larger file can raise them.
`core/torch_pickle.py` and `core/torch_reader.py` (torch zip checkpoints) build on the zip checks here.
"""

import json
import math
import os
import struct
from typing import Any, Optional
import zipfile

import numpy as np

# Elements of one tensor. 2**31 (8 GiB of float32) is ~100x the largest tensor of the models
# read here (BigVGAN and wav2vec 2.0 tensors have under 2**25 elements), yet refuses the
# 2**40-element shapes a forged header can claim for free.
MAX_TENSOR_ELEMENTS = 2**31
# numpy's own limit is 64 dimensions; no weight has more than 4.
MAX_NDIM = 32
# Uncompressed : compressed ratio refused for a zip member (a deflate bomb). torch.save and
# np.savez store members uncompressed (1:1) and float weights deflate to ~1.1:1; deflate's
# ceiling is ~1032:1, reached only by long runs of one byte value, which is what a bomb is.
MAX_ZIP_RATIO = 1000
# Members up to this size skip the ratio check: they cannot hurt, and a small all-zero blob
# (a bias initialised to 0) legitimately deflates far.
ZIP_RATIO_MIN_BYTES = 2**20
# Members of one zip archive (the central directory is held in memory). A BigVGAN checkpoint
# has a few hundred.
MAX_ZIP_MEMBERS = 100_000
# safetensors' own limit on its JSON header.
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
# A JSON file (configs, manifests). A manifest lists every clip (~80 bytes each), so 64 MiB is
# ~800k clips, thousands of hours; json.load of that already takes ~1 GB of Python objects.
MAX_JSON_BYTES = 64 * 2**20

# safetensors dtype names -> bytes per element (the format's specification).
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8, "C64": 8,
}


class UntrustedFileError(ValueError):
  """A file from outside is malformed or over a limit; the message is one line naming it.

  A ValueError, so the loaders' callers (and the commands' bad-input handling) treat it as
  bad input, as they did before the limits existed.
  """


def one_line(text: Any) -> str:
  """`text` with every run of whitespace (newlines included) collapsed to one space."""
  return " ".join(str(text).split())


def error(path: Any, message: str) -> UntrustedFileError:
  """The error to raise for `path`: `"<path>: <message>"` on one line."""
  return UntrustedFileError(one_line(f"{os.fspath(path)}: {message}"))


def _is_count(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_shape(path, name: str, shape, *, max_elements: int = MAX_TENSOR_ELEMENTS) -> int:
  """Checks a declared tensor shape (non-negative ints, at most MAX_NDIM, capped element count).

  Args:
    path: the file, for the message.
    name: the tensor's name in the file, for the message.
    shape: the declared shape (any sequence; its entries are checked to be ints).
    max_elements: the largest element count accepted.

  Returns:
    The element count.

  Raises:
    UntrustedFileError: a malformed shape or too many elements.
  """
  if not isinstance(shape, (tuple, list)) or len(shape) > MAX_NDIM or not all(
      _is_count(d) for d in shape):
    raise error(path, f"tensor {name!r} has a malformed shape {one_line(repr(shape))[:200]}")
  n = math.prod(shape)
  if n > max_elements:
    raise error(path, f"tensor {name!r} has shape {tuple(shape)} ({n} elements), over the "
                f"limit of {max_elements} elements per tensor")
  return n


def check_file_size(path, max_bytes: int, what: str = "file") -> int:
  """The size of `path` in bytes; UntrustedFileError when it is over `max_bytes`."""
  size = os.path.getsize(path)
  if size > max_bytes:
    raise error(path, f"{what} is {size} bytes, over the limit of {max_bytes} bytes")
  return size


def read_bounded(path, max_bytes: int, what: str = "file") -> bytes:
  """Reads all of `path`, refusing it when it holds more than `max_bytes`.

  The size is checked before reading, and the read asks for one byte more than that size (a
  read allocates what it asks for), so a file that grows meanwhile cannot take more memory.
  """
  size = check_file_size(path, max_bytes, what)
  with open(path, "rb") as f:
    data = f.read(size + 1)
  if len(data) != size:
    raise error(path, f"{what} changed size while being read ({size} bytes, then "
                f"{len(data)}{'+' if len(data) > size else ''})")
  return data


def read_json(path, *, max_bytes: int = MAX_JSON_BYTES, what: str = "JSON file") -> Any:
  """Parses a JSON file of at most `max_bytes`; one-line UntrustedFileError when it is not JSON."""
  data = read_bounded(path, max_bytes, what)
  try:
    return json.loads(data)
  except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError: ValueErrors.
    raise error(path, f"not valid JSON ({e})") from e


def open_zip(path, what: str = "zip archive", *,
             max_members: int = MAX_ZIP_MEMBERS) -> zipfile.ZipFile:
  """Opens a zip archive for reading; one-line UntrustedFileError when it is not a usable one.

  zipfile reads the central directory whole, but it lies inside the file (its offset and size
  are checked against the end record's position), so that read is bounded by the file's size.
  """
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise error(path, f"not a readable {what} (truncated or corrupt: {e})") from e
  if len(zf.infolist()) > max_members:
    n = len(zf.infolist())
    zf.close()
    raise error(path, f"{what} has {n} members, over the limit of {max_members}")
  return zf


def check_zip_member(path, info: zipfile.ZipInfo, *, archive_bytes: int,
                     max_bytes: Optional[int] = None, max_ratio: float = MAX_ZIP_RATIO) -> None:
  """Checks a zip member's declared sizes before anything of it is decompressed.

  zipfile never returns more than a member's declared `file_size` (and checks the CRC at the
  end), so once the declared size is bounded, so is the memory a read of the member takes.

  Args:
    path: the archive, for the message.
    info: the member.
    archive_bytes: the archive's size on disk.
    max_bytes: the largest declared uncompressed size accepted (None: no limit of its own).
    max_ratio: the largest uncompressed : compressed ratio accepted (deflate bombs).

  Raises:
    UntrustedFileError: encrypted, larger than the archive, over `max_bytes` or `max_ratio`.
  """
  name = info.filename
  if info.flag_bits & 0x1:
    raise error(path, f"member {name!r} is encrypted")
  if info.compress_size > archive_bytes or info.header_offset + info.compress_size > archive_bytes:
    raise error(path, f"member {name!r} claims {info.compress_size} compressed bytes, more "
                f"than the archive's {archive_bytes} (truncated?)")
  if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
    raise error(path, f"member {name!r} is stored uncompressed but declares "
                f"{info.file_size} bytes for {info.compress_size}")
  if max_bytes is not None and info.file_size > max_bytes:
    raise error(path, f"member {name!r} declares {info.file_size} bytes, over the limit of "
                f"{max_bytes}")
  if (info.file_size > ZIP_RATIO_MIN_BYTES
      and info.file_size > max_ratio * max(info.compress_size, 1)):
    raise error(path, f"member {name!r} would inflate {info.compress_size} bytes to "
                f"{info.file_size} (over {max_ratio:g}:1, a zip bomb?); refused before "
                "decompressing")


def read_zip_member(path, zf: zipfile.ZipFile, name: str, *, max_bytes: int,
                    max_ratio: float = MAX_ZIP_RATIO) -> bytes:
  """Reads one member after `check_zip_member`; never more than its declared size.

  Raises:
    UntrustedFileError: the member is missing, over a limit, or corrupt.
  """
  try:
    info = zf.getinfo(name)
  except KeyError as e:
    raise error(path, f"member {name!r} missing from the archive") from e
  check_zip_member(path, info, archive_bytes=os.path.getsize(path), max_bytes=max_bytes,
                   max_ratio=max_ratio)
  try:
    with zf.open(info) as f:
      data = f.read(info.file_size)
  # The decompressors raise many types (zlib.error, EOFError, lzma's, BadZipFile for a CRC);
  # any of them means the member is unusable.
  except Exception as e:  # pylint: disable=broad-except
    raise error(path, f"member {name!r} is corrupt ({type(e).__name__}: {e})") from e
  if len(data) != info.file_size:
    raise error(path, f"member {name!r} holds {len(data)} bytes, its header declares "
                f"{info.file_size} (truncated?)")
  return data


def _npy_header(path, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
  """(shape, fortran_order, dtype, header bytes) of a .npy member, reading only its header."""
  try:
    with zf.open(info) as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
      elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
      else:
        raise ValueError(f"unsupported .npy version {version}")
      return shape, fortran, dtype, f.tell()
  except Exception as e:  # pylint: disable=broad-except  (numpy's and zipfile's many types)
    raise error(path, f"member {info.filename!r} is not a readable .npy array "
                f"({type(e).__name__}: {e})") from e


def load_npz(path, *, max_tensor_elements: int = MAX_TENSOR_ELEMENTS,
             max_ratio: float = MAX_ZIP_RATIO) -> dict[str, np.ndarray]:
  """Reads an `.npz` of plain arrays (never pickles), checking each member before reading it.

  Args:
    path: the file.
    max_tensor_elements: the largest element count of one array.
    max_ratio: see `check_zip_member`.

  Returns:
    name -> array, as `np.load(path)` would give.

  Raises:
    UntrustedFileError: not an npz, an object (pickled) array, a shape that does not match the
      member's bytes, or a member over a limit.
  """
  archive_bytes = os.path.getsize(path)
  out = {}
  with open_zip(path, "npz archive") as zf:
    for info in zf.infolist():
      name = info.filename
      if not name.endswith(".npy"):
        raise error(path, f"member {name!r} is not a .npy array")
      check_zip_member(path, info, archive_bytes=archive_bytes, max_ratio=max_ratio)
      shape, _, dtype, header = _npy_header(path, zf, info)
      if dtype.hasobject:
        raise error(path, f"array {name[:-4]!r} holds Python objects (a pickle); refused")
      n = check_shape(path, name[:-4], shape, max_elements=max_tensor_elements)
      if header + n * dtype.itemsize != info.file_size:
        raise error(path, f"array {name[:-4]!r} declares {shape} {dtype} "
                    f"({n * dtype.itemsize} bytes) but its member holds "
                    f"{info.file_size - header}")
      try:
        with zf.open(info) as f:
          out[name[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
      except Exception as e:  # pylint: disable=broad-except  (see read_zip_member)
        raise error(path, f"array {name[:-4]!r} is corrupt ({type(e).__name__}: {e})") from e
  return out


def check_safetensors(path, *, max_header_bytes: int = MAX_SAFETENSORS_HEADER_BYTES,
                      max_tensor_elements: int = MAX_TENSOR_ELEMENTS) -> dict[str, tuple]:
  """Checks a `.safetensors` file's header against the file before any tensor is read.

  The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
  data_offsets}}, then the tensors' bytes, which must tile the rest of the file exactly.

  Args:
    path: the file.
    max_header_bytes: the largest JSON header accepted.
    max_tensor_elements: the largest element count of one tensor.

  Returns:
    name -> (dtype name, shape) for every tensor.

  Raises:
    UntrustedFileError: a header length past the file or the limit, a malformed header, a
      tensor whose bytes do not match its shape or lie outside the file.
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise error(path, f"not a safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", head)
    if n > min(max_header_bytes, size - 8):
      raise error(path, f"safetensors header claims {n} bytes; the file has {size - 8} after "
                  f"the length field and the limit is {max_header_bytes}")
    raw = f.read(n)
  try:
    header = json.loads(raw)
  except (ValueError, RecursionError) as e:
    raise error(path, f"safetensors header is not valid JSON ({e})") from e
  if not isinstance(header, dict):
    raise error(path, "safetensors header is not a JSON object")
  data_bytes = size - 8 - n
  spans, out = [], {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if not (isinstance(entry, dict) and entry.get("dtype") in _SAFETENSORS_ITEMSIZE):
      raise error(path, f"tensor {name!r}: malformed entry or unsupported dtype "
                  f"{one_line(repr(entry))[:200]}")
    count = check_shape(path, name, entry.get("shape"), max_elements=max_tensor_elements)
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
            and offsets[0] <= offsets[1] <= data_bytes):
      raise error(path, f"tensor {name!r}: data_offsets {one_line(repr(offsets))[:100]} lie "
                  f"outside the file's {data_bytes} data bytes")
    need = count * _SAFETENSORS_ITEMSIZE[entry["dtype"]]
    if offsets[1] - offsets[0] != need:
      raise error(path, f"tensor {name!r}: shape {tuple(entry['shape'])} {entry['dtype']} "
                  f"needs {need} bytes, its data_offsets span {offsets[1] - offsets[0]}")
    spans.append((offsets[0], offsets[1], name))
    out[name] = (entry["dtype"], tuple(entry["shape"]))
  # The format forbids holes and overlaps, so the tensors' total is bounded by the file size.
  end = 0
  for begin, stop, name in sorted(spans):
    if begin != end:
      raise error(path, f"tensor {name!r} starts at data byte {begin}, expected {end} "
                  "(overlapping or gapped tensors)")
    end = stop
  if end != data_bytes:
    raise error(path, f"tensors cover {end} of the file's {data_bytes} data bytes")
  return out


def load_safetensors(path, *, max_header_bytes: int = MAX_SAFETENSORS_HEADER_BYTES,
                     max_tensor_elements: int = MAX_TENSOR_ELEMENTS) -> dict[str, np.ndarray]:
  """`safetensors.numpy.load_file(path)` after `check_safetensors` (same arguments)."""
  check_safetensors(path, max_header_bytes=max_header_bytes,
                    max_tensor_elements=max_tensor_elements)
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    return load_file(path)
  except Exception as e:  # pylint: disable=broad-except  (safetensors has its own error types)
    raise error(path, f"cannot read safetensors file ({e})") from e
