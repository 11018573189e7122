r"""The live page in headless Chromium: submit-to-first-audio, look-ahead and real-time factor.

  python benchmarks/bench_serve.py --config configs/stream.py:1            # random weights
  python benchmarks/bench_serve.py --workdir runs/stream1 --t2t-workdir runs/t2t

Starts `serve` in this process (a random-weight run of --config, or --workdir; text-to-tokens
from --t2t-workdir or a random-weight run of configs/text_to_tokens.py, the demo's size: timing
does not depend on the weights), opens the page in Debian's headless chromium, types
--sentences sentences one after another (each once the avatar listens again) and reads the
page's own figures: submit_to_first_audio_ms (from pressing Say until the sentence's first
audio plays), beyond_lookahead_ms (that minus the look-ahead the page shows), the real-time
factor (compute seconds of all chunks per second of audio sent), and underruns (rebases).
The server compiles first (`Server.warmup`, as `serve` does before it listens); the first
sentence is still reported apart. Prints
progress, then ONE JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import browser  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position

from avflow_jax import api  # pylint: disable=wrong-import-position
from avflow_jax import serve  # pylint: disable=wrong-import-position

SENTENCES = ("Peter baked a pie.", "The sun is warm today.", "Can you hear me now?",
             "We walked along the river.", "That sounds like a good plan.")


def _runs(args, root):
  import bench_sample  # pylint: disable=g-import-not-at-top

  from avflow_jax.training import random_init  # pylint: disable=g-import-not-at-top
  data = None
  workdir, t2t = args.workdir, args.t2t_workdir
  if workdir is None or t2t is None:
    data = bench_sample.write_stats_manifest(os.path.join(root, "data"))
  if workdir is None:
    from avflow_jax.core import cli  # pylint: disable=g-import-not-at-top
    workdir = random_init.init_workdir(cli.load_config_file(args.config),
                                       os.path.join(root, "run"), data)
  if t2t is None:
    from configs import text_to_tokens  # pylint: disable=g-import-not-at-top
    t2t = random_init.init_t2t_workdir(text_to_tokens.get_config(), os.path.join(root, "t2t"),
                                       data)
  return workdir, t2t


def main():
  ap = argparse.ArgumentParser()
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a trained AV run (windowed attention)")
  src.add_argument("--config", help="an AV config: random weights at its size")
  ap.add_argument("--t2t-workdir", help="a text-to-tokens run (default: random, demo size)")
  ap.add_argument("--sentences", type=int, default=4)
  ap.add_argument("--serve-args", default="", help="extra `serve` flags, e.g. '--buffer-ms 150'")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as root:
    workdir, t2t_dir = _runs(args, root)
    server_args = serve.make_parser().parse_args(["--workdir", workdir] +
                                                 args.serve_args.split())
    server = serve.Server(api.Avatar.load(workdir), server_args,
                          api.load_text_to_tokens(t2t_dir))
    warmup_s = server.warmup()
    print(f"warm-up (compilation) {warmup_s:.1f} s", file=sys.stderr)
    why = browser.missing()
    if why:
      sys.exit(f"error: {why}")
    driver = browser.start(os.path.join(root, "chromium"))
    turns = []
    try:
      with serve.BackgroundServer(server) as url:
        driver.get(url)
        driver.execute_script("document.getElementById('start').click();")
        browser.wait_for(driver, "return avflow.state === 'listening' && avflow.framesDrawn",
                         timeout=300)
        for i in range(args.sentences):
          text = SENTENCES[i % len(SENTENCES)]
          driver.execute_script(
              "document.getElementById('text').value = arguments[0];"
              "document.getElementById('say').click();", text)
          turn = browser.wait_for(driver, f"return avflow.turns.length > {i} && "
                                  f"avflow.turns[{i}]", timeout=300)
          browser.wait_for(driver, "return avflow.state === 'listening'", timeout=300)
          time.sleep(0.5)
          turns.append(turn)
          print(f"{text!r}: first audio {turn['ms'] / 1000:.2f} s after submit "
                f"({turn['beyond_ms'] / 1000:+.2f} s beyond the look-ahead)", file=sys.stderr)
        stats = driver.execute_script("return avflow")
    finally:
      driver.quit()
  later = turns[1:] or turns
  hello = stats["hello"]
  result = {
      "device": jax.devices()[0].device_kind, "workdir": args.workdir, "config": args.config,
      "serve_args": args.serve_args, "lookahead_ms": hello["lookahead_ms"],
      "model_lookahead_ms": hello["model_lookahead_ms"], "buffer_ms": hello["buffer_ms"],
      "exact": hello["exact"], "warmup_s": warmup_s,
      "first_sentence_ms": turns[0]["ms"],
      "submit_to_first_audio_ms": statistics.median(t["ms"] for t in later),
      "beyond_lookahead_ms": statistics.median(t["beyond_ms"] for t in later),
      "rtf": stats["computeSeconds"] / max(stats["audioScheduledSeconds"], 1e-9),
      "audio_s": stats["audioScheduledSeconds"], "rebases": stats["rebases"],
      "frames_drawn": stats["framesDrawn"], "turns": [round(t["ms"]) for t in turns]}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
