r"""Samples a trained avatar: tokens, speech or text in; voice, motion, preview video out.

  python -m avflow_jax.sample --workdir /tmp/avflow --tokens clip.npy --output out/
  python -m avflow_jax.sample --workdir /tmp/avflow --audio speech.wav \
      --asr-weights wav2vec2-base-960h.safetensors --vocoder-weights bigvgan.safetensors \
      --output out/ --num-samples 3
  python -m avflow_jax.sample --workdir /tmp/avflow --compare val003 --output out/
  python -m avflow_jax.sample --workdir /tmp/avflow --text "Hello there." \
      --t2t-workdir /tmp/t2t --output out/

Per sample (NAME, or NAME_k for k = 0..K-1 with --num-samples K) it writes into OUTPUT:
  NAME.wav  the voice (22,050 Hz, 16-bit);
  NAME.npz  mel, face, head at the mel rate (86.13 fps), face_30fps, head_30fps (and rig,
            rig_30fps, rig_channels when the data has the demo face rig), the input tokens;
  NAME.mp4  a 30 fps preview (stylised face for the demo rig, else head pose + code PCs) with
            the voice muxed in; with --compare the ground truth is drawn on the left;
  NAME.png  mel, face and head-pose curves (dashed: ground truth with --compare).

Everything is written into a hidden staging directory and moved into OUTPUT only when all
samples succeeded, so a failed run leaves nothing under the output name. Bad input (missing
checkpoint, tokens of the wrong width, empty text, silent or corrupt audio, an output path that
cannot be written, an input longer than --max-seconds) stops with one line on stderr and exit
code 2. The length is checked as soon as it is known (tokens and audio: before the model loads).
"""

import argparse
import os
import sys
import time
from typing import Any, Optional

import numpy as np

from avflow_jax.core import cli
from avflow_jax.core import constants as C
from avflow_jax.core.errors import InputError
from avflow_jax.data import clips
from avflow_jax.inference import buckets
from avflow_jax.inference import outputs

MIN_AUDIO_FRAMES = 8  # As data prep: shorter audio gives nothing the ASR model can read.
SILENCE_PEAK = 1e-4  # -80 dBFS: below this the audio is treated as silent.


def make_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m avflow_jax.sample",
                      description="Samples a trained AV-Flow avatar.")
  p.add_argument("--workdir", required=True, help="AV training workdir (config.json, checkpoints)")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--tokens", help="(T, 29) raw ASR logits on the mel grid (.npy)")
  src.add_argument("--audio", help="speech .wav (needs --asr-weights)")
  src.add_argument("--text", help="text to speak (needs --t2t-workdir)")
  p.add_argument("--output", required=True, help="output directory")
  p.add_argument("--steps", type=int, default=None,
                 help="Euler steps of the ODE solver (default 8; 16 with --official)")
  p.add_argument("--seed", type=int, default=0, help="noise seed")
  p.add_argument("--num-samples", type=int, default=1, help="samples of the same input")
  p.add_argument("--temperature", type=float,
                 help="scale of the initial noise (default: the run's sample.temperature, "
                      "1.0 in configs/base.py, 0.5 in the demo configs)")
  p.add_argument("--noise", help="initial noise .npy, (T, V + A) or (NUM_SAMPLES, T, V + A) in "
                 "the official layout [face | head latent | mel]: replays a run exactly")
  p.add_argument("--no-clip", action="store_true",
                 help="vocode the mel unclipped and keep the waveform's peaks (a float WAV), "
                 "as the official code")
  p.add_argument("--official", action="store_true",
                 help="sample as the official code: 16 Euler steps unless --steps is given, "
                 "--audio tokens upsampled at its fixed 49.99 -> 86.13 fps scale, --no-clip")
  p.add_argument("--max-seconds", type=float, default=buckets.DEFAULT_MAX_SECONDS,
                 help="longest input accepted, in seconds (default %(default)g, 20 minutes; "
                      "memory grows with length: the demo avatar peaks at 2.8 GB for 10 "
                      "minutes; inf: no limit)")
  p.add_argument("--participant", help="(T, 87) participant features .npy (dyadic avatars; "
                 "default: a still, average listener, the training mean)")
  p.add_argument("--asr-weights", help="wav2vec2-base-960h model.safetensors (for --audio)")
  p.add_argument("--vocoder-weights", help="BigVGAN safetensors (default: Griffin-Lim)")
  p.add_argument("--t2t-workdir", help="text-to-tokens training workdir (for --text)")
  p.add_argument("--compare", metavar="CLIP",
                 help="clip name in the data: draw its ground truth side by side (and use its "
                      "tokens when no other input is given)")
  p.add_argument("--name", help="output base name (default: from the input)")
  p.add_argument("--which", choices=("ema", "params"), default="ema", help="weights to use")
  p.add_argument("--checkpoint", type=int, metavar="STEP",
                 help="sample this checkpoint step instead of the latest")
  p.add_argument("--data-dir", help="shard directory, if it moved since training")
  p.add_argument("--verbose", action="store_true", help="show library logs on stderr")
  return p


