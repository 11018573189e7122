r"""Streaming: real-time factor, look-ahead and time to first output, and how far the
low-latency mode is from the offline sample.

  python benchmarks/bench_streaming.py --workdir runs/demo --seconds 30
  python benchmarks/bench_streaming.py --config configs/base.py --seconds 30 --lags exact

Drives `StreamingSampler` with --seconds of the split's first clip's tokens (tiled; random
tokens with --config, which writes a random-weight run first), pushed in --chunk-seconds
pieces as a live source would, once per mode of --lags ("exact" = ΣR with the layer-wise
cache, "exact-recompute" = ΣR re-running each chunk's receptive field, or frames per step).
Each mode runs once to compile, then is timed. Per mode: lookahead_s (the model's look-ahead),
rtf (compute seconds per second of output, pushes and close), chunk_ms (median compute of one
push), steady_rtf (chunk_ms per push duration: the pace of a stream that never closes), first_output_s (compute from the first push until the first output frames, with the
look-ahead's worth of input pushed as fast as it arrives: what a listener waits for beyond the
look-ahead itself), and max_abs_diff / mean_abs_diff of the mel against the offline sampler
with the same seed (0 up to rounding in exact mode). Then the vocoder on the stream
(`StreamingVocoder`) for each --vocoder-chunks setting "chunk,context,crossfade" (frames; "-"
for the vocoder's default): its real-time factor, look-ahead, and the MCD between its waveform
and whole-clip vocoding of the same mel (0 dB = the same speech), and mel_l1: the mean absolute
difference between the waveform's own log-mel and the mel it was made from (the vocoder's
fidelity; vocoder_whole_clip_mel_l1 for one whole-clip call). Prints progress, then ONE JSON
line.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from avflow_jax import api  # pylint: disable=g-import-not-at-top,wrong-import-position
from avflow_jax.core import constants as C  # pylint: disable=wrong-import-position
from avflow_jax.data import clips  # pylint: disable=wrong-import-position


def _inputs(avatar, seconds: float, random_tokens: bool):
  loaded = avatar.loaded
  n = int(round(seconds * C.FRAME_RATE))
  rng = np.random.default_rng(0)
  if random_tokens:
    tok = rng.normal(size=(n, C.TOKEN_DIM)).astype(np.float32)
    part = (avatar.neutral_participant(n) if loaded.uses_participant else None)
    return tok, part
  shards, entries = clips.split_entries(loaded.data_dir, loaded.manifest, "val")
  _, record = next(clips.iter_split_records(shards, entries[:1],
                                            clips.page_frames(loaded.manifest)))
  reps = -(-n // record["tokens"].shape[0])
  tile = lambda x: np.tile(np.asarray(x, np.float32), (reps, 1))[:n]
  return tile(record["tokens"]), (tile(record["participant"]) if loaded.uses_participant
                                  else None)


def run_stream(avatar, tok, part, chunk: int, lag, seed: int, window_chunk: int = 64,
               cache_layers: bool = True):
  """One stream: (mel, per-push compute seconds, compute until the first output, sampler)."""
  stream = api.StreamingSampler.for_avatar(avatar, seed=seed, lag_frames=lag,
                                           chunk_frames=window_chunk, cache_layers=cache_layers)
  mels, times, first = [], [], None
  spent = 0.0
  for i in range(0, len(tok), chunk):
    t0 = time.perf_counter()
    out = stream.push(tok[i:i + chunk], None if part is None else part[i:i + chunk])
    dt = time.perf_counter() - t0
    times.append(dt)
    spent += dt
    if first is None and len(out["mel"]):
      first = spent
    mels.append(out["mel"])
  t0 = time.perf_counter()
  mels.append(stream.close()["mel"])
  times.append(time.perf_counter() - t0)
  return np.concatenate(mels), times, first, stream


def sampler_rows(avatar, tok, part, chunk, offline, args) -> list[dict]:
  """One row per streaming mode: look-ahead, real-time factor, and the mel's distance from
  offline sampling of the same inputs."""
  rows = []
  for mode in args.lags.split(","):
    lag = None if mode.startswith("exact") else int(mode)
    cache = mode != "exact-recompute"
    run_stream(avatar, tok[:4 * chunk], None if part is None else part[:4 * chunk], chunk, lag, 0,
               args.chunk_frames, cache)  # Warm-up: compiles before the timed stream.
    mel, times, first, stream = run_stream(avatar, tok, part, chunk, lag, 0, args.chunk_frames, cache)
    diff = np.abs(mel - offline)
    row = {"mode": mode, "lag_frames": stream.lag, "exact": stream.exact,
           "lookahead_frames": stream.lookahead_frames,
           "lookahead_s": stream.lookahead_frames / C.FRAME_RATE,
           "rtf": sum(times) / args.seconds, "chunk_ms": 1e3 * float(np.median(times[:-1])),
           # An always-on stream never closes: its pace is one push's compute per push.
           "steady_rtf": float(np.median(times[:-1])) / (chunk / C.FRAME_RATE),
           "first_output_s": first, "max_abs_diff": float(diff.max()),
           "mean_abs_diff": float(diff.mean())}
    print(f"{mode}: look-ahead {row['lookahead_s']:.2f} s, rtf {row['rtf']:.3f} (steady "
          f"{row['steady_rtf']:.3f}), chunk "
          f"{row['chunk_ms']:.1f} ms, mel diff max {row['max_abs_diff']:.2g}", file=sys.stderr)
    rows.append(row)
  return rows


def vocoder_rows(avatar, offline, chunk, args) -> dict:
  """The streaming vocoder's settings against whole-clip vocoding of the offline mel."""
  # The waveform on the stream: the exact mode's mel through the streaming vocoder, against
  # whole-clip vocoding of the same mel (MCD between the two: 0 = the same speech).
  from avflow_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  from avflow_jax.inference import vocoder as vocoder_lib  # pylint: disable=g-import-not-at-top
  from data_prep import mel as mel_lib  # pylint: disable=g-import-not-at-top
  voc = avatar.vocoder
  t0 = time.perf_counter()
  whole = vocoder_lib.mel_to_audio(voc, offline)
  whole_s = time.perf_counter() - t0
  # How far a waveform's own log-mel is from the mel it was made from (the vocoder's fidelity).
  n = len(offline) - 4  # The last frames' analysis window runs past the clip.
  mel_l1 = lambda y: float(np.abs(mel_lib.clip_mel(y)[:n] - offline[:n]).mean())
  result = {"vocoder_whole_clip_mel_l1": mel_l1(whole), "vocoder": []}
  for setting in args.vocoder_chunks.split():
    stream = vocoder_lib.StreamingVocoder(voc, **{
        k: int(v) for k, v in zip(("chunk_frames", "context_frames", "crossfade_frames"),
                                  setting.split(",")) if v != "-"})
    t0 = time.perf_counter()
    pieces = [stream.push(offline[i:i + chunk]) for i in range(0, len(offline), chunk)]
    audio = np.concatenate(pieces + [stream.close()])
    row = {"name": voc.name, "chunk_frames": stream.chunk, "context_frames": stream.context,
           "crossfade_frames": stream.crossfade, "lookahead_frames": stream.lookahead_frames,
           "lookahead_ms": 1e3 * stream.lookahead_frames / C.FRAME_RATE,
           "rtf": (time.perf_counter() - t0) / args.seconds,
           "whole_clip_rtf": whole_s / args.seconds,
           "mcd_vs_whole_clip": metrics.mcd(whole, audio, C.SAMPLE_RATE),
           "mel_l1": mel_l1(audio), "max_abs_diff": float(np.abs(whole - audio).max())}
    result["vocoder"].append(row)
    print(f"vocoder {voc.name} {setting}: look-ahead {row['lookahead_ms']:.0f} ms, rtf "
          f"{row['rtf']:.3f}, MCD vs whole clip {row['mcd_vs_whole_clip']:.2f} dB, mel L1 "
          f"{row['mel_l1']:.3f} (whole clip {result['vocoder_whole_clip_mel_l1']:.3f})",
          file=sys.stderr)
  return result


