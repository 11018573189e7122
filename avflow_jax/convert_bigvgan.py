r"""Converts an official BigVGAN `bigvgan_generator.pt` into `.safetensors` / `.npz`, without torch.

  python -m avflow_jax.convert_bigvgan bigvgan_generator.pt out.safetensors

The checkpoint is read by `core/torch_reader.py` through `core/torch_pickle.py`: a restricted unpickler that resolves no
globals but tensor rebuilds (so e.g. `os.system` is refused by name, never run), with limits on
tensor sizes, strides, zip members and the pickle. A hostile or broken checkpoint exits with
status 2 and one `error:` line naming the file (and the tensor), before anything is written.
A `config.json` next to the input is copied next to the output, where `load_bigvgan` reads it.
"""

import os
import shutil
import sys

from absl import app
from absl import logging
import numpy as np

from avflow_jax.core import files
from avflow_jax.core.errors import EXIT_BAD_INPUT
from avflow_jax.core.safe_files import UntrustedFileError
from avflow_jax.core.torch_reader import read_torch_state_dict


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
  from avflow_jax.models import bigvgan_checkpoint  # pylint: disable=g-import-not-at-top
  try:
    config, params = bigvgan_checkpoint.load_bigvgan(out_path)
    logging.info("checked: %s loads as BigVGAN (%.2f M params, upsample %s)", out_path,
                 bigvgan.num_params(params) / 1e6, config.upsample_rates)
  except (KeyError, ValueError) as e:
    logging.warning("%s was written but does not load as a BigVGAN generator: %s", out_path, e)
  return arrays


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: python -m avflow_jax.convert_bigvgan IN.pt OUT.safetensors|npz")
  try:
    convert(argv[1], argv[2])
  except (UntrustedFileError, OSError) as e:  # Both name the file; a traceback would not help.
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  return 0


if __name__ == "__main__":
  app.run(main)