# ---- Input checks (cheap, before anything heavy is imported) -------------------------------------

def load_tokens_file(path: str) -> np.ndarray:
  return cli.load_frames(path, "--tokens", C.TOKEN_DIM,
                         "raw ASR logits on the 86.13 fps mel grid")


def load_audio_file(path: str) -> tuple[np.ndarray, int]:
  """Mono float audio and its rate; InputError for corrupt, silent or too short audio."""
  from avflow_jax.core import audio as audio_lib  # pylint: disable=g-import-not-at-top
  try:
    audio, sr = audio_lib.read_wav(path, channels=(1, 2))
  except ValueError as e:  # data_prep's BadInput names the file and the reason.
    raise InputError(f"--audio {e}") from e
  audio = audio.mean(axis=1)
  seconds = audio.shape[0] / sr
  if seconds * C.FRAME_RATE < MIN_AUDIO_FRAMES:
    raise InputError(f"--audio {path}: too short ({seconds:.3f} s; need at least "
                     f"{MIN_AUDIO_FRAMES / C.FRAME_RATE:.2f} s)")
  peak = float(np.abs(audio).max())
  if peak < SILENCE_PEAK:
    raise InputError(f"--audio {path}: silent (peak amplitude {peak:.2g}); there is no speech "
                     "to turn into tokens")
  return audio, sr


def check_arguments(args) -> None:
  """Checks that need no model: one input, its companions, numbers."""
  if args.steps is None:  # The paper samples with 8 steps, the official recipe with 16.
    args.steps = 16 if args.official else 8
  if args.official:
    args.no_clip = True
  if not (args.tokens or args.audio or args.text is not None or args.compare):
    raise InputError("give an input: --tokens FILE.npy, --audio FILE.wav, --text \"...\" or "
                     "--compare CLIP")
  if args.text is not None:
    if not args.text.strip():
      raise InputError("--text is empty")
    if not args.t2t_workdir:
      raise InputError("--text needs --t2t-workdir (a text-to-tokens training workdir, "
                       "python -m avflow_jax.train --config configs/text_to_tokens.py)")
  if args.audio:
    if not args.asr_weights:
      raise InputError("--audio needs --asr-weights (wav2vec2-base-960h model.safetensors)")
    if not os.path.isfile(args.asr_weights):
      raise InputError(f"--asr-weights {args.asr_weights}: file missing")
  if args.vocoder_weights and not os.path.isfile(args.vocoder_weights):
    raise InputError(f"--vocoder-weights {args.vocoder_weights}: file missing")
  if args.steps < 1:
    raise InputError(f"--steps {args.steps}: must be >= 1")
  if args.num_samples < 1:
    raise InputError(f"--num-samples {args.num_samples}: must be >= 1")
  if args.temperature is not None and (not np.isfinite(args.temperature)
                                       or args.temperature < 0):
    raise InputError(f"--temperature {args.temperature}: must be a finite number >= 0")
  buckets.check_max_seconds(args.max_seconds, "--max-seconds")
  if args.name is not None and (not args.name or os.sep in args.name or args.name.startswith(".")):
    raise InputError(f"--name {args.name!r}: must be a plain file name (no '/', not hidden)")
  if not os.path.isdir(args.workdir):
    raise InputError(f"--workdir {args.workdir}: no such directory")


# ---- The run -------------------------------------------------------------------------------------

def _default_name(args) -> str:
  if args.name:
    return args.name
  if args.tokens:
    return os.path.splitext(os.path.basename(args.tokens))[0]
  if args.audio:
    return os.path.splitext(os.path.basename(args.audio))[0]
  if args.text is not None:
    return "text"
  return args.compare


