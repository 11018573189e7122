"""The AV velocity networks: AV-Flow (two windowed DiTs joined by highway fusion) and the
paper's three ablations of it, with the factory that builds the one `config.model.variant`
names.

AV-Flow's layout follows the official implementation (see ../shared/spec/av_flow_reference.md
§1): per-frame conditioning is concatenated to each tower's noisy input, a shared Fourier time
embedding drives adaLN-zero modulation in every sublayer, and after every block pair a single
Linear(2d, 2d) over [audio ; visual] is split and added back to both towers.

The ablations (Table 1), built from the same blocks so width, depth, windows, attention, remat
and dtype mean the same in each:
  separate  two towers in parallel, one for audio, one for visual, without any connection: each
            has its own input projection, time embedding and output
  shared    a single tower for both modalities: [visual ; audio ; conditioning] in, [visual ;
            audio] velocity out
  cascaded  the audio tower (tokens -> speech) followed by the visual tower (speech -> motion):
            the visual tower is conditioned on the clean mel (ground truth in training, the
            audio stage's sample at inference) and the participant's features, not the tokens
Every variant is called as `model(x_visual, x_audio, cond, t, lengths, audio_cond=None)` and
returns (velocity_visual, velocity_audio); only `cascaded` reads `audio_cond` (the normalised
clean mel), and it samples in two stages (`CascadedTransformer.audio_velocity`, then
`visual_velocity`).
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from avflow_jax.models import attention
from avflow_jax.models import av_config
from avflow_jax.models import layer_layout
from avflow_jax.models import torch_init

Dtype = Any


def dense(features, logical_axes, name, dtype, kernel_init=None, zero_bias=False):
  """A Linear layer with torch's default init whose kernel carries logical axis names."""
  return torch_init.Linear(features, logical_axes, dtype, kernel_init, zero_bias, name=name)


def _adaln_kernel_init(d_model):
  """adaLN-zero: the alpha (gate) columns start at zero so each sublayer starts as identity.

  The other columns (beta, gamma) keep torch's default init, as in the official model.
  """
  def init(key, shape, dtype=jnp.float32):
    w = torch_init.kernel_init(key, shape, dtype)
    return w.at[:, :d_model].set(0.0)
  return init


class TimeEmbedding(nn.Module):
  """Fourier features of t in [0, 1] (not scaled by 1000) followed by an MLP."""
  d_model: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    n = self.d_model // 8
    freqs = np.exp(-np.arange(n) * np.log(10_000.0) / (n - 1)).astype(np.float32)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    emb = dense(self.d_model, ("time", "embed"), "fc1", self.dtype)(emb)
    emb = nn.gelu(emb, approximate=False)
    return dense(self.d_model, ("embed", "time"), "fc2", self.dtype)(emb)


class AdaLNSublayer(nn.Module):
  """x + alpha(t) * f(LayerNorm(x) * (1 + gamma(t)) + beta(t)) with adaLN-zero init."""
  d_model: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, f, residual=None):
    """`residual` (default x) is what f's output adds to: a stream's layer cut passes the
    query frames of x when f computes only those (`layer_cut`)."""
    mod = dense(3 * self.d_model, ("embed", "mod"), "adaln", self.dtype,
                kernel_init=_adaln_kernel_init(self.d_model), zero_bias=True)(temb)
    alpha, beta, gamma = jnp.split(mod[:, None, :], 3, axis=-1)
    # Normalise in float32: bf16 variance of 512 features loses too much.
    y = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=jnp.float32)(x)
    y = (y * (1 + gamma) + beta).astype(self.dtype)
    return (x if residual is None else residual) + alpha * f(y)


class WindowedAttention(nn.Module):
  """Multi-head self-attention with rotary q/k and a (left, right) frame window."""
  d_model: int
  num_heads: int
  window: Optional[tuple[int, int]]
  block: int = 64
  dtype: Dtype = jnp.float32
  implementation: str = "blocked"

  @nn.compact
  def __call__(self, x, lengths=None):
    b, t, _ = x.shape
    hd = self.d_model // self.num_heads
    qkv = dense(3 * self.d_model, ("embed", "qkv"), "qkv", self.dtype)(x)
    # The fused weight is laid out per head as [q_h | k_h | v_h], as in the official layer.
    qkv = qkv.reshape(b, t, self.num_heads, 3 * hd)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    pos = jnp.arange(t)
    q = attention.rotary_embedding(q, pos)
    k = attention.rotary_embedding(k, pos)
    out = attention.windowed_attention(q, k, v, window=self.window, lengths=lengths,
                                       block=self.block, implementation=self.implementation)
    out = out.reshape(b, t, self.d_model)
    return dense(self.d_model, ("qkv", "embed"), "out", self.dtype)(out)


