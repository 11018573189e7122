"""An always-on conversation: utterances queued as they arrive, the avatar listening between them.

A conversation has one clock: the input frame on the mel grid (86.13 fps). `advance(n)` pushes
the next n input frames into a `StreamingSampler`: the queued utterances' tokens in turn, and
silence tokens (`constants.SILENCE_*`: the avatar listens) when nothing is waiting, with the
participant's features of the same frames (a recording played back, then the still average
listener). It returns what became final: the waveform (`StreamingVocoder`), the motion at 30 fps
(with the rig channels of a rig avatar), and the turns whose audio started or ended. Whoever
drives it decides the pace: `serve` keeps the output a little ahead of real time.

An utterance starts where the input clock stands when it is queued (or where the one before it
ends), so its audio follows `lookahead_frames` after the output reached that point: the price
of the windows' look-ahead, which cannot be taken back.
"""

import dataclasses
from typing import Callable, Optional

import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core.errors import AvatarError
from avflow_jax.inference import streaming
from avflow_jax.inference import vocoder as vocoder_lib


def silence_tokens(num_frames: int) -> np.ndarray:
  """(num_frames, 29) token logits of a pause: the blank wins every frame."""
  x = np.full((int(num_frames), C.TOKEN_DIM), C.SILENCE_OTHER_LOGIT, np.float32)
  x[:, C.TOKEN_LABELS.index("-")] = C.SILENCE_BLANK_LOGIT
  return x


@dataclasses.dataclass
class Utterance:
  """One queued turn of the avatar: input frames [start, end) on the conversation clock."""
  id: int
  start: int
  end: int
  text: Optional[str] = None
  started: bool = False  # Its first audio has been returned.

  @property
  def seconds(self) -> float:
    return (self.end - self.start) / C.FRAME_RATE