def check_length(args, num_frames: int, what: str) -> None:
  """One-line error if `num_frames` of input are longer than --max-seconds."""
  buckets.check_length(num_frames, args.max_seconds, what=what,
                       hint="split it, or raise the limit with --max-seconds S")


def _read_inputs(args) -> tuple[Optional[np.ndarray], Optional[tuple], Optional[np.ndarray]]:
  """(--tokens, --audio as (samples, rate), --participant), each None when not given.

  Read and length-checked before the model loads: a too long input costs nothing (and audio is
  refused before the ASR model runs over it).
  """
  tokens = load_tokens_file(args.tokens) if args.tokens else None
  if tokens is not None:
    check_length(args, tokens.shape[0], f"--tokens {args.tokens}")
  audio = load_audio_file(args.audio) if args.audio else None
  if audio is not None:
    check_length(args, int(audio[0].shape[0] / audio[1] * C.FRAME_RATE), f"--audio {args.audio}")
  participant = None
  if args.participant:
    participant = cli.load_frames(args.participant, "--participant",
                                C.PARTICIPANT_DIM, "participant tokens + SMIRK features")
  return tokens, audio, participant


def _load_avatar(args, timings: dict, log):
  """The avatar of --workdir, its vocoder loaded (bad vocoder weights fail here, early)."""
  from avflow_jax.inference import avatar as avatar_lib  # pylint: disable=g-import-not-at-top  (imports JAX)
  t0 = time.perf_counter()
  avatar = avatar_lib.Avatar.load(args.workdir, vocoder_weights=args.vocoder_weights,
                                  which=args.which, data_dir=args.data_dir,
                                  max_seconds=args.max_seconds, step=args.checkpoint)
  avatar.vocoder  # pylint: disable=pointless-statement
  timings["load"] = time.perf_counter() - t0
  log(f"loaded {avatar.loaded.workdir} (step {avatar.loaded.step}, {args.which} weights) in "
      f"{timings['load']:.1f} s")
  return avatar


def _resolve_inputs(args, avatar, tokens, audio, participant, timings: dict, log):
  """(tokens to sample from, participant features or None, --compare's ground truth or None).

  The tokens are --tokens, --audio through the ASR model, --text through the text-to-tokens
  run, or else --compare's recorded ones; a dyadic avatar without --participant gets a still,
  average listener.
  """
  from avflow_jax.inference import avatar as avatar_lib  # pylint: disable=g-import-not-at-top
  from avflow_jax.inference import text_tokens  # pylint: disable=g-import-not-at-top
  gt = None
  if args.compare:
    record = clips.read_clip(avatar.loaded.data_dir, avatar.loaded.manifest, args.compare)
    from_clip = tokens is None and audio is None and args.text is None  # Its own tokens drive it.
    if from_clip:
      check_length(args, len(record["tokens"]), f"--compare {args.compare}")
    gt = outputs.ground_truth(avatar, record)
    if from_clip:
      tokens = np.asarray(record["tokens"], np.float32)
      if participant is None and avatar.loaded.uses_participant:
        participant = np.asarray(record["participant"], np.float32)
  if audio is not None:
    t0 = time.perf_counter()
    tokens = avatar_lib.tokens_from_audio(audio[0], audio[1], avatar_lib.load_asr(
        args.asr_weights), official=args.official)
    timings["asr"] = time.perf_counter() - t0
    log(f"ASR tokens: {tokens.shape[0]} frames in {timings['asr']:.1f} s")
  if args.text is not None:
    t0 = time.perf_counter()
    t2t = text_tokens.load_text_to_tokens(args.t2t_workdir)
    tokens = text_tokens.text_to_tokens(args.text, t2t, seed=args.seed)
    timings["text_to_tokens"] = time.perf_counter() - t0
    log(f"text -> {tokens.shape[0]} token frames in {timings['text_to_tokens']:.1f} s")
  # --compare and --text know their length only now; still before any sampling.
  check_length(args, tokens.shape[0], "--text" if args.text is not None
               else f"--audio {args.audio}" if args.audio
               else f"--tokens {args.tokens}" if args.tokens else f"--compare {args.compare}")
  if participant is not None and participant.shape[0] != tokens.shape[0]:
    raise InputError(f"--participant has {participant.shape[0]} frames but the input has "
                     f"{tokens.shape[0]}")
  if participant is None and avatar.loaded.uses_participant:
    participant = avatar.neutral_participant(tokens.shape[0])
    log("dyadic avatar and no --participant: the listener is a still, average one (the "
        "training mean of the participant features)")
  return tokens, participant, gt