class FeedForward(nn.Module):
  d_model: int
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = dense(self.hidden_dim, ("embed", "mlp"), "fc1", self.dtype)(x)
    h = nn.gelu(h, approximate=False)
    return dense(self.d_model, ("mlp", "embed"), "fc2", self.dtype)(h)


class DiTBlock(nn.Module):
  """Windowed self-attention sublayer then feed-forward sublayer, each adaLN-zero modulated."""
  d_model: int
  hidden_dim: int
  num_heads: int
  window: Optional[tuple[int, int]]
  block: int = 64
  dtype: Dtype = jnp.float32
  implementation: str = "blocked"

  @nn.compact
  def __call__(self, x, temb, lengths=None):
    attn = WindowedAttention(self.d_model, self.num_heads, self.window, self.block,
                             self.dtype, self.implementation, name="attn")
    x = AdaLNSublayer(self.d_model, self.dtype, name="attn_mod")(
        x, temb, lambda y: attn(y, lengths))
    ff = FeedForward(self.d_model, self.hidden_dim, self.dtype, name="ff")
    return AdaLNSublayer(self.d_model, self.dtype, name="ff_mod")(x, temb, ff)


def _layer(xv, xa, temb, lengths, *, suffix: str, d_model, hidden_dim, num_heads, window,
           fusion, block, dtype, implementation, remat):
  """Layer `suffix` of both towers and its highway fusion, created in the calling module."""
  block_cls = DiTBlock
  if remat != "none":
    block_cls = nn.remat(DiTBlock, policy=av_config.REMAT_POLICIES[remat])
  kw = dict(d_model=d_model, hidden_dim=hidden_dim, num_heads=num_heads, window=window,
            block=block, dtype=dtype, implementation=implementation)
  xv = block_cls(**kw, name=f"block_v{suffix}")(xv, temb, lengths)
  xa = block_cls(**kw, name=f"block_a{suffix}")(xa, temb, lengths)
  if fusion:
    # Highway fusion: audio first in the concat, as in the official model.
    y = dense(2 * d_model, ("embed", "fusion"), f"fusion{suffix}", dtype)(
        jnp.concatenate([xa, xv], -1))
    xa = xa + y[..., :d_model]
    xv = xv + y[..., d_model:]
  return xv, xa


class BlockPair(nn.Module):
  """One layer of both towers and its fusion: the unit `scan_layers` repeats (params
  block_v, block_a, fusion; the unrolled model names them block_v_{i}, ...)."""
  d_model: int
  hidden_dim: int
  num_heads: int
  window: Optional[tuple[int, int]]
  fusion: bool = True
  block: int = 64
  dtype: Dtype = jnp.float32
  implementation: str = "blocked"
  remat: str = "none"

  @nn.compact
  def __call__(self, carry, temb, lengths=None):
    xv, xa = _layer(*carry, temb, lengths, suffix="", d_model=self.d_model,
                    hidden_dim=self.hidden_dim, num_heads=self.num_heads, window=self.window,
                    fusion=self.fusion, block=self.block, dtype=self.dtype,
                    implementation=self.implementation, remat=self.remat)
    return (xv, xa), None


