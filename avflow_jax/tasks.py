"""What each training run optimises: model, initial params, loss and input stream.

`train.py` is one loop for every task; a task supplies the pieces that differ:
  * "av": the AV-Flow network on [face codes ; head latent] and mel, conditioned on tokens;
  * "head_vae": the head-pose VAE;
  * "text_to_tokens": the Matcha-style text-to-tokens model.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from avflow_jax import flow
from avflow_jax import input_pipeline
from avflow_jax.models import dit
from avflow_jax.models import head_vae as head_vae_lib


@dataclasses.dataclass
class Task:
  """The task-specific pieces of a training run.

  Attributes:
    name: task name.
    init: rng -> params (leaves may be nn.LogicallyPartitioned boxes).
    loss_fn: (params, batch, rng, train) -> (scalar loss, dict of scalar metrics).
    make_dataset: (split, seed, rows) -> grain IterDataset of per-host numpy batch dicts, where
      rows are the rows of each global batch this host reads (input_pipeline.process_rows).
    frames_per_example: frames in one example (for frames/s).
    flops_per_example: forward FLOPs of one example (for MFU), or 0 if unknown.
  """
  name: str
  init: Callable[[jax.Array], Any]
  loss_fn: Callable[..., Any]
  make_dataset: Callable[..., Any]
  frames_per_example: int
  flops_per_example: float = 0.0


def head_vae_from_config(config, input_dim: int) -> head_vae_lib.HeadVAE:
  v = config.vae
  return head_vae_lib.HeadVAE(input_dim=input_dim, latent_dim=v.latent_dim, hidden=v.hidden,
                              ff_dim=v.ff_dim, num_heads=v.num_heads, dropout=v.dropout)


def build_head_vae_task(config, manifest: dict, data_dir: str) -> Task:
  """The head-pose VAE on random crops of the (normalised) head-pose stream."""
  head_dim = manifest["dims"]["head"]
  model = head_vae_from_config(config, head_dim)
  crop = config.data.crop_frames

  def init(rng):
    return model.init({"params": rng, "dropout": rng}, jnp.zeros((1, crop, head_dim)))["params"]

  def loss_fn(params, batch, rng, train=True):
    k_sample, k_drop = jax.random.split(rng)
    recon, mu, log_var = model.apply({"params": params}, batch["head"], k_sample,
                                     batch["valid"] > 0, train, rngs={"dropout": k_drop})
    loss, parts = head_vae_lib.vae_loss(recon, batch["head"], mu, log_var, batch["valid"],
                                        config.vae.kld_weight)
    return loss, {"loss_" + k: v for k, v in parts.items()}

  def make_dataset(split, seed, rows=None):
    return input_pipeline.make_crop_dataset(
        data_dir, manifest, split, global_batch_size=config.batch_size, crop=crop,
        streams=("head",), seed=seed, rows=rows, num_workers=config.data.num_workers,
        cache_mb=config.data.get("cache_mb", 0))

  return Task("head_vae", init, loss_fn, make_dataset, crop)


def av_forward_flops(config, visual_dim: int, audio_dim: int, cond_dim: int, frames: int) -> float:
  """Matmul FLOPs of one forward pass over `frames` frames (2 per multiply-add)."""
  m = config.model
  d, h, layers = m.d_model, m.hidden_dim, m.num_layers
  left, right = m.windows if isinstance(m.windows[0], int) else m.windows[0]
  keys = (left + right + 1) if min(left, right) >= 0 else frames
  per_block = 2 * (d * 3 * d + d * d + 2 * d * h) + 4 * keys * d  # qkv, out, ff, attention.
  per_layer = 2 * per_block + (2 * (2 * d) * (2 * d) if m.fusion else 0)
  io = 2 * ((visual_dim + cond_dim) * d + (audio_dim + cond_dim) * d
            + d * visual_dim + d * audio_dim)
  return float(frames * (layers * per_layer + io))


def build_av_task(config, manifest: dict, data_dir: str, vae_model, vae_params) -> Task:
  """AV-Flow: flow matching on x1 = [face ; head latent (VAE mean)] and mel given tokens."""
  dims = manifest["dims"]
  face_dim, mel_dim = dims["face"], dims["mel"]
  latent_dim = vae_model.latent_dim
  cond_dim = dims["tokens"] + (dims.get("participant", 0) if config.data.participant else 0)
  visual_dim = face_dim + latent_dim
  model = dit.make_av_model(config.model, visual_dim=visual_dim, audio_dim=mel_dim)
  crop = config.data.crop_frames
  weights = {"face": config.loss.face_weight, "head": config.loss.head_weight,
             "mel": config.loss.mel_weight}
  sigma_min = config.loss.sigma_min

  def init(rng):
    z = lambda d: jnp.zeros((1, crop, d), jnp.float32)
    return model.init(rng, z(visual_dim), z(mel_dim), z(cond_dim), jnp.zeros((1,)))["params"]

  def loss_fn(params, batch, rng, train=True):
    del train
    valid = batch["valid"]
    # The head target is the frozen VAE's posterior mean, as in the official trainer.
    head_latent, _ = vae_model.apply({"params": vae_params}, batch["head"], valid > 0, False,
                                     method=vae_model.encode)
    head_latent = jax.lax.stop_gradient(head_latent)
    x1_v = jnp.concatenate([batch["face"], head_latent], -1)
    x1_a = batch["mel"]
    cond = batch["tokens"]
    if config.data.participant:
      cond = jnp.concatenate([cond, batch["participant"]], -1)
    b = x1_a.shape[0]
    k_t, k_v, k_a = jax.random.split(rng, 3)
    t = flow.sample_time(k_t, b)
    x0_v = jax.random.normal(k_v, x1_v.shape)
    x0_a = jax.random.normal(k_a, x1_a.shape)
    xt_v = flow.interpolate(x0_v, x1_v, t, sigma_min)
    xt_a = flow.interpolate(x0_a, x1_a, t, sigma_min)
    lengths = valid.sum(-1).astype(jnp.int32)
    v_v, v_a = model.apply({"params": params}, xt_v, xt_a, cond, t, lengths)
    u_v = flow.velocity_target(x0_v, x1_v, sigma_min)
    u_a = flow.velocity_target(x0_a, x1_a, sigma_min)
    preds = {"face": v_v[..., :face_dim], "head": v_v[..., face_dim:], "mel": v_a}
    targets = {"face": u_v[..., :face_dim], "head": u_v[..., face_dim:], "mel": u_a}
    masks = {"face": batch["face_mask"] * valid, "head": valid, "mel": valid}
    total, losses = flow.weighted_l1_losses(preds, targets, masks, weights)
    return total, {"loss_" + k: v for k, v in losses.items()}

  streams = ["mel", "tokens", "face", "head"]
  if config.data.participant:
    streams.append("participant")

  def make_dataset(split, seed, rows=None):
    return input_pipeline.make_crop_dataset(
        data_dir, manifest, split, global_batch_size=config.batch_size, crop=crop,
        streams=streams, seed=seed, rows=rows, num_workers=config.data.num_workers,
        cache_mb=config.data.get("cache_mb", 0))

  flops = av_forward_flops(config, visual_dim, mel_dim, cond_dim, crop)
  task = Task("av", init, loss_fn, make_dataset, crop, flops)
  task.model = model  # Exposed for samplers and benchmarks.
  return task
