"""The official `text_to_tokens.pth` -> a text-to-tokens run directory (no torch).

The file is a plain state dict (Matcha-TTS with 29 output features, plus 0-d `mean` / `std`
buffers, which become the run's `model.token_mean` / `token_std`). The run directory holds
config.json (the model read off the tensor shapes, the official synthesis settings: 10 Euler
steps, temperature 0.667, length scale 1, blanks between symbols) and one checkpoint; it loads
with `--t2t-workdir` in `sample`, `evaluate_text` and `api.load_text_to_tokens`.
"""

import os

import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from avflow_jax.core import checksums
from avflow_jax.core import files
from avflow_jax.core import run_dir
from avflow_jax.core import torch_reader
from avflow_jax.core.errors import AvatarError
from avflow_jax.core.safe_files import UntrustedFileError
from avflow_jax.models import official_t2t_keys


def save_checkpoint(workdir: str, step: int, tree: dict) -> None:
  """WORKDIR/checkpoints/STEP/state as the training loop lays it out, sealed.

  Uncompressed: float weights do not compress, and compressing doubles the peak memory.
  """
  step_dir = os.path.join(run_dir.checkpoint_root(workdir), str(step))
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))
  checkpointer.save(os.path.join(step_dir, "state"), tree)
  files.write_atomic(os.path.join(step_dir, checksums.CHECKSUMS), checksums.table_json(step_dir))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  files.write_atomic(os.path.join(workdir, run_dir.RUN_CONFIG), config.to_json_best_effort(indent=2))


def run_config(model: dict, source: str) -> ml_collections.ConfigDict:
  """The config.json of an imported text-to-tokens run."""
  c = ml_collections.ConfigDict()
  c.task = "text_to_tokens"
  c.model = ml_collections.ConfigDict(model)
  c.data = ml_collections.ConfigDict({"add_blank": True})  # The official front end's blanks.
  c.sample = ml_collections.ConfigDict({"num_steps": 10, "temperature": 0.667,
                                        "length_scale": 1.0})
  c.official_import = {"text_to_tokens": os.path.abspath(source)}
  return c


def import_text_to_tokens(path: str, workdir: str, log=print) -> None:
  """Writes WORKDIR (config.json + checkpoint) from an official text-to-tokens file.

  Raises:
    AvatarError: one line naming the file and, for a foreign model, the key.
  """
  if not os.path.isfile(path):
    raise AvatarError(f"--t2t {path}: file missing")
  try:
    state = torch_reader.read_torch_state_dict(path)
  except (UntrustedFileError, OSError) as e:
    raise AvatarError(f"--t2t {e}" if path in str(e) else f"--t2t {path}: {e}") from e
  try:
    model = official_t2t_keys.model_config_from_official(state)
    params, mean, std = official_t2t_keys.params_from_official(state, model)
  except ValueError as e:
    raise AvatarError(f"--t2t {path}: {e}") from e
  # The project's padding masks by default; `official_padding: true` in config.json makes padded
  # batches as the official decoder computes them (deterministic; dropout stays off).
  model = dict(model, token_mean=float(mean), token_std=float(std), official_padding=False)
  save_checkpoint(workdir, 0, {"step": np.int32(0), "params": params})
  write_config(workdir, run_config(model, path))
  log(f"text to tokens: {len(state)} tensors, {model['enc_layers']} encoder layers x "
      f"{model['enc_channels']}, token statistics ({mean:.4f}, {std:.4f})")
