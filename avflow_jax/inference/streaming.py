"""Streaming generation: inputs pushed as they arrive, outputs returned as final chunks.

With windowed attention one network evaluation makes frame i depend on the inputs of frames
i - ΣL .. i + ΣR (the windows summed over the layers). The Euler solve applies it once per
step, so the sampler keeps one state per step, x_0 (noise) .. x_K (the sample), each known up to
its own frame, and advances them as a wavefront: step k + 1 reaches frame n_k - lag, where n_k
is how far step k has got. With `lag = ΣR` (exact mode) every frame is computed from the same
inputs as the offline sampler's, so the result equals `sampling.sample` with the same seed (to
float rounding) and does not depend on how the inputs were chunked; the look-ahead is
K × ΣR frames (+ the head-VAE decoder's right window). A smaller lag (low-latency mode) treats
the not-yet-known frames as the end of the sequence when it has to: less look-ahead, a sample
that differs from the offline one by an amount `benchmarks/bench_streaming.py` measures.

In exact mode each step keeps its network's hidden states layer by layer (`layer_cache`), so a
layer is computed only for its new frames, with its own L + R frames of context; with
`cache_layers=False`, and always in low-latency mode, each chunk re-runs the network over a
window of `chunk_frames + ΣL + ΣR` frames. Either way every buffer keeps only the frames its next
window needs, so memory and per-chunk work stay bounded however long the stream runs, and each
window has a fixed length, so one compiled program per shape serves every call; rotary positions
inside a window are relative to its first frame, which keeps them small in an always-on stream
(attention depends on position differences).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core import flow
from avflow_jax.inference import layer_cache
from avflow_jax.inference import sampling
from avflow_jax.models import dit
from avflow_jax.models import layer_cut

STREAMS = ("mel", "face", "head", "head_latent", "face_30fps", "head_30fps")


def receptive_field(windows) -> tuple[int, int]:
  """(ΣL, ΣR): how far one network evaluation reaches to the left and right.

  Raises:
    ValueError: a layer's window is unbounded on a side (such a model cannot stream).
  """
  if not windows or any(w is None or min(w) < 0 for w in windows):
    raise ValueError(f"config.model.windows={tuple(windows)}: streaming needs a bounded "
                     "(left, right) window in every layer")
  return sum(int(w[0]) for w in windows), sum(int(w[1]) for w in windows)


@functools.partial(jax.jit, static_argnums=(0,))
def _window_velocity(av_model, av_params, x, cond, t, valid):
  """The velocity of one (1, W, V + A) window whose first `valid` frames are real."""
  vis = av_model.visual_dim
  vv, va = av_model.apply({"params": av_params}, x[..., :vis], x[..., vis:], cond,
                          jnp.full((1,), t, jnp.float32), valid[None])
  return jnp.concatenate([vv, va], -1)[0]


@functools.partial(jax.jit, static_argnums=(0,))
def _window_head(head_vae, vae_params, z, valid):
  """The normalised head pose of one (1, W, latent) window of latents."""
  mask = jnp.arange(z.shape[1])[None, :] < valid
  return head_vae.apply({"params": vae_params}, z, mask, method=head_vae.decode)[0]


@functools.partial(jax.jit, static_argnums=(2, 3))
def _noise_block(key, start, count, dim):
  return flow.frame_noise(key, start, count, dim)


class FpsStream:
  """A mel-rate stream resampled to `fps` as it arrives.

  Frame j sits at mel position (j + 0.5) × 86.13 / fps - 0.5 and is returned once both mel
  frames around it have arrived, so the frames equal `align.resample_stream` of the whole
  stream (the offline `face_30fps` / `head_30fps`), the last ones included once `close` says
  how long it was.
  """

  def __init__(self, fps: float = C.VIDEO_FPS):
    self.fps, self._buf, self._start, self._out = float(fps), None, 0, 0

  def _positions(self, a: int, b: int) -> np.ndarray:
    return (np.arange(a, b, dtype=np.float64) + 0.5) * (C.FRAME_RATE / self.fps) - 0.5

  def push(self, x: np.ndarray, closed: bool = False) -> np.ndarray:
    """Adds (n, ...) mel-rate frames; returns the `fps` frames that became final."""
    x = np.asarray(x, np.float64)
    self._buf = x if self._buf is None else np.concatenate([self._buf, x])
    n = self._start + len(self._buf)  # Mel frames so far.
    if n == 0:
      return np.zeros((0,) + x.shape[1:], np.float32)
    if closed:
      last = max(1, int(round(n * self.fps / C.FRAME_RATE)))  # As `avatar.frames_at_fps`.
    else:  # Frames j with position < n - 1: both neighbours have arrived (never more than
      # the closed stream's count, round(n × fps / 86.13)).
      last = int(np.ceil((n - 0.5) * self.fps / C.FRAME_RATE - 0.5))
      while last > 0 and self._positions(last - 1, last)[0] >= n - 1:
        last -= 1
    pos = np.clip(self._positions(self._out, max(last, self._out)), 0.0, n - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (pos - i0).reshape((-1,) + (1,) * (x.ndim - 1))
    buf = lambda i: self._buf[i - self._start]
    y = (buf(i0) * (1.0 - w) + buf(i1) * w).astype(np.float32)
    self._out = max(last, self._out)
    keep = int(np.floor(np.clip(self._positions(self._out, self._out + 1)[0], 0, n - 1)))
    self._buf, self._start = self._buf[keep - self._start:], keep
    return y


class StreamingSampler:
  """The flow sampler of one sequence, fed frame chunks and returning final frames.

  Attributes:
    lookahead_frames: input frames the sampler needs past an output frame before returning it
      (K × lag + the head-VAE decoder's right window + the model's token look-ahead; 0 more
      once `close` is called).
    exact: whether the output equals the offline sampler's (exact mode and a windowed head-VAE
      decoder; with a full-attention decoder only the head pose differs).
  """

  def __init__(self, av_model, head_vae, params, *, seed: int = 0, num_steps: int = 8,
               chunk_frames: int = 64, lag_frames: Optional[int] = None,
               temperature: float = 1.0, head_context_frames: int = 256,
               uses_participant: bool = False, cache_layers: bool = True):
    """Args:
      av_model, head_vae, params: as `sampling.sample` takes them (any variant but cascaded).
      seed: noise seed; frame i starts from `frame_noise(fold_in(PRNGKey(seed), 0), i, ...)`,
        the offline sampler's noise for batch element 0.
      num_steps: Euler steps K.
      chunk_frames: frames computed per network evaluation (work per call, not results).
      lag_frames: frames each step lags the one before; None = ΣR (exact mode).
      temperature: scale of the initial noise.
      head_context_frames: left context of a full-attention head-VAE decoder (which the stream
        can only approximate); a windowed decoder uses its own window.
      uses_participant: whether the model is conditioned on participant features (dyadic), so
        every `push` must bring them.
      cache_layers: in exact mode, keep every layer's hidden states and compute each layer
        only for its new frames (`layer_cache.CachedVelocity`: the same numbers, about 2.5x
        less compute for 0.5 s pushes); False re-runs the network over each chunk's whole receptive
        field, as the low-latency mode always does.
    """
    if dit.is_cascaded(av_model):
      raise ValueError("config.model.variant='cascaded': the two-stage sampler does not "
                       "stream; use av_flow, separate or shared")
    if int(num_steps) < 1 or int(chunk_frames) < 1:
      raise ValueError(f"num_steps={num_steps}, chunk_frames={chunk_frames}: both must be >= 1")
    self.left, self.right = receptive_field(av_model.windows)
    self.lag = self.right if lag_frames is None else int(lag_frames)
    if not 0 <= self.lag <= self.right:
      raise ValueError(f"lag_frames={lag_frames}: must be in 0..{self.right} (ΣR of the "
                       "model's windows; None for exact mode)")
    self.av_model, self.head_vae, self.params = av_model, head_vae, params
    self.num_steps, self.chunk = int(num_steps), int(chunk_frames)
    self.window_frames = self.chunk + self.left + self.right
    self.vis, width = av_model.visual_dim, av_model.visual_dim + av_model.audio_dim
    self.latent_dim = head_vae.latent_dim
    hw = head_vae.window
    self.head_left, self.head_right = ((int(head_context_frames), 0) if hw is None
                                       else (int(hw[0]), int(hw[1])))
    self.exact = self.lag == self.right and hw is not None
    # Exact mode is frame-accurate; low-latency mode rounds the first step down to a chunk
    # boundary (up to chunk_frames - 1 frames), then each step lags by exactly `lag`.
    ahead = self.num_steps * self.lag + (0 if self.lag == self.right else self.chunk - 1)
    if hw is None and self.lag == self.right:  # A full-attention decoder's chunk boundary.
      ahead += self.chunk - 1
    self.token_lookahead = int(getattr(av_model, "token_lookahead", 0))
    self.lookahead_frames = ahead + self.head_right + self.token_lookahead
    self._key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    self._temperature = np.float32(temperature)
    self._width = width
    self.uses_participant = bool(uses_participant)
    self._cond = None  # Frames once the first chunk shows the conditioning width.
    # Raw inputs not yet turned into conditioning: frame i's needs the tokens of i + k.
    self._raw_tokens, self._raw_part, self._raw_start, self._pushed = [], [], 0, 0
    self._states = [layer_cache.Frames(width) for _ in range(self.num_steps + 1)]
    self._head = layer_cache.Frames(int(params["stats"]["head"][0].shape[-1]))
    self._cached = None
    if cache_layers and self.lag == self.right:
      cut = layer_cut.cut(av_model)
      self._cached = [layer_cache.CachedVelocity(cut, params["av"], k / self.num_steps,
                                                 self.chunk) for k in range(self.num_steps)]
    self._emitted = 0
    self._video = {"face": FpsStream(), "head": FpsStream()}
    self.closed = False

  @classmethod
  def for_avatar(cls, avatar, **kwargs) -> "StreamingSampler":
    """The stream of an `avatar.Avatar` (its EMA weights, statistics and head VAE).

    Args:
      avatar: a loaded `Avatar`.
      **kwargs: as the constructor takes them (seed, num_steps, chunk_frames, lag_frames,
        temperature, head_context_frames); temperature defaults to the run's
        `sample.temperature`.
    """
    loaded = avatar.loaded
    kwargs.setdefault("temperature", loaded.sample_temperature)
    return cls(loaded.model, loaded.head_vae, loaded.params,
               uses_participant=loaded.uses_participant, **kwargs)

  @property
  def frames_in(self) -> int:
    """Input frames pushed so far."""
    return self._pushed

  @property
  def frames_out(self) -> int:
    """Output frames returned so far."""
    return self._emitted

  def buffered_frames(self) -> int:
    """Frames held in all buffers (bounded by the look-ahead and windows, not the stream)."""
    held = [len(s.data) for s in self._states] + [len(self._head.data)]
    held += [len(t) for t in self._raw_tokens]
    held += [c.buffered_frames() for c in self._cached or ()]
    return sum(held) + (0 if self._cond is None else len(self._cond.data))

  def push(self, tokens, participant=None) -> dict[str, np.ndarray]:
    """Adds input frames; returns the output frames that became final (possibly none).

    Args:
      tokens: (n, 29) raw ASR token logits on the mel grid.
      participant: (n, 87) raw participant features (dyadic models, same frames).

    Returns:
      {"mel", "face", "head", "head_latent"}: (m, .) float32 arrays of the next m frames.
    """
    if self.closed:
      raise ValueError("push after close: start a new StreamingSampler")
    tokens = np.asarray(tokens, np.float32)
    if tokens.ndim != 2:
      raise ValueError(f"tokens: shape {tokens.shape}, expected (frames, token dims)")
    if (participant is not None) != self.uses_participant:
      raise ValueError("participant: this model " + (
          "is conditioned on participant features; push them with the tokens"
          if self.uses_participant else "takes no participant features"))
    if participant is not None:
      participant = np.asarray(participant, np.float32)
      if participant.ndim != 2 or participant.shape[0] != tokens.shape[0]:
        raise ValueError(f"participant: shape {participant.shape}, expected "
                         f"({tokens.shape[0]}, features): the tokens' frames")
    if tokens.shape[0]:
      self._raw_tokens.append(tokens)
      self._raw_part.append(participant)
      self._pushed += tokens.shape[0]
      self._condition()
    return self._advance()

  def _condition(self) -> None:
    """Turns the raw inputs into conditioning and initial noise as far as they reach."""
    k = self.token_lookahead
    start = self._states[0].end  # Conditioning frames so far.
    end = self._pushed if self.closed else self._pushed - k
    if end <= start:
      return
    tok = np.concatenate(self._raw_tokens)  # Frames [self._raw_start, self._pushed).
    idx = np.minimum(np.arange(start, end) + k, self._pushed - 1) - self._raw_start
    part = None
    if self.uses_participant:
      part = np.concatenate(self._raw_part)[start - self._raw_start:end - self._raw_start]
    cond = np.asarray(sampling.condition(self.params["stats"], tok[idx], part))
    if self._cond is None:
      self._cond = layer_cache.Frames(cond.shape[-1])
    self._cond.append(cond)
    n = end - start
    noise = np.concatenate([np.asarray(_noise_block(self._key, np.uint32(a), self.chunk,
                                                    self._width))
                            for a in range(start, end, self.chunk)])[:n]
    self._states[0].append(self._temperature * noise)
    # Keep the raw frames the next conditioning frames read: from `end` on.
    self._raw_tokens = [tok[end - self._raw_start:]]
    if self.uses_participant:
      self._raw_part = [np.concatenate(self._raw_part)[end - self._raw_start:]]
    else:
      self._raw_part = [None]
    self._raw_start = end

  def close(self) -> dict[str, np.ndarray]:
    """Ends the input: the remaining frames, computed as the offline sampler ends a sequence."""
    self.closed = True
    if self._pushed:
      self._condition()  # The last frames' tokens: the last real one held.
    return self._advance()

  # ---- The wavefront ---------------------------------------------------------------------------

  def _target(self, src_end: int, dst_end: int, lag: int, grid) -> int:
    """How far a state may advance given how far its source has got.

    With `grid` None (exact) any frame whose receptive field has arrived. Otherwise up to a
    chunk boundary (the multiples of `chunk_frames` shifted left by `grid` frames), each chunk
    computed from its source up to its own end + `lag`: the frames then depend on the grid
    alone, never on how the input happened to be pushed. Step k's grid is shifted by k × lag,
    so a source that stops on its boundary lets the next step stop on its own.
    """
    if self.closed:
      return src_end
    if grid is None:
      return max(dst_end, src_end - lag)
    return max(dst_end, (src_end - lag + grid) // self.chunk * self.chunk - grid)

  def _chunk_end(self, a: int, target: int, grid) -> int:
    if grid is None:
      return min(a + self.chunk, target)
    return min(((a + grid) // self.chunk + 1) * self.chunk - grid, target)

  def _advance(self) -> dict[str, np.ndarray]:
    dt = np.float32(1.0 / self.num_steps)
    for k in range(self.num_steps):
      src, dst = self._states[k], self._states[k + 1]
      if self._cached is not None:
        v = self._cached[k].advance(src, self._cond, self.closed)
        dst.append(src.get(dst.end, dst.end + len(v)) + dt * v)
      else:
        self._step_windows(k, src, dst, dt)
      src.drop_before(dst.end - self.left)  # The left context of its next window.
    if self._cond is not None:  # The last step is the furthest behind.
      self._cond.drop_before(self._states[-1].end - self.left)
    self._decode_head()
    return self._emit()

  def _step_windows(self, k: int, src, dst, dt) -> None:
    """Euler step k as far as it may go, each chunk from a window over its receptive field."""
    grid = None if self.lag == self.right else k * self.lag
    target = self._target(src.end, dst.end, self.lag, grid)
    t = np.float32(k) * dt
    while dst.end < target:
      a = dst.end
      b = self._chunk_end(a, target, grid)
      s = max(0, a - self.left)
      x, valid = src.window(s, self.window_frames)
      valid = min(valid, min(src.end, b + self.lag) - s)  # Keys past that are masked.
      c, _ = self._cond.window(s, self.window_frames)
      v = np.asarray(_window_velocity(self.av_model, self.params["av"], x[None], c[None],
                                      t, np.int32(valid)))
      dst.append(src.get(a, b) + dt * v[a - s:b - s])

  def _decode_head(self) -> None:
    final = self._states[-1]
    # A windowed decoder is exact frame by frame; a full-attention one sees [chunk - context,
    # chunk end), on the grid the last step ends on.
    grid = None if self.head_vae.window is not None else (
        0 if self.lag == self.right else (self.num_steps - 1) * self.lag)
    target = self._target(final.end, self._head.end, self.head_right, grid)
    length = self.chunk + self.head_left + self.head_right
    face = self.vis - self.latent_dim
    while self._head.end < target:
      a = self._head.end
      b = self._chunk_end(a, target, grid)
      s = max(0, a - self.head_left)
      z, valid = final.window(s, length)
      valid = min(valid, min(final.end, b + self.head_right) - s)
      h = np.asarray(_window_head(self.head_vae, self.params["head_vae"],
                                  z[None, :, face:self.vis], np.int32(valid)))
      self._head.append(h[a - s:b - s])

  def _emit(self) -> dict[str, np.ndarray]:
    a, b = self._emitted, self._head.end
    x = self._states[-1].get(a, b)
    stats = self.params["stats"]
    face = self.vis - self.latent_dim
    denorm = lambda y, name: y * np.asarray(stats[name][1]) + np.asarray(stats[name][0])
    out = {"mel": denorm(x[:, self.vis:], "mel"), "face": denorm(x[:, :face], "face"),
           "head": sampling.unit_quaternions(denorm(self._head.get(a, b), "head")),
           "head_latent": x[:, face:self.vis].copy()}
    out["face_30fps"] = self._video["face"].push(out["face"], self.closed)
    out["head_30fps"] = sampling.unit_quaternions(
        self._video["head"].push(out["head"], self.closed))
    self._emitted = b
    self._head.drop_before(b)
    self._states[-1].drop_before(min(b, self._head.end) - self.head_left)
    return {k: v.astype(np.float32) for k, v in out.items()}
