"""The text-to-tokens training loss: duration, prior and flow-matching terms on a padded batch.

Training aligns symbols to frames with monotonic alignment search (`avflow_jax.models.mas`)
under N(mu, I), then sums the duration MSE in the log domain, the prior NLL of the frames under
their symbols' mu, and optimal-transport conditional flow matching (sigma_min from the model) of
the decoder's velocity estimator. Tokens enter on the model's normalised scale
(`text_to_tokens.normalise_tokens`); the flow-matching target is masked on padded frames.
"""

import math

import jax
import jax.numpy as jnp

from avflow_jax.models import mas
from avflow_jax.models import text_to_tokens

_LOG_2PI = math.log(2.0 * math.pi)


def log_prior(y: jax.Array, mu: jax.Array) -> jax.Array:
  """(B, S, T) log N(y_t; mu_s, I) summed over features, for frames y (B, T, F), mu (B, S, F)."""
  n_feats = y.shape[-1]
  y_sq = -0.5 * jnp.sum(y ** 2, axis=-1)[:, None, :]
  mu_sq = -0.5 * jnp.sum(mu ** 2, axis=-1)[:, :, None]
  cross = jnp.einsum("bsf,btf->bst", mu, y, precision=jax.lax.Precision.HIGHEST)
  return y_sq + cross + mu_sq - 0.5 * _LOG_2PI * n_feats


def loss_fn(params, batch, rng, model: text_to_tokens.TextToTokens, train: bool = True):
  """Duration + prior + flow-matching loss on a padded batch.

  Args:
    params: model parameters.
    batch: {"ids" (B, S) int32, "ids_len" (B,), "tokens" (B, T, F) raw logits,
      "tokens_len" (B,)}; needs 1 <= ids_len <= tokens_len.
    rng: PRNG key (dropout, flow time, noise).
    model: the `TextToTokens` module.
    train: enables dropout.

  Returns:
    (loss, {"dur_loss", "prior_loss", "diff_loss", "loss"}), scalars.
  """
  ids, ids_len = batch["ids"], batch["ids_len"].astype(jnp.int32)
  tokens_len = batch["tokens_len"].astype(jnp.int32)
  y = text_to_tokens.normalise_tokens(batch["tokens"].astype(jnp.float32), model.token_mean,
                                      model.token_std)
  b, n_frames, n_feats = y.shape
  rng_enc, rng_dec, rng_t, rng_z = jax.random.split(rng, 4)
  variables = {"params": params}

  mu_x, logw, x_mask = model.apply(variables, ids, ids_len, train,
                                   method=text_to_tokens.TextToTokens.encode,
                                   rngs={"dropout": rng_enc})
  y_mask = text_to_tokens.sequence_mask(tokens_len, n_frames)
  y = y * y_mask

  # Hard alignment of frames to symbols under the current prior (no gradient).
  attn = mas.maximum_path(jax.lax.stop_gradient(log_prior(y, mu_x)), ids_len, tokens_len)
  attn = jax.lax.stop_gradient(attn)
  logw_target = jnp.log(1e-8 + jnp.sum(attn, axis=-1)) * x_mask[..., 0]
  dur_loss = jnp.sum((logw - logw_target) ** 2) / jnp.sum(ids_len)

  mu_y = jnp.einsum("bst,bsf->btf", attn, mu_x)  # symbol means repeated over their frames.
  n_valid = jnp.sum(y_mask) * n_feats
  prior_loss = jnp.sum(0.5 * ((y - mu_y) ** 2 + _LOG_2PI) * y_mask) / n_valid

  # OT conditional flow matching: straight path from noise z to data y.
  t = jax.random.uniform(rng_t, (b,), jnp.float32)
  z = jax.random.normal(rng_z, y.shape, jnp.float32)
  sigma = model.sigma_min
  tt = t[:, None, None]
  y_t = (1.0 - (1.0 - sigma) * tt) * z + tt * y
  target = y - (1.0 - sigma) * z
  v = model.apply(variables, y_t, y_mask, mu_y, t, train,
                  method=text_to_tokens.TextToTokens.velocity, rngs={"dropout": rng_dec})
  diff_loss = jnp.sum((v - target) ** 2 * y_mask) / n_valid

  loss = dur_loss + prior_loss + diff_loss
  return loss, {"loss": loss, "dur_loss": dur_loss, "prior_loss": prior_loss,
                "diff_loss": diff_loss}