def main():
  ap = argparse.ArgumentParser()
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a trained AV run")
  src.add_argument("--config", help="an AV config: random weights at its size")
  ap.add_argument("--seconds", type=float, default=30.0)
  ap.add_argument("--chunk-seconds", type=float, default=0.5)
  ap.add_argument("--lags", default="exact,exact-recompute,4,1,0",
                  help="modes: exact (layer-wise cache), exact-recompute (each chunk's whole "
                  "receptive field), or frames per step")
  ap.add_argument("--chunk-frames", type=int, default=64,
                  help="frames the sampler computes per network evaluation (its chunk_frames)")
  ap.add_argument("--vocoder-chunks", default="43,-,- 16,-,-",
                  help='StreamingVocoder settings "chunk,context,crossfade" (frames, "-": the '
                  'default), space-separated')
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as root:
    workdir = args.workdir
    if args.config:
      import bench_sample  # pylint: disable=g-import-not-at-top

      from avflow_jax.training import random_init  # pylint: disable=g-import-not-at-top
      data = bench_sample.write_stats_manifest(os.path.join(root, "data"))
      workdir = random_init.init_workdir(bench_sample.load_config(args.config),
                                         os.path.join(root, "run"), data)
    avatar = api.Avatar.load(workdir)
    tok, part = _inputs(avatar, args.seconds, random_tokens=bool(args.config))
  chunk = max(1, int(round(args.chunk_seconds * C.FRAME_RATE)))
  offline = avatar.sample_motion(tok, seed=0, participant=part)["mel"][0]
  result = {"device": jax.devices()[0].device_kind, "workdir": args.workdir,
            "config": args.config, "seconds": args.seconds, "push_frames": chunk,
            "chunk_frames": args.chunk_frames,
            "windows": [list(w) for w in avatar.loaded.model.windows]}
  result["modes"] = sampler_rows(avatar, tok, part, chunk, offline, args)
  result.update(vocoder_rows(avatar, offline, chunk, args))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
