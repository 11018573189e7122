"""AV-Flow and the paper's three ablations of it (Table 1), selected by `config.model.variant`.

  av_flow   two towers joined by highway fusion after every block pair (`dit.AVFlowTransformer`)
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
`visual_velocity`). The blocks are `dit`'s, so width, depth, windows, attention, remat and
dtype mean the same in every variant.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from avflow_jax.models import attention
from avflow_jax.models import dit

VARIANTS = ("av_flow", "separate", "shared", "cascaded")
Dtype = Any


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
    h = dit.dense(self.d_model, ("input", "embed"), "input_proj", self.dtype)(
        jnp.concatenate([x.astype(self.dtype), cond.astype(self.dtype)], -1))
    temb = dit.TimeEmbedding(self.d_model, self.dtype, name="time_embed")(t)
    block_cls = dit.DiTBlock
    if self.remat != "none":
      block_cls = nn.remat(dit.DiTBlock, policy=dit.REMAT_POLICIES[self.remat])
    for i, window in enumerate(self.windows):
      h = block_cls(self.d_model, self.hidden_dim, self.num_heads, window,
                    self.attention_block, self.dtype, self.attention, name=f"block_{i}")(
                        h, temb, lengths)
    out = dit.dense(self.out_dim, ("embed", "output"), "out", self.dtype)(h)
    return out.astype(jnp.float32)


def _tower(m: "_TowerArgs", out_dim: int, name: str) -> Tower:
  """A `Tower` of `m`'s size, created in `m` (call from its compact method or setup)."""
  return Tower(out_dim, m.d_model, m.hidden_dim, m.num_heads, m.windows, m.attention_block,
               m.remat, m.dtype, m.attention, name=name)


class _TowerArgs(nn.Module):
  """The fields every ablation shares with `dit.AVFlowTransformer`."""
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


def variant_of(model_cfg) -> str:
  """`config.model.variant`, "av_flow" for runs saved before the knob existed."""
  return model_cfg.get("variant", "av_flow")


def make_av_model(model_cfg, dims: dit.AVDims) -> nn.Module:
  """Builds the velocity network of `config.model.variant` from the config and stream widths.

  `model.attention` "auto" is resolved here for the default device (`attention.
  resolve_implementation`); knobs that old run configs lack take their old behaviour.

  Raises:
    ValueError: naming `config.model.variant` when it is not one of `VARIANTS`.
  """
  variant = variant_of(model_cfg)
  if variant not in VARIANTS:
    raise ValueError(f"config.model.variant: {variant!r} is not one of {VARIANTS}")
  dtype = jnp.dtype(model_cfg.dtype)
  impl = attention.resolve_implementation(model_cfg.get("attention", "blocked"), dtype,
                                          model_cfg.d_model // model_cfg.num_heads)
  kw = dict(visual_dim=dims.visual, audio_dim=dims.audio, d_model=model_cfg.d_model,
            hidden_dim=model_cfg.hidden_dim, num_heads=model_cfg.num_heads,
            windows=dit.layer_windows(model_cfg.windows, model_cfg.num_layers),
            attention_block=model_cfg.attention_block,
            remat=dit.remat_policy(model_cfg.get("remat", False)), dtype=dtype, attention=impl)
  if variant == "av_flow":
    return dit.AVFlowTransformer(**kw, fusion=model_cfg.fusion,
                                 scan_layers=bool(model_cfg.get("scan_layers", False)))
  kw["windows"] = dit.attention_windows(kw["windows"])
  if variant == "separate":
    return SeparateTransformer(**kw)
  if variant == "shared":
    return SharedTransformer(**kw)
  return CascadedTransformer(**kw, participant_dim=dims.participant)


def init_av_params(model: nn.Module, dims: dit.AVDims, rng, frames: int = 16):
  """Initial params (leaves boxed with their logical axis names) for `frames`-long inputs."""
  z = lambda d: jnp.zeros((1, frames, d), jnp.float32)
  extra = {"audio_cond": z(dims.audio)} if is_cascaded(model) else {}
  return model.init(rng, z(dims.visual), z(dims.audio), z(dims.cond), jnp.zeros((1,)),
                    **extra)["params"]
