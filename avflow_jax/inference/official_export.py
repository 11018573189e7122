"""An avflow_jax AV run -> the official AV-Flow checkpoint format (a torch zip file, no torch).

The file has the structure `learn.trainer.Trainer.save_checkpoint` writes and `load_checkpoint`
reads: {"iteration", "model_state_dict" (the `AVDiffusionWrapper`'s keys, all under
`diffusion_module.`), "optimizer_state_dict" (AdamW, empty state, one parameter group with the
run's lr, betas, eps and weight decay)}. The head VAE is written the same way (its keys have no
prefix). The official code normalises with its own constants (the mel's scalar affine, raw face
codes and tokens, the release's head statistics): a run trained with other statistics (the
project's per-dimension z-scores) gives wrong outputs there, so `export_run` says which
streams differ.
"""

import collections
import os
from typing import Optional

import numpy as np

from avflow_jax.core import constants
from avflow_jax.core import run_dir
from avflow_jax.core import torch_writer
from avflow_jax.core.errors import AvatarError
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.models import layer_layout
from avflow_jax.models import official_keys


def _optimizer_state(config, num_params: int) -> dict:
  o = config.get("optim", {})
  group = collections.OrderedDict(
      lr=float(o.get("lr", 1e-4)), betas=(float(o.get("b1", 0.9)), float(o.get("b2", 0.98))),
      eps=float(o.get("eps", 1e-8)), weight_decay=float(o.get("weight_decay", 0.0)),
      amsgrad=False, maximize=False, foreach=None, capturable=False, differentiable=False,
      fused=None, decoupled_weight_decay=True, params=list(range(num_params)))
  return {"state": {}, "param_groups": [group]}


def _checkpoint(step: int, state_dict, config) -> dict:
  return collections.OrderedDict(
      iteration=int(step), model_state_dict=state_dict,
      optimizer_state_dict=_optimizer_state(config, len(state_dict)))


def stats_differences(stats: dict) -> list[str]:
  """Streams whose statistics are not the official normalisation (empty: exportable as is)."""
  out = []
  mean, std = (np.asarray(stats["mel"][k], np.float64) for k in ("mean", "std"))
  if not (np.allclose(mean, constants.OFFICIAL_MEL_MEAN, atol=1e-4)
          and np.allclose(std, constants.OFFICIAL_MEL_STD, atol=1e-4)):
    out.append("mel")
  for name in ("tokens", "face", "participant"):
    if name in stats:
      m, s = (np.asarray(stats[name][k], np.float64) for k in ("mean", "std"))
      if not (np.allclose(m, 0.0) and np.allclose(s, 1.0)):
        out.append(name)
  return out


def export_run(workdir: str, output: str, *, which: str = "ema",
               head_vae_output: Optional[str] = None, log=print) -> list[str]:
  """Writes the run's AV weights (and optionally its head VAE) in the official format.

  Args:
    workdir: an AV run directory (trained here, or imported).
    output: the .pt file to write (atomically: a failure leaves no file).
    which: "ema" or "params" weights.
    head_vae_output: also write the run's head VAE there.
    log: progress and warning lines.

  Returns:
    The files written.

  Raises:
    AvatarError: not an AV run, or its checkpoint cannot be read.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = run_dir.read_run_config(workdir, "--workdir")
  if config.get("task", "av") != "av":
    raise AvatarError(f"--workdir {workdir}: a {config.get('task')!r} run, not an AV run")
  variant = config.model.get("variant", "av_flow")
  if variant != "av_flow":
    raise AvatarError(f"--workdir {workdir}: a {variant!r} ablation run; the official format "
                      "only holds the av_flow model")
  if config.model.get("token_lookahead", 0):
    raise AvatarError(f"--workdir {workdir}: trained with model.token_lookahead="
                      f"{config.model.token_lookahead}; the official code conditions frame i on "
                      "its own tokens and would sample it wrongly")
  step, params = run_dir.load_params(workdir, which)
  state = official_keys.official_from_av_params(layer_layout.to_layout(_host(params), False))
  torch_writer.write_torch_checkpoint(output, _checkpoint(step, state, config))
  written = [os.path.abspath(output)]
  log(f"wrote {output}: {len(state)} tensors ({sum(v.size for v in state.values()):,} params, "
      f"step {step}, {which} weights)")
  data_dir = config.data.get("stats_from") or config.data.get("dir")
  if data_dir and os.path.exists(os.path.join(os.path.expanduser(data_dir), "manifest.json")):
    differ = stats_differences(manifest_lib.load_manifest(data_dir)["stats"])
    if differ:
      log(f"warning: this run normalises {', '.join(differ)} with its data's statistics "
          f"({data_dir}/manifest.json), not the official constants: the official code will "
          "feed these weights differently scaled streams (fine-tune an imported release with "
          "configs/official_50h.py to keep the official normalisation)")
  if head_vae_output:
    vae_dir = config.head_vae.get("workdir") or os.path.join(workdir, run_dir.HEAD_VAE_DIR)
    vae_step, vae_params = run_dir.load_params(vae_dir, "params",
                                               what=f"head-VAE workdir {vae_dir}")
    vae_state = official_keys.official_from_head_vae_params(_host(vae_params))
    torch_writer.write_torch_checkpoint(head_vae_output, _checkpoint(vae_step, vae_state, config))
    written.append(os.path.abspath(head_vae_output))
    log(f"wrote {head_vae_output}: head VAE, {len(vae_state)} tensors (step {vae_step})")
  return written


def _host(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, jax.device_get(tree))
