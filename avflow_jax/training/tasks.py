"""What each training run optimises: model, initial params, loss and input stream.

`train.py` is one loop for every task; a task supplies the pieces that differ:
  * "av": the AV-Flow network on [face codes ; head latent] and mel, conditioned on tokens;
  * "head_vae": the head-pose VAE;
  * "text_to_tokens": the Matcha-style text-to-tokens model.
"""

import jax
import jax.numpy as jnp

from avflow_jax.core import flow
from avflow_jax.data import crops
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import head_vae as head_vae_lib
from avflow_jax.training import task as task_lib


def build_head_vae_task(config, manifest: dict, data_dir: str) -> task_lib.Task:
  """The head-pose VAE on random crops of the (normalised) head-pose stream."""
  head_dim = manifest["dims"]["head"]
  model = head_vae_lib.from_config(config, head_dim)
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
    return crops.make_crop_dataset(
        data_dir, manifest, split, global_batch_size=config.batch_size, crop=crop,
        streams=("head",), seed=seed, rows=rows, num_workers=config.data.num_workers,
        cache_mb=config.data.get("cache_mb", 0),
        sampling=config.data.get("crop_sampling", "clips"),
        read_threads=config.data.get("read_threads", 1))

  return task_lib.Task("head_vae", init, loss_fn, make_dataset, crop)


def build_av_task(config, manifest: dict, data_dir: str, vae_model, vae_params) -> task_lib.Task:
  """AV-Flow: flow matching on x1 = [face ; head latent (VAE mean)] and mel given tokens."""
  dims = manifest["dims"]
  face_dim = dims["face"]
  av_dims = av_config.AVDims.from_data(dims, vae_model.latent_dim, config.data.participant)
  model = dit.make_av_model(config.model, av_dims)
  crop = config.data.crop_frames
  weights = {"face": config.loss.face_weight, "head": config.loss.head_weight,
             "mel": config.loss.mel_weight}
  sigma_min = config.loss.sigma_min
  time_sampling = (config.loss.get("time_sampling", "uniform"),
                   config.loss.get("time_loc", 0.0), config.loss.get("time_scale", 1.0))
  lookahead = av_config.token_lookahead(config.model)

  def init(rng):
    return dit.init_av_params(model, av_dims, rng, crop)

  def loss_fn(params, batch, rng, train=True):
    valid = batch["valid"]
    # The head target is the frozen VAE's posterior mean, as in the official trainer.
    head_latent, _ = vae_model.apply({"params": vae_params}, batch["head"], valid > 0, False,
                                     method=vae_model.encode)
    head_latent = jax.lax.stop_gradient(head_latent)
    x1_v = jnp.concatenate([batch["face"], head_latent], -1)
    x1_a = batch["mel"]
    # Frame i is conditioned on the tokens of frame i + token_lookahead (the crop's last real
    # frame held), as the samplers build it.
    cond = av_config.shift_ahead(batch["tokens"], lookahead, valid.sum(-1).astype(jnp.int32))
    if config.data.participant:
      cond = jnp.concatenate([cond, batch["participant"]], -1)
    b = x1_a.shape[0]
    k_t, k_v, k_a = jax.random.split(rng, 3)
    # Validation always draws t uniformly: its loss then weighs the whole path alike, so runs
    # trained with different t distributions are compared on one measure.
    t = flow.sample_time(k_t, b, *time_sampling) if train else flow.sample_time(k_t, b)
    x0_v = jax.random.normal(k_v, x1_v.shape)
    x0_a = jax.random.normal(k_a, x1_a.shape)
    xt_v = flow.interpolate(x0_v, x1_v, t, sigma_min)
    xt_a = flow.interpolate(x0_a, x1_a, t, sigma_min)
    lengths = valid.sum(-1).astype(jnp.int32)
    # The cascaded variant's visual stage is conditioned on the clean mel (teacher forcing).
    extra = {"audio_cond": x1_a} if dit.is_cascaded(model) else {}
    v_v, v_a = model.apply({"params": params}, xt_v, xt_a, cond, t, lengths, **extra)
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
    return crops.make_crop_dataset(
        data_dir, manifest, split, global_batch_size=config.batch_size, crop=crop,
        streams=streams, seed=seed, rows=rows, num_workers=config.data.num_workers,
        cache_mb=config.data.get("cache_mb", 0),
        sampling=config.data.get("crop_sampling", "clips"),
        read_threads=config.data.get("read_threads", 1))

  return task_lib.Task("av", init, loss_fn, make_dataset, crop)
