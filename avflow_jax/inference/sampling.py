"""The jitted Euler ODE sampler: tokens -> mel, face codes and head pose.

One compiled program holds the whole solve (a `lax.fori_loop` over Euler steps), the head-pose
VAE decoding and the de-normalisation, so a call costs one dispatch. It is deterministic for a
given rng, and a batch sharded over the mesh's batch axes stays sharded through the solve.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from avflow_jax.core import flow
from avflow_jax.models import av_config
from avflow_jax.models import dit


def _norm(x, stats, name):
  mean, std = stats[name]
  return (x - mean) / std


def denormalise(x, stats, name):
  """`x` from the network's normalised units back to data units of stream `name`."""
  mean, std = stats[name]
  return x * std + mean


def unit_quaternions(head):
  """7-d head poses (quaternion + translation) with a unit quaternion; other widths as given.

  numpy in, numpy out (no dispatch or compile); a jax array (or tracer) stays one.
  """
  if head.shape[-1] != 7:
    return head
  xp = np if isinstance(head, np.ndarray) else jnp
  q = head[..., :4]
  n = xp.maximum(xp.linalg.norm(q, axis=-1, keepdims=True), 1e-8)
  return xp.concatenate([q / n, head[..., 4:]], -1).astype(head.dtype)


def condition(stats, tokens, participant=None, token_lookahead: int = 0, lengths=None):
  """The network's per-frame conditioning: normalised tokens (+ normalised participant).

  With `token_lookahead` k (the model's), frame i holds the tokens of frame i + k, the last
  real frame (`lengths`) held: as the model was trained.
  """
  tokens = av_config.shift_ahead(tokens, token_lookahead, lengths)
  cond = _norm(tokens.astype(jnp.float32), stats, "tokens")
  if participant is not None:
    cond = jnp.concatenate([cond, _norm(participant.astype(jnp.float32), stats,
                                        "participant")], -1)
  return cond


def solve_audio_stage(av_model, av_params, cond, x0_audio, num_steps: int, lengths=None):
  """The cascaded variant's first stage: the normalised mel from noise given `cond`."""
  b = cond.shape[0]
  return flow.euler_integrate(
      lambda x, time: av_model.apply({"params": av_params}, x, cond, jnp.full((b,), time),
                                     lengths, method=av_model.audio_velocity),
      x0_audio, num_steps)


def solve_visual_stage(av_model, av_params, cond, mel, x0_visual, num_steps: int,
                       lengths=None):
  """The cascaded variant's second stage: [face codes ; head latent] given the stage-1 mel."""
  b = cond.shape[0]
  return flow.euler_integrate(
      lambda x, time: av_model.apply({"params": av_params}, x, mel, cond, jnp.full((b,), time),
                                     lengths, method=av_model.visual_velocity),
      x0_visual, num_steps)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("num_steps",))
def sample(av_model, head_vae, params, tokens, rng, *, num_steps: int = 8,
           participant: Optional[jax.Array] = None, lengths: Optional[jax.Array] = None,
           temperature: float = 1.0, x0: Optional[jax.Array] = None):
  """Samples one audio-visual sequence per batch element.

  Args:
    av_model: the velocity network of any `config.model.variant` (static); the cascaded one is
      solved in two stages (mel first, then the visual streams given it).
    head_vae: the HeadVAE module (static).
    params: {"av": AV params, "head_vae": VAE params, "stats": {stream: (mean, std)}}.
    tokens: (B, T, 29) raw ASR token logits on the mel frame grid.
    rng: PRNG key; the same key gives the same sample. Batch element b's frame i starts from
      `flow.frame_noise(fold_in(rng, b), i, 1, .)`, whatever the padded length (the streaming
      sampler draws the same numbers).
    num_steps: Euler steps (static; 8 by default, as in the paper).
    participant: optional (B, T, 87) raw participant features (dyadic models).
    lengths: optional (B,) valid frames (for batches padded to a common length).
    temperature: scale of the initial noise.
    x0: optional (B, T, visual + audio) initial noise in the official layout [face codes |
      head latent | mel] (normalised units), used as given instead of drawing it from `rng`
      (`temperature` is not applied): replays a run of the official sampler exactly.

  Returns:
    {"mel": (B, T, 80) log-mel, "face": (B, T, F) codes, "head": (B, T, Dh) head pose,
     "head_latent": (B, T, 8)}, de-normalised to data units.
  """
  stats = params["stats"]
  cond = condition(stats, tokens, participant, getattr(av_model, "token_lookahead", 0), lengths)
  b, t = cond.shape[:2]
  vis, aud = av_model.visual_dim, av_model.audio_dim
  if x0 is None:
    x0 = temperature * flow.initial_noise(rng, b, t, vis + aud)
  elif x0.shape != (b, t, vis + aud):
    raise ValueError(f"x0 has shape {x0.shape}, the sampler needs {(b, t, vis + aud)}")

  if dit.is_cascaded(av_model):
    mel = solve_audio_stage(av_model, params["av"], cond, x0[..., vis:], num_steps, lengths)
    x1 = jnp.concatenate([solve_visual_stage(av_model, params["av"], cond, mel, x0[..., :vis],
                                             num_steps, lengths), mel], -1)
  else:
    def velocity(x, time):
      vv, va = av_model.apply({"params": params["av"]}, x[..., :vis], x[..., vis:], cond,
                              jnp.full((b,), time), lengths)
      return jnp.concatenate([vv, va], -1)

    x1 = flow.euler_integrate(velocity, x0, num_steps)
  latent_dim = head_vae.latent_dim
  face_dim = vis - latent_dim
  # The VAE decoder attends over the whole sequence: padded frames must not leak into it.
  frame_mask = None if lengths is None else jnp.arange(t)[None, :] < lengths[:, None]
  head_n = head_vae.apply({"params": params["head_vae"]}, x1[..., face_dim:vis], frame_mask,
                          method=head_vae.decode)
  head = unit_quaternions(denormalise(head_n, stats, "head"))
  return {
      "mel": denormalise(x1[..., vis:], stats, "mel"),
      "face": denormalise(x1[..., :face_dim], stats, "face"),
      "head": head,
      "head_latent": x1[..., face_dim:vis],
  }