class Conversation:
  """The streaming avatar of one conversation partner (one page, one program)."""

  def __init__(self, avatar, *, seed: int = 0, num_steps: int = 8, chunk_frames: int = 32,
               lag_frames: Optional[int] = None, vocoder_chunk_frames: int = 16,
               vocoder_context_frames: Optional[int] = None,
               vocoder_crossfade_frames: Optional[int] = None,
               text_to_tokens: Optional[Callable[[str], np.ndarray]] = None,
               participant: Optional[np.ndarray] = None,
               participant_audio: Optional[np.ndarray] = None, max_queued_seconds: float = 60.0):
    """Args:
      avatar: a loaded `avatar.Avatar` (any windowed, non-cascaded model).
      seed, num_steps, chunk_frames, lag_frames: as `StreamingSampler` takes them.
      vocoder_chunk_frames: mel frames per vocoder call (fewer: less look-ahead, more calls).
      vocoder_context_frames, vocoder_crossfade_frames: `StreamingVocoder`'s (None: the
        vocoder's defaults); the look-ahead is chunk + context + crossfade - 1 frames.
      text_to_tokens: text -> (T, 29) raw token logits (a text-to-tokens run), for `say`.
      participant: (T, 87) recorded participant features on the mel grid (dyadic avatars),
        played from frame 0; afterwards, and when None, the training mean listens.
      participant_audio: the recording's waveform at 22,050 Hz, returned beside the avatar's
        samples so a player can mix the two in step.
      max_queued_seconds: speech waiting to be spoken beyond which `say` refuses more.
    """
    self.avatar = avatar
    self.sampler = streaming.StreamingSampler.for_avatar(
        avatar, seed=seed, num_steps=num_steps, chunk_frames=chunk_frames,
        lag_frames=lag_frames)
    self.vocoder = vocoder_lib.StreamingVocoder(
        avatar.vocoder, chunk_frames=vocoder_chunk_frames, context_frames=vocoder_context_frames,
        crossfade_frames=vocoder_crossfade_frames)
    self.lookahead_frames = self.sampler.lookahead_frames + self.vocoder.lookahead_frames
    self._text_to_tokens = text_to_tokens
    self.dyadic = bool(avatar.loaded.uses_participant)
    if participant is not None and not self.dyadic:
      raise AvatarError("participant given, but this avatar was trained without participant "
                        "features")
    if participant is not None:
      avatar.prepare(silence_tokens(len(participant)), participant)  # Shape, finite, range.
    self._participant = None if participant is None else np.asarray(participant, np.float32)
    self._listener = (avatar.neutral_participant(1)[0] if self.dyadic else None)
    self._participant_audio = (None if participant_audio is None else
                               np.asarray(participant_audio, np.float32).reshape(-1))
    self.max_queued_frames = int(max_queued_seconds * C.FRAME_RATE)
    self._queue: list[Utterance] = []  # Not yet fully spoken, in order.
    self._pending: list[np.ndarray] = []  # Their tokens not yet pushed.
    self._next_id = 0
    self._audio_out = 0  # Samples returned so far.
    self._video_out = 0  # 30 fps frames returned so far.
    self._rig = avatar.face_rig

  @property
  def text_enabled(self) -> bool:
    return self._text_to_tokens is not None

  @property
  def frames_in(self) -> int:
    """Input frames pushed so far (the conversation clock)."""
    return self.sampler.frames_in

  @property
  def audio_frames_out(self) -> float:
    """Mel frames whose audio has been returned."""
    return self._audio_out / C.HOP_LENGTH

  def queued_frames(self) -> int:
    """Input frames of speech queued but not yet pushed."""
    return sum(len(t) for t in self._pending)

  # ---- Input -----------------------------------------------------------------------------------

  def say(self, text: str) -> Utterance:
    """Queues a sentence (through the text-to-tokens run).

    Raises:
      AvatarError: no text-to-tokens run, empty or unspeakable text, or too much queued.
    """
    if self._text_to_tokens is None:
      raise AvatarError("typed text needs a text-to-tokens run (serve --t2t-workdir RUN); "
                        "send token frames instead")
    if not isinstance(text, str) or not text.strip():
      raise AvatarError("the text is empty")
    return self.say_tokens(self._text_to_tokens(text), text=text.strip())

  def say_tokens(self, tokens, text: Optional[str] = None) -> Utterance:
    """Queues (T, 29) raw token logits (an ASR or text-to-tokens front end) as one turn.

    Raises:
      AvatarError: wrong shape, non-finite or implausible values, or too much queued.
    """
    if np.ndim(tokens) != 2:
      raise AvatarError(f"tokens: shape {np.shape(tokens)}, expected (frames, {C.TOKEN_DIM})")
    tok = self.avatar.prepare(tokens, self._participant_frames(0, len(tokens)))[0][0]
    if not len(tok):
      raise AvatarError("the tokens have no frames")
    if self.queued_frames() + len(tok) > self.max_queued_frames:
      raise AvatarError(f"{self.queued_frames() / C.FRAME_RATE:.0f} s of speech are already "
                        f"waiting (limit {self.max_queued_frames / C.FRAME_RATE:.0f} s); wait "
                        "for the avatar to catch up")
    start = max(self.frames_in, self._queue[-1].end if self._queue else 0)
    utt = Utterance(self._next_id, start, start + len(tok), text)
    self._next_id += 1
    self._queue.append(utt)
    self._pending.append(tok)
    return utt

  def _next_tokens(self, n: int) -> np.ndarray:
    parts, left = [], n
    while left and self._pending:
      head = self._pending[0]
      parts.append(head[:left])
      left -= len(parts[-1])
      if len(head) <= len(parts[-1]):
        self._pending.pop(0)
      else:
        self._pending[0] = head[len(parts[-1]):]
    if left:
      parts.append(silence_tokens(left))
    return np.concatenate(parts)

  def _participant_frames(self, a: int, b: int) -> Optional[np.ndarray]:
    if not self.dyadic:
      return None
    out = np.broadcast_to(self._listener, (b - a, self._listener.size)).copy()
    if self._participant is not None and a < len(self._participant):
      rec = self._participant[a:b]
      out[:len(rec)] = rec
    return out

  # ---- Output ----------------------------------------------------------------------------------

  def advance(self, num_frames: int) -> dict:
    """Pushes the next `num_frames` input frames; returns what became final.

    Returns:
      {"audio": (s,) float32 samples at 22,050 Hz from sample "audio_start",
       "participant_audio": the recording's samples of the same span (or None),
       "video_start": index of the first 30 fps frame, "head": (m, 7 | 4), "face": (m, D) codes,
       "rig": (m, 6) rig channels or None, "events": [{"type": "speaking" | "listening",
       "id", "time"}] (time: seconds on the conversation clock)}.
    """
    a = self.frames_in
    n = int(num_frames)
    out = self.sampler.push(self._next_tokens(n), self._participant_frames(a, a + n))
    return self._chunk(out)

  def _chunk(self, out: dict) -> dict:
    video_start = self._video_out
    self._video_out += len(out["face_30fps"])
    audio = self.vocoder.push(out["mel"]) if len(out["mel"]) else np.zeros(0, np.float32)
    start = self._audio_out
    self._audio_out += audio.size
    rec = None
    if self._participant_audio is not None:
      rec = self._participant_audio[start:self._audio_out]
      rec = np.pad(rec, (0, audio.size - rec.size))
    face30 = out["face_30fps"]
    rig = None if self._rig is None else self._rig.decode(face30, clip=True)
    return {"audio": audio, "audio_start": start, "participant_audio": rec,
            "video_start": int(video_start), "head": out["head_30fps"], "face": face30,
            "rig": rig, "events": self._events()}

  def _events(self) -> list[dict]:
    done = self.audio_frames_out
    events = []
    while self._queue:
      u = self._queue[0]
      if not u.started and done > u.start:
        u.started = True
        events.append({"type": "speaking", "id": u.id, "time": u.start / C.FRAME_RATE,
                       "seconds": u.seconds})
      if u.started and done >= u.end:
        events.append({"type": "listening", "id": u.id, "time": u.end / C.FRAME_RATE})
        self._queue.pop(0)
        continue
      break
    return events
