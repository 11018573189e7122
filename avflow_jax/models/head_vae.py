"""The head-pose VAE: per-frame head pose (7-d quaternion + translation, or the 4-d
Audio2Photoreal head) <-> an 8-d latent, with one transformer encoder layer on each side.

The AV model is trained on the encoder's mean and its head samples are decoded by this model
(../shared/spec/av_flow_reference.md §2).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections


class TransformerLayer(nn.Module):
  """A standard post-norm transformer encoder layer (ReLU feed-forward, no positions)."""
  d_model: int = 16
  num_heads: int = 1
  ff_dim: int = 2048
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, mask=None, train: bool = False):
    attn_mask = None
    if mask is not None:
      attn_mask = nn.make_attention_mask(mask, mask)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.d_model,
                                        name="attn")(x, x, mask=attn_mask)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    x = nn.LayerNorm(epsilon=1e-5, name="norm1")(x + y)
    y = nn.Dense(self.ff_dim, name="ff1")(x)
    y = nn.relu(y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.Dense(self.d_model, name="ff2")(y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return nn.LayerNorm(epsilon=1e-5, name="norm2")(x + y)


class HeadVAE(nn.Module):
  """Transformer VAE over head-pose sequences.

  Attributes:
    input_dim: 7 (quaternion + translation) or 4 (Audio2Photoreal neck/head angles).
    latent_dim: latent size per frame (8).
    hidden: transformer width (16).
    ff_dim: feed-forward width of the transformer layers (2048).
    num_heads: attention heads (1).
    dropout: dropout rate inside the transformer layers.
  """
  input_dim: int = 7
  latent_dim: int = 8
  hidden: int = 16
  ff_dim: int = 2048
  num_heads: int = 1
  dropout: float = 0.1

  def setup(self):
    self.enc_in = nn.Dense(self.hidden)
    self.enc_layer = TransformerLayer(self.hidden, self.num_heads, self.ff_dim, self.dropout)
    self.fc_mu = nn.Dense(self.latent_dim)
    self.fc_var = nn.Dense(self.latent_dim)
    self.dec_in = nn.Dense(self.hidden)
    self.dec_layer = TransformerLayer(self.hidden, self.num_heads, self.ff_dim, self.dropout)
    self.dec_out = nn.Dense(self.input_dim)

  def encode(self, x, mask=None, train: bool = False):
    """(B, T, input_dim) normalised head pose -> (mu, log_var), each (B, T, latent_dim)."""
    h = self.enc_layer(self.enc_in(x), mask, train)
    return self.fc_mu(h), self.fc_var(h)

  def decode(self, z, mask=None, train: bool = False):
    """(B, T, latent_dim) -> (B, T, input_dim) normalised head pose."""
    return self.dec_out(self.dec_layer(self.dec_in(z), mask, train))

  def __call__(self, x, rng=None, mask=None, train: bool = False):
    mu, log_var = self.encode(x, mask, train)
    z = mu
    if rng is not None:
      z = mu + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mu.shape)
    return self.decode(z, mask, train), mu, log_var


def vae_loss(recon, x, mu, log_var, frame_mask: Optional[jax.Array] = None,
             kld_weight: float = 1.0):
  """Mean |recon - x| + kld_weight * KL(q(z|x) || N(0, I)), averaged over valid frames.

  Returns:
    (total loss, dict of the two terms).
  """
  if frame_mask is None:
    frame_mask = jnp.ones(x.shape[:2], jnp.float32)
  n = jnp.maximum(frame_mask.sum(), 1.0)
  l1 = (jnp.abs(recon - x).mean(-1) * frame_mask).sum() / n
  kl = -0.5 * jnp.sum(1 + log_var - mu ** 2 - jnp.exp(log_var), axis=-1)
  kl = (kl * frame_mask).sum() / n
  return l1 + kld_weight * kl, {"recon_l1": l1, "kl": kl}


def default_config() -> ml_collections.ConfigDict:
  """The official head VAE's architecture (the `config.vae` of a head-VAE run)."""
  c = ml_collections.ConfigDict()
  c.latent_dim = 8  # Latent dims per frame (the AV model's head target).
  c.hidden = 16  # Transformer width.
  c.ff_dim = 2048  # Transformer feed-forward width.
  c.num_heads = 1  # Attention heads.
  c.dropout = 0.1  # Dropout inside the transformer layers.
  c.kld_weight = 1.0  # Weight of the KL term.
  return c


def from_config(vae_cfg, input_dim: int) -> HeadVAE:
  """The HeadVAE of a head-VAE run config (its `vae` field) for `input_dim`-d poses."""
  v = vae_cfg.vae
  return HeadVAE(input_dim=input_dim, latent_dim=v.latent_dim, hidden=v.hidden,
                 ff_dim=v.ff_dim, num_heads=v.num_heads, dropout=v.dropout)
