"""The Python API: a trained avatar that turns text, speech or ASR tokens into voice and motion.

  from avflow_jax import api
  avatar = api.Avatar.load("runs/demo", vocoder_weights="bigvgan.safetensors")
  out = avatar.generate(tokens)          # tokens: (T, 29) raw ASR logits on the mel grid
  out["waveform"], out["face_30fps"], out["head_30fps"]
  t2t = api.load_text_to_tokens("runs/t2t_demo")
  tokens = api.text_to_tokens("Peter baked a pie.", t2t)

This module only gathers the public names; they live in `avflow_jax.inference`
(`avatar`: loading and sampling an avatar; `streaming`: sampling it on a stream;
`text_tokens`: a text-to-tokens run).
"""

from avflow_jax.core.errors import AvatarError
from avflow_jax.inference.avatar import MEL_VOCODER_RANGE
from avflow_jax.inference.avatar import VIDEO_FPS
from avflow_jax.inference.avatar import Avatar
from avflow_jax.inference.avatar import compiled_programs
from avflow_jax.inference.avatar import frames_at_fps
from avflow_jax.inference.avatar import load_asr
from avflow_jax.inference.avatar import resample_to_fps
from avflow_jax.inference.avatar import tokens_from_audio
from avflow_jax.inference.buckets import DEFAULT_BUCKET
from avflow_jax.inference.buckets import bucket_frames
from avflow_jax.inference.streaming import StreamingSampler
from avflow_jax.inference.text_tokens import MAX_TEXT_FRAMES
from avflow_jax.inference.text_tokens import TextToTokensModel
from avflow_jax.inference.text_tokens import load_text_to_tokens
from avflow_jax.inference.text_tokens import text_ids
from avflow_jax.inference.text_tokens import text_to_tokens
from avflow_jax.inference.text_tokens import tokens_from_ids

__all__ = [
    "Avatar", "AvatarError", "DEFAULT_BUCKET", "MAX_TEXT_FRAMES", "MEL_VOCODER_RANGE",
    "StreamingSampler",
    "TextToTokensModel", "VIDEO_FPS", "bucket_frames", "compiled_programs", "frames_at_fps",
    "load_asr", "load_text_to_tokens", "resample_to_fps", "text_ids", "text_to_tokens",
    "tokens_from_audio", "tokens_from_ids",
]