def _sample(args, avatar, tokens: np.ndarray, participant, timings: dict, log):
  """(--num-samples motions of `tokens` (batched "mel", "face", "head"), their waveforms)."""
  from avflow_jax.inference import avatar as avatar_lib  # pylint: disable=g-import-not-at-top
  k = args.num_samples
  batch = np.broadcast_to(tokens, (k,) + tokens.shape)
  part = None if participant is None else np.broadcast_to(participant,
                                                          (k,) + participant.shape)
  noise = None
  if args.noise:
    noise = cli.load_npy(args.noise, "--noise")
    if noise.ndim == 2:
      noise = np.broadcast_to(noise, (k,) + noise.shape)
  t0 = time.perf_counter()
  before = avatar_lib.compiled_programs()
  motion = avatar.sample_motion(batch, seed=args.seed, num_steps=args.steps, participant=part,
                                temperature=args.temperature, noise=noise)
  timings["sample"] = time.perf_counter() - t0
  timings["compiled"] = avatar_lib.compiled_programs() - before
  seconds = tokens.shape[0] / C.FRAME_RATE
  log(f"sampled {k} x {tokens.shape[0]} frames ({seconds:.2f} s) in {timings['sample']:.1f} s"
      + (" (including compilation)" if timings["compiled"] else ""))

  t0 = time.perf_counter()
  waveforms = avatar.vocode(motion["mel"], clip=not args.no_clip)
  timings["vocoder"] = time.perf_counter() - t0
  log(f"vocoded with {avatar.vocoder.name} in {timings['vocoder']:.1f} s")
  return motion, waveforms


def _write_samples(args, staging, avatar, motion, waveforms, tokens, gt, timings: dict,
                   log) -> None:
  """Writes each sample's wav, npz, mp4 and png into `staging` (NAME, or NAME_k for k > 1)."""
  k = args.num_samples
  base = _default_name(args)
  names = [base] if k == 1 else [f"{base}_{i}" for i in range(k)]
  for i, name in enumerate(names):
    sample = avatar.motion_outputs(motion["mel"][i], motion["face"][i], motion["head"][i])
    sample["waveform"] = waveforms[i]
    if avatar.face_rig is not None:
      from avflow_jax.core import face_rig  # pylint: disable=g-import-not-at-top
      sample["rig_channels"] = face_rig.CHANNELS
    meta = {"seed": args.seed, "sample_index": i, "num_steps": args.steps,
            "temperature": args.temperature, "checkpoint_step": avatar.loaded.step,
            "noise_file": args.noise or "", "clipped": not args.no_clip}
    outputs.write_sample(staging, name, sample, avatar=avatar, tokens=tokens, gt=gt, meta=meta,
                         timings=timings)
    log(f"[{i + 1}/{k}] {name}: wav, npz, mp4, png")


def run(args, log=print) -> dict[str, Any]:
  """Runs the CLI with parsed `args`; returns {"files": [...], "timings": {stage: seconds}}.

  Raises:
    InputError / AvatarError: bad input (the CLI prints them as one line, exit code 2).
  """
  timings: dict[str, float] = {}
  start = time.perf_counter()
  check_arguments(args)
  tokens, audio, participant = _read_inputs(args)
  staging = outputs.Staging(args.output, what="--output")
  try:
    avatar = _load_avatar(args, timings, log)
    if args.temperature is None:
      args.temperature = avatar.loaded.sample_temperature
    tokens, participant, gt = _resolve_inputs(args, avatar, tokens, audio, participant,
                                              timings, log)
    motion, waveforms = _sample(args, avatar, tokens, participant, timings, log)
    _write_samples(args, staging, avatar, motion, waveforms, tokens, gt, timings, log)
    files = staging.commit()
  except BaseException:
    staging.abort()
    raise
  timings["total"] = time.perf_counter() - start
  log(f"wrote {len(files)} files to {staging.output} in {timings['total']:.1f} s")
  return {"files": files, "timings": timings}


def main(argv: Optional[list[str]] = None) -> int:
  """CLI entry point; returns the exit code (2 for bad input, with one line on stderr)."""
  return cli.run(argv, make_parser, run, (InputError,))


if __name__ == "__main__":
  sys.exit(main())