class AVFlowTransformer(nn.Module):
  """Joint audio-visual velocity network.

  Attributes:
    visual_dim: face code dims + head latent dims (256 + 8).
    audio_dim: mel bands (80).
    d_model, hidden_dim, num_heads: tower width, feed-forward width, heads.
    windows: one (left, right) per layer; None means unbounded, a negative side is unbounded
      on that side only.
    fusion: whether the highway fusion layers are used (the ablation switches it off).
    attention_block: query block size of the blocked windowed attention.
    remat: a `REMAT_POLICIES` name (or a bool: full / none).
    dtype: compute dtype; parameters are always float32 (LayerNorm, softmax and the outputs
      are computed in float32 whatever it is).
    attention: one of `attention.IMPLEMENTATIONS` (resolve "auto" with
      `attention.resolve_implementation` first).
    scan_layers: run one `BlockPair` under `nn.scan` instead of unrolling the layers (one
      compiled layer; needs the same window for every layer). Its parameters are stacked
      under "layers"; `stack_layers` / `unstack_layers` convert between the layouts.
  """
  visual_dim: int = 264
  audio_dim: int = 80
  d_model: int = 512
  hidden_dim: int = 1024
  num_heads: int = 4
  windows: Sequence[Optional[tuple[int, int]]] = ((16, 8),) * 8
  fusion: bool = True
  attention_block: int = 64
  remat: Any = "none"
  dtype: Dtype = jnp.float32
  attention: str = "blocked"
  scan_layers: bool = False
  # Frames its token conditioning is read ahead (`av_config.shift_ahead`, applied by whoever
  # builds the conditioning: the training task and the samplers); no parameter depends on it.
  token_lookahead: int = 0

  @nn.compact
  def __call__(self, x_visual, x_audio, cond, t, lengths=None):
    """Predicts the flow velocity.

    Args:
      x_visual: (B, T, visual_dim) noisy visual signal.
      x_audio: (B, T, audio_dim) noisy mel.
      cond: (B, T, C) per-frame conditioning (tokens; participant features).
      t: (B,) flow time in [0, 1].
      lengths: optional (B,) valid frames per sequence (keys beyond are masked).

    Returns:
      (velocity_visual (B, T, visual_dim), velocity_audio (B, T, audio_dim)), float32.
    """
    d = self.d_model
    cond = cond.astype(self.dtype)
    xv = dense(d, ("input", "embed"), "input_proj_v", self.dtype)(
        jnp.concatenate([x_visual.astype(self.dtype), cond], -1))
    xa = dense(d, ("input", "embed"), "input_proj_a", self.dtype)(
        jnp.concatenate([x_audio.astype(self.dtype), cond], -1))
    temb = TimeEmbedding(d, self.dtype, name="time_embed")(t)
    windows = list(av_config.attention_windows(self.windows))
    kw = dict(d_model=d, hidden_dim=self.hidden_dim, num_heads=self.num_heads,
              fusion=self.fusion, block=self.attention_block, dtype=self.dtype,
              implementation=self.attention, remat=av_config.remat_policy(self.remat))
    # The scanned pair's remat applies per block inside the scan, as in the unrolled model.
    if self.scan_layers:
      if len(set(windows)) > 1:
        raise ValueError(f"config.model.scan_layers: needs one window for every layer, got "
                         f"{windows}")
      scanned = nn.scan(BlockPair, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=len(windows),
                        metadata_params={nn.PARTITION_NAME: layer_layout.SCAN_NAME})
      (xv, xa), _ = scanned(window=windows[0], **kw, name=layer_layout.SCAN_NAME)((xv, xa), temb, lengths)
    else:
      for i, window in enumerate(windows):
        xv, xa = _layer(xv, xa, temb, lengths, suffix=f"_{i}", window=window, **kw)
    out_v = dense(self.visual_dim, ("embed", "output"), "out_v", self.dtype)(xv)
    out_a = dense(self.audio_dim, ("embed", "output"), "out_a", self.dtype)(xa)
    return out_v.astype(jnp.float32), out_a.astype(jnp.float32)




# ---- The paper's ablations (Table 1) and the factory of every variant -----------------------

class Tower(nn.Module):
  """One diffusion transformer: input projection of [x ; cond], a time embedding, windowed
  DiT blocks and an output projection (the unit the ablations combine)."""
  out_dim: int
  d_model: int
  hidden_dim: int
  num_heads: int
  windows: Sequence[Optional[tuple[int, int]]]
  attention_block: int = 64
  remat: str = "none"
  dtype: Dtype = jnp.float32
  attention: str = "blocked"

  @nn.compact
  def __call__(self, x, cond, t, lengths=None):
    h = dense(self.d_model, ("input", "embed"), "input_proj", self.dtype)(
        jnp.concatenate([x.astype(self.dtype), cond.astype(self.dtype)], -1))
    temb = TimeEmbedding(self.d_model, self.dtype, name="time_embed")(t)
    block_cls = DiTBlock
    if self.remat != "none":
      block_cls = nn.remat(DiTBlock, policy=av_config.REMAT_POLICIES[self.remat])
    for i, window in enumerate(self.windows):
      h = block_cls(self.d_model, self.hidden_dim, self.num_heads, window,
                    self.attention_block, self.dtype, self.attention, name=f"block_{i}")(
                        h, temb, lengths)
    out = dense(self.out_dim, ("embed", "output"), "out", self.dtype)(h)
    return out.astype(jnp.float32)


def _tower(m: "_TowerArgs", out_dim: int, name: str) -> Tower:
  """A `Tower` of `m`'s size, created in `m` (call from its compact method or setup)."""
  return Tower(out_dim, m.d_model, m.hidden_dim, m.num_heads, m.windows, m.attention_block,
               m.remat, m.dtype, m.attention, name=name)


class _TowerArgs(nn.Module):
  """The fields every ablation shares with `AVFlowTransformer`."""
  visual_dim: int = 264
  audio_dim: int = 80
  d_model: int = 512
  hidden_dim: int = 1024
  num_heads: int = 4
  windows: Sequence[Optional[tuple[int, int]]] = ((16, 8),) * 8
  attention_block: int = 64
  remat: str = "none"
  dtype: Dtype = jnp.float32
  attention: str = "blocked"
  token_lookahead: int = 0  # As `AVFlowTransformer.token_lookahead`.


