"""A trained text-to-tokens run: text -> (T, 29) token logits on the mel grid, for the avatar."""

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core import run_dir
from avflow_jax.core.errors import AvatarError
from avflow_jax.inference import buckets

# Longest text -> tokens output of one call (190 s): the decoder's attention grows with its square.
MAX_TEXT_FRAMES = 64 * 256


@dataclasses.dataclass(frozen=True)
class TextToTokensModel:
  """A loaded text-to-tokens run."""
  workdir: str
  config: Any
  model: Any
  params: Any
  step: int = 0  # Training step of the loaded checkpoint.

  @property
  def token_mean(self) -> float:
    """The run's token mean (config.model.token_mean; the official constant for older runs)."""
    return float(getattr(self.model, "token_mean", C.TOKEN_MEAN))

  @property
  def token_std(self) -> float:
    """The run's token standard deviation (config.model.token_std, as `token_mean`)."""
    return float(getattr(self.model, "token_std", C.TOKEN_STD))


def load_text_to_tokens(workdir: str, which: str = "ema") -> TextToTokensModel:
  """Loads the latest checkpoint of a text-to-tokens training workdir.

  The model is built from the run's config.json, token statistics included
  (`model.token_mean` / `token_std`; a config without them gets the official constants), so
  synthesis de-normalises with the statistics the run was trained (or imported) with.

  Raises:
    AvatarError: missing workdir/config/checkpoint, or not a text-to-tokens run.
  """
  from avflow_jax.models import text_to_tokens  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = run_dir.read_run_config(workdir, "--t2t-workdir")
  if config.get("task") != "text_to_tokens":
    raise AvatarError(f"--t2t-workdir {workdir}: a {config.get('task')!r} run, not a "
                      "'text_to_tokens' run")
  try:
    model = text_to_tokens.make_model(config)
  except (ValueError, TypeError) as e:
    raise AvatarError(f"{workdir}/config.json: {e}") from e
  step, params = run_dir.load_params(workdir, which, what=f"--t2t-workdir {workdir}")
  return TextToTokensModel(workdir, config, model, params, int(step))


def text_to_tokens(text: str, t2t: TextToTokensModel, seed: int = 0) -> np.ndarray:
  """Raw text -> (T, 29) raw token logits on the mel grid (the run's token statistics).

  Args:
    text: English text (non-empty).
    t2t: a loaded text-to-tokens run.
    seed: noise seed of its flow sampler.
  """
  return tokens_from_ids(text_ids(text, t2t), t2t, seed, what=f"--text ({text[:40]!r})")


def text_ids(text: str, t2t: TextToTokensModel) -> np.ndarray:
  """Text -> symbol ids as the run was trained (front end, blanks); AvatarError if unspeakable."""
  from avflow_jax.text import frontend  # pylint: disable=g-import-not-at-top
  if not text or not text.strip():
    raise AvatarError("--text is empty")
  add_blank = bool(t2t.config.data.get("add_blank", True))
  try:
    ids = frontend.text_to_ids(text, add_blank=add_blank)
  except Exception as e:  # pylint: disable=broad-except  (eSpeak NG failures)
    raise AvatarError(f"--text {text!r}: the text front end failed ({e})") from e
  if ids.size <= int(add_blank):
    raise AvatarError(f"--text {text!r}: no speakable symbols after phonemisation")
  return ids


def tokens_from_ids(ids: np.ndarray, t2t: TextToTokensModel, seed: int = 0,
                    what: str = "--text") -> np.ndarray:
  """Symbol ids -> (T, 29) token logits: durations first, then synthesis on their bucket.

  Ids are padded to multiples of 64 and frames to `bucket_frames` of the predicted length, so
  texts of similar length share one compiled program. A run whose model has
  `official_padding` pads frames to a multiple of 4 instead (`synthesis_frames`).
  """
  from avflow_jax.models import t2t_synthesis as t2t_lib  # pylint: disable=g-import-not-at-top
  n_sym = -(-ids.size // 64) * 64
  ids_pad = np.zeros((1, n_sym), np.int32)
  ids_pad[0, :ids.size] = ids
  s = t2t.config.sample
  length_scale = float(s.get("length_scale", 1.0))
  ids_pad, ids_len = jnp.asarray(ids_pad), jnp.asarray([ids.size], jnp.int32)
  # Durations first (encoder only), so the decoder runs on the bucket of the real length.
  n = int(t2t_lib.predict_lengths(t2t.params, t2t.model, ids_pad, ids_len, length_scale)[0])
  if n > MAX_TEXT_FRAMES:  # also catches a broken checkpoint's inf durations (int32 max).
    raise AvatarError(f"{what} ({ids.size} symbols): the predicted speech is {n} frames "
                      f"({n / C.FRAME_RATE:.0f} s), more than the {MAX_TEXT_FRAMES} frames "
                      f"({MAX_TEXT_FRAMES / C.FRAME_RATE:.0f} s) one call synthesises; split "
                      "the text into shorter pieces")
  tokens, lengths = t2t_lib.synthesize(
      t2t.params, t2t.model, ids_pad, ids_len, jax.random.PRNGKey(seed),
      n_steps=int(s.get("num_steps", 10)), temperature=float(s.get("temperature", 0.667)),
      length_scale=length_scale, max_frames=synthesis_frames(n, t2t.model))
  return np.asarray(tokens[0, :int(lengths[0])], np.float32)


def synthesis_frames(n: int, model: Any) -> int:
  """The padded frame count `tokens_from_ids` synthesises `n` predicted frames on.

  Args:
    n: predicted frames (>= 1).
    model: the run's `TextToTokens`.

  Returns:
    `bucket_frames(n)`; with `model.official_padding`, ceil4(n), the reference's decoder length
    (its padded frames change the output, so a bucket would not reproduce it). The jitted
    synthesis then compiles once per multiple of 4, not once per bucket.
  """
  if getattr(model, "official_padding", False):
    return -(-n // 4) * 4
  return buckets.bucket_frames(n)
