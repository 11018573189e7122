"""Data-prep throughput on one core, in seconds of audio per wall-clock second.

  python benchmarks/bench_data_prep.py [--seconds 60] [--repeats 3]

Measures (each after a warm-up call, best of --repeats):
  mel:        BigVGAN log-mel of 22.05 kHz audio (data_prep.mel.clip_mel).
  resample:   soxr 48 kHz -> 22.05 kHz.
  shard_write: encode_record + ArrayRecord write of ready 50h-layout records (mel, tokens,
              face, face_mask, head, participant, audio).
  prepare:    the whole `python -m data_prep` pipeline (--workers 1) on a synthetic
              audio2photoreal corpus: read, resample, mel, align, encode, cache, shards.
  asr:        the wav2vec2 port (data_prep.asr) with random weights, if that module exists.
The last line printed is one JSON object with the figures.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")  # one core, as the figures claim.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1")

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avflow_jax.core import audio as audio_lib  # pylint: disable=wrong-import-position
from avflow_jax.core import constants as C  # pylint: disable=wrong-import-position
from avflow_jax.core import records  # pylint: disable=wrong-import-position
from data_prep import mel as mel_lib  # pylint: disable=wrong-import-position
from data_prep import shards as shards_lib  # pylint: disable=wrong-import-position


def best_time(fn, repeats):
  fn()  # warm-up (filterbank, FFT plans, jit)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def signal(seconds, sr, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  return (0.3 * np.sin(2 * np.pi * 150 * t) * np.sin(2 * np.pi * 0.7 * t)
          + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def bench_mel(seconds, repeats):
  x = signal(seconds, C.SAMPLE_RATE)
  return seconds / best_time(lambda: mel_lib.clip_mel(x), repeats)


def bench_resample(seconds, repeats):
  x = signal(seconds, 48000)
  return seconds / best_time(lambda: audio_lib.resample(x, 48000), repeats)


def bench_shard_write(seconds, repeats, tmp):
  rng = np.random.default_rng(0)
  clip_seconds = 20.0
  t = int(clip_seconds * C.FRAME_RATE)
  clips = []
  for i in range(max(1, int(seconds // clip_seconds))):
    clips.append({"name": f"clip{i}", "mel": rng.normal(size=(t, 80)).astype(np.float32),
                  "tokens": rng.normal(size=(t, 29)).astype(np.float32),
                  "face": rng.normal(size=(t, 256)).astype(np.float32),
                  "face_mask": np.ones(t, np.float32),
                  "head": rng.normal(size=(t, 7)).astype(np.float32),
                  "participant": rng.normal(size=(t, 87)).astype(np.float32),
                  "audio": rng.integers(-3000, 3000, t * 256).astype(np.int16)})
  path = os.path.join(tmp, "bench.array_record")

  def write():
    shards_lib.write_shard(path, (records.encode_record(c) for c in clips))

  return len(clips) * clip_seconds / best_time(write, repeats)


def bench_prepare(tmp):
  from data_prep import prepare  # pylint: disable=g-import-not-at-top
  from data_prep import synthetic as fx  # pylint: disable=g-import-not-at-top
  inp = os.path.join(tmp, "a2p")
  scenes, frames = 6, 300  # 6 scenes of 10 s
  fx.make_a2p(inp, scenes=scenes, video_frames=frames)
  out = os.path.join(tmp, "out")
  argv = ["--format", "audio2photoreal", "--input", inp, "--output", out, "--workers", "1",
          "--no-progress"]
  prepare.main(argv)  # warm-up: imports, filterbank
  shutil.rmtree(out)
  t0 = time.perf_counter()
  assert prepare.main(argv) == 0
  return scenes * frames / 30.0 / (time.perf_counter() - t0)


def _random_wav2vec2(path):
  """Random weights with the HF wav2vec2-base-960h names and shapes."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  w = {}

  def p(name, *shape, scale=0.02):
    w[name] = (rng.standard_normal(shape) * scale).astype(np.float32)

  pre = "wav2vec2."
  for i, k in enumerate([10, 3, 3, 3, 3, 2, 2]):
    p(f"{pre}feature_extractor.conv_layers.{i}.conv.weight", 512, 1 if i == 0 else 512, k,
      scale=0.1)
  w[f"{pre}feature_extractor.conv_layers.0.layer_norm.weight"] = np.ones(512, np.float32)
  w[f"{pre}feature_extractor.conv_layers.0.layer_norm.bias"] = np.zeros(512, np.float32)
  w[f"{pre}feature_projection.layer_norm.weight"] = np.ones(512, np.float32)
  w[f"{pre}feature_projection.layer_norm.bias"] = np.zeros(512, np.float32)
  p(f"{pre}feature_projection.projection.weight", 768, 512)
  p(f"{pre}feature_projection.projection.bias", 768)
  p(f"{pre}masked_spec_embed", 768)
  w[f"{pre}encoder.pos_conv_embed.conv.weight_g"] = np.ones((1, 1, 128), np.float32)
  p(f"{pre}encoder.pos_conv_embed.conv.weight_v", 768, 48, 128)
  p(f"{pre}encoder.pos_conv_embed.conv.bias", 768)
  w[f"{pre}encoder.layer_norm.weight"] = np.ones(768, np.float32)
  w[f"{pre}encoder.layer_norm.bias"] = np.zeros(768, np.float32)
  for i in range(12):
    lp = f"{pre}encoder.layers.{i}."
    for proj in ("q", "k", "v", "out"):
      p(f"{lp}attention.{proj}_proj.weight", 768, 768)
      p(f"{lp}attention.{proj}_proj.bias", 768)
    for ln in ("layer_norm", "final_layer_norm"):
      w[f"{lp}{ln}.weight"] = np.ones(768, np.float32)
      w[f"{lp}{ln}.bias"] = np.zeros(768, np.float32)
    p(f"{lp}feed_forward.intermediate_dense.weight", 3072, 768)
    p(f"{lp}feed_forward.intermediate_dense.bias", 3072)
    p(f"{lp}feed_forward.output_dense.weight", 768, 3072)
    p(f"{lp}feed_forward.output_dense.bias", 768)
  p("lm_head.weight", 32, 768)
  p("lm_head.bias", 32)
  save_file(w, path)