class SeparateTransformer(_TowerArgs):
  """Ablation (a): an audio and a visual tower with nothing between them."""

  @nn.compact
  def __call__(self, x_visual, x_audio, cond, t, lengths=None, audio_cond=None):
    del audio_cond
    return (_tower(self, self.visual_dim, "visual")(x_visual, cond, t, lengths),
            _tower(self, self.audio_dim, "audio")(x_audio, cond, t, lengths))


class SharedTransformer(_TowerArgs):
  """Ablation (b): one tower over the concatenated modalities (inputs and outputs)."""

  @nn.compact
  def __call__(self, x_visual, x_audio, cond, t, lengths=None, audio_cond=None):
    del audio_cond
    x = jnp.concatenate([x_visual, x_audio], -1)
    out = _tower(self, self.visual_dim + self.audio_dim, "shared")(x, cond, t, lengths)
    return out[..., :self.visual_dim], out[..., self.visual_dim:]


class CascadedTransformer(_TowerArgs):
  """Ablation (c): tokens -> mel, then mel (+ participant) -> face codes and head latent.

  Attributes:
    participant_dim: trailing channels of `cond` that are the participant's features (dyadic
      runs; 0 otherwise); the visual stage sees those and the mel, not the tokens.
  """
  participant_dim: int = 0

  def setup(self):
    self.audio = _tower(self, self.audio_dim, "audio")
    self.visual = _tower(self, self.visual_dim, "visual")

  def audio_velocity(self, x_audio, cond, t, lengths=None):
    """Stage 1: the mel's velocity given the tokens (and participant)."""
    return self.audio(x_audio, cond, t, lengths)

  def visual_velocity(self, x_visual, mel, cond, t, lengths=None):
    """Stage 2: the visual velocity given the clean normalised mel (and participant)."""
    visual_cond = mel
    if self.participant_dim:
      visual_cond = jnp.concatenate([mel, cond[..., -self.participant_dim:]], -1)
    return self.visual(x_visual, visual_cond, t, lengths)

  def __call__(self, x_visual, x_audio, cond, t, lengths=None, audio_cond=None):
    if audio_cond is None:
      raise ValueError("the cascaded variant's visual stage needs audio_cond (the clean mel)")
    return (self.visual_velocity(x_visual, audio_cond, cond, t, lengths),
            self.audio_velocity(x_audio, cond, t, lengths))


def is_cascaded(model) -> bool:
  """Whether `model` samples in two stages (audio, then visual given the audio)."""
  return isinstance(model, CascadedTransformer)


def make_av_model(model_cfg, dims: av_config.AVDims) -> nn.Module:
  """Builds the velocity network of `config.model.variant` from the config and stream widths.

  `model.attention` "auto" is resolved here for the default device (`attention.
  resolve_implementation`); knobs that old run configs lack take their old behaviour.

  Raises:
    ValueError: naming `config.model.variant` when it is not one of `VARIANTS`.
  """
  variant = av_config.variant_of(model_cfg)
  if variant not in av_config.VARIANTS:
    raise ValueError(f"config.model.variant: {variant!r} is not one of {av_config.VARIANTS}")
  dtype = jnp.dtype(model_cfg.dtype)
  impl = attention.resolve_implementation(model_cfg.get("attention", "blocked"), dtype,
                                          model_cfg.d_model // model_cfg.num_heads)
  kw = dict(visual_dim=dims.visual, audio_dim=dims.audio, d_model=model_cfg.d_model,
            hidden_dim=model_cfg.hidden_dim, num_heads=model_cfg.num_heads,
            windows=av_config.layer_windows(model_cfg.windows, model_cfg.num_layers),
            attention_block=model_cfg.attention_block,
            remat=av_config.remat_policy(model_cfg.get("remat", False)), dtype=dtype, attention=impl,
            token_lookahead=av_config.token_lookahead(model_cfg))
  if variant == "av_flow":
    return AVFlowTransformer(**kw, fusion=model_cfg.fusion,
                                 scan_layers=bool(model_cfg.get("scan_layers", False)))
  kw["windows"] = av_config.attention_windows(kw["windows"])
  if variant == "separate":
    return SeparateTransformer(**kw)
  if variant == "shared":
    return SharedTransformer(**kw)
  return CascadedTransformer(**kw, participant_dim=dims.participant)


def init_av_params(model: nn.Module, dims: av_config.AVDims, rng, frames: int = 16):
  """Initial params (leaves boxed with their logical axis names) for `frames`-long inputs."""
  z = lambda d: jnp.zeros((1, frames, d), jnp.float32)
  extra = {"audio_cond": z(dims.audio)} if is_cascaded(model) else {}
  return model.init(rng, z(dims.visual), z(dims.audio), z(dims.cond), jnp.zeros((1,)),
                    **extra)["params"]