def bench_asr(seconds, repeats, tmp):
  try:
    from avflow_jax.models import asr  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, f"data_prep.asr not importable ({e}); ASR speed omitted"
  path = os.path.join(tmp, "w2v_random.safetensors")
  _random_wav2vec2(path)
  params = asr.load_asr(path)
  x = signal(seconds, 16000)
  tok = asr.extract_tokens(x, 16000, params)
  note = f"random weights, {seconds:g} s at 16 kHz -> tokens {tuple(np.shape(tok))}"
  return seconds / best_time(lambda: np.asarray(asr.extract_tokens(x, 16000, params)),
                             repeats), note


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seconds", type=float, default=60.0)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--asr-seconds", type=float, default=20.0)
  args = ap.parse_args()
  tmp = tempfile.mkdtemp(prefix="bench_data_prep_")
  result = {"unit": "audio seconds per wall second, one core"}
  try:
    result["mel"] = round(bench_mel(args.seconds, args.repeats), 1)
    print(f"mel: {result['mel']}x realtime", flush=True)
    result["resample_48k_to_22k"] = round(bench_resample(args.seconds, args.repeats), 1)
    print(f"resample: {result['resample_48k_to_22k']}x realtime", flush=True)
    result["shard_write"] = round(bench_shard_write(args.seconds, args.repeats, tmp), 1)
    print(f"shard write: {result['shard_write']}x realtime", flush=True)
    result["prepare_end_to_end"] = round(bench_prepare(tmp), 1)
    print(f"prepare (a2p, 1 worker): {result['prepare_end_to_end']}x realtime", flush=True)
    asr_speed, note = bench_asr(args.asr_seconds, args.repeats, tmp)
    if asr_speed is not None:
      result["asr_wav2vec2_port"] = round(asr_speed, 2)
    result["asr_note"] = note
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
