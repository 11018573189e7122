r"""The paper's Table 1 (and Table 2's inference time) for several runs, with one protocol.

  python -m avflow_jax.paper_table --runs av_flow=runs/v_av_flow separate=runs/v_separate \
      shared=runs/v_shared cascaded=runs/v_cascaded --output table/
  python -m avflow_jax.paper_table --runs a=RUN_A b=RUN_B --seeds 0,1,2 --t2t-workdir T2T \
      --output table/

Every run is scored by `avflow_jax.evaluate` (`scoring.evaluate`) on the same held-out clips (the split's first
--max-clips clips, their first --max-seconds seconds) with the same seeds: seed k samples clip
i with noise seed 1000 k + i (`evaluate --seed 1000k`), 8 Euler steps, the same vocoder, the
same recogniser. Those are the token-driven rows (the clips' recorded ASR tokens drive the
avatar). With --t2t-workdir each run is also driven from text (`avflow_jax.evaluate_text`:
each sentence's tokens predicted by the text-to-tokens run, pauses a fixed pause frame), which
gives the text-driven F1_lips. The ground truth's row and its mel through the vocoder (the
floor of MCD and WER) are scored once. Each metric is the mean over seeds with the standard
deviation when there are several. Beside the metrics each row carries its parameter count, its
training time and the time to sample one 20 s clip on this machine (the device is named).

Output, each file written to a temporary name and renamed: OUTPUT/table.md (the table),
OUTPUT/table.json (everything in it, plus the per-seed values) and OUTPUT/NAME/seedK/ (each
evaluation's own report). An evaluation whose report is already there for the same checkpoint
and protocol is reused (token- and text-driven alike), so an interrupted table goes on where it
stopped. Both kinds share one pool of `--jobs` processes.
"""

import argparse
from concurrent import futures
import functools
import json
import multiprocessing
import os
import re
import sys
import time
from typing import Any, NamedTuple, Optional

import numpy as np

from avflow_jax.core import cli
from avflow_jax.core import files
from avflow_jax.core import metric_writer
from avflow_jax.core import run_dir
from avflow_jax.core.errors import InputError
from avflow_jax.evaluation import av_metrics
from avflow_jax.evaluation import paper_table_markdown
from avflow_jax.evaluation import run_facts

TABLE_VERSION = 1
SEED_STRIDE = 1000  # Seed k scores clip i with noise seed SEED_STRIDE k + i.
TIMED_SECONDS = 20.0  # Table 2: the time of one sample of this length.
# 2: initial noise per frame (flow.frame_noise), the recogniser reset per utterance and capped
# at 3000 HMMs per frame. Reports of another version are measured anew, not reused.
PROTOCOL_VERSION = 2
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def make_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m avflow_jax.paper_table",
                         description="Scores several AV runs with one protocol and writes the "
                                     "paper's Table 1.")
  p.add_argument("--runs", nargs="+", required=True, metavar="NAME=WORKDIR",
                 help="the runs to compare, each as a row name and its AV workdir")
  p.add_argument("--output", required=True, help="folder for table.md, table.json, reports")
  p.add_argument("--seeds", default="0,1", help="comma-separated seed indices (default 0,1)")
  p.add_argument("--split", default="val", help="manifest split to score (default: val)")
  p.add_argument("--max-clips", type=int, help="score only the first N clips of the split")
  p.add_argument("--max-seconds", type=float, default=0.0,
                 help="score the first S seconds of each clip (default 0: whole clips)")
  p.add_argument("--steps", type=int, default=8, help="Euler steps of the sampler")
  p.add_argument("--vocoder-weights", help="BigVGAN safetensors (default: Griffin-Lim)")
  p.add_argument("--t2t-workdir", help="text-to-tokens run: adds the text-driven rows")
  p.add_argument("--no-wer", action="store_true", help="skip the speech recogniser")
  p.add_argument("--timed-seconds", type=float, default=TIMED_SECONDS,
                 help="length of the timed sample (default 20 s, the paper's Table 2)")
  p.add_argument("--no-timing", action="store_true", help="skip the sampling time")
  p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                 help="evaluations run at once, each in its own process (default: 2, or 1 on "
                      "one core); the timing always runs alone, after them")
  p.add_argument("--verbose", action="store_true", help="show library logs on stderr")
  return p


def parse_runs(specs: list[str]) -> list[tuple[str, str]]:
  """["NAME=WORKDIR", ...] -> [(name, absolute workdir)]; InputError naming the bad one."""
  runs, seen = [], set()
  for spec in specs:
    name, sep, path = spec.partition("=")
    if not sep or not _NAME.match(name) or not path:
      raise InputError(f"--runs {spec!r}: give NAME=WORKDIR (NAME of letters, digits, . _ -)")
    if name in seen:
      raise InputError(f"--runs {spec!r}: the name {name!r} is given twice")
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
      raise InputError(f"--runs {spec!r}: {path}: no such directory")
    seen.add(name)
    runs.append((name, path))
  return runs


def parse_seeds(text: str) -> list[int]:
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    seeds = []
  if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
    raise InputError(f"--seeds {text!r}: give distinct integers >= 0, e.g. 0,1")
  return seeds


def check_arguments(args) -> None:
  if args.max_clips is not None and args.max_clips < 1:
    raise InputError(f"--max-clips {args.max_clips}: must be >= 1")
  if not np.isfinite(args.max_seconds) or args.max_seconds < 0:
    raise InputError(f"--max-seconds {args.max_seconds}: must be a finite number >= 0")
  if args.steps < 1:
    raise InputError(f"--steps {args.steps}: must be >= 1")
  if args.jobs < 1:
    raise InputError(f"--jobs {args.jobs}: must be >= 1")
  if args.vocoder_weights and not os.path.isfile(args.vocoder_weights):
    raise InputError(f"--vocoder-weights {args.vocoder_weights}: file missing")
  if not np.isfinite(args.timed_seconds) or args.timed_seconds <= 0:
    raise InputError(f"--timed-seconds {args.timed_seconds}: must be a finite number > 0")
  if args.t2t_workdir and not os.path.isdir(args.t2t_workdir):
    raise InputError(f"--t2t-workdir {args.t2t_workdir}: no such directory")


# ---- One run -------------------------------------------------------------------------------------

def _protocol(args, seed: int) -> dict:
  """What makes two evaluations of one checkpoint the same measurement."""
  return {"split": args.split, "max_clips": args.max_clips, "max_seconds": args.max_seconds,
          "num_steps": args.steps, "seed": seed, "vocoder_weights": args.vocoder_weights,
          "wer": not args.no_wer, "version": PROTOCOL_VERSION}


def _reusable(path: str, step: int, protocol: dict) -> Optional[dict]:
  """The report at `path` if it measured this checkpoint with this protocol, else None."""
  try:
    with open(path) as f:
      report = json.load(f)
  except (OSError, ValueError):
    return None
  if report.get("checkpoint_step") != step or report.get("paper_table_protocol") != protocol:
    return None
  return report


def _report_path(out_dir: str, name: str, seed: int, kind: str = "tokens") -> str:
  """OUTPUT/NAME/seedK/report.json (token-driven) or text_report.json (text-driven)."""
  stem = "text_report" if kind == "text" else "report"
  return os.path.join(out_dir, name, f"seed{seed}", f"{stem}.json")


def _reuse_or_measure(output: str, step: int, protocol: dict, label: str, log, measure) -> dict:
  """The report at `output` if it measured checkpoint `step` with `protocol`; else `measure()`'s
  report, written there (atomically) with the protocol it was measured under."""
  report = _reusable(output, step, protocol)
  if report is not None:
    log(f"{label}: reusing {output}")
    return report
  report = measure()
  report["paper_table_protocol"] = protocol
  report.pop("output", None)
  files.write_atomic(output, json.dumps(report, indent=2, allow_nan=False) + "\n")
  return report


def score_token_driven(evaluate, name: str, workdir: str, seed: int, args, out_dir: str,
                       reference: bool, log) -> dict:
  """`evaluate` (`scoring.evaluate`) of one run and seed (reused when its report is there)."""
  step = run_dir.latest_step(workdir)
  output = _report_path(out_dir, name, seed)
  protocol = {**_protocol(args, seed), "reference_wer": reference,
              "temperature": run_dir.sample_temperature(run_dir.read_run_config(workdir))}
  ns = argparse.Namespace(
      workdir=workdir, split=args.split, output=output, steps=args.steps,
      seed=SEED_STRIDE * seed, max_clips=args.max_clips, which="ema", checkpoint=None,
      data_dir=None,
      no_plots=True, verbose=args.verbose, max_seconds=args.max_seconds,
      vocoder_weights=args.vocoder_weights, oracle=False, temperature=None,
      no_wer=args.no_wer, no_reference_wer=not reference)

  def measure():
    log(f"{name} seed {seed}: scoring {workdir} (step {step})")
    return evaluate(ns, log=lambda m: log(f"  {m}"))

  return _reuse_or_measure(output, step, protocol, f"{name} seed {seed}", log, measure)


def score_text_driven(evaluate_text, name: str, workdir: str, seed: int, args, out_dir: str,
                      log) -> dict:
  """`evaluate_text` (`text_scoring.evaluate_text`) of one run and seed: F1_lips with the
  tokens predicted from text (reused when its report is there for both checkpoints)."""
  step = run_dir.latest_step(workdir)
  output = _report_path(out_dir, name, seed, "text")
  t2t_workdir = os.path.abspath(os.path.expanduser(args.t2t_workdir))
  protocol = {**_protocol(args, seed), "t2t_workdir": t2t_workdir,
              "t2t_step": run_dir.latest_step(t2t_workdir)}
  ns = argparse.Namespace(
      t2t_workdir=t2t_workdir, workdir=workdir, split=args.split, output=output,
      steps=args.steps, seed=SEED_STRIDE * seed, max_clips=args.max_clips, which="ema",
      data_dir=None, no_plots=True, verbose=args.verbose)

  def measure():
    log(f"{name} seed {seed}: scoring from text ({t2t_workdir})")
    return evaluate_text(ns, log=lambda m: log(f"  {m}"))

  return _reuse_or_measure(output, step, protocol, f"{name} seed {seed}", log, measure)


def _stderr_log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


class _Job(NamedTuple):
  """One evaluation of the table."""
  kind: str  # "tokens" (`evaluate`) or "text" (`evaluate_text`).
  name: str  # Row name.
  workdir: str
  seed: int  # Seed index k.
  reference: bool  # Also score the reference rows (the first token-driven job only).

  @property
  def key(self) -> tuple[str, str, int]:
    return self.kind, self.name, self.seed


def _score_job(job: _Job, evaluate, evaluate_text, args, out_dir: str, log) -> dict:
  if job.kind == "text":
    return score_text_driven(evaluate_text, job.name, job.workdir, job.seed, args, out_dir, log)
  return score_token_driven(evaluate, job.name, job.workdir, job.seed, args, out_dir,
                            job.reference, log)


def _score_in_worker(job, evaluate, evaluate_text, args, out_dir) -> dict:
  """`_score_job` in a pool process, its library logs as quiet as the command's."""
  with metric_writer.quiet_cli_logs(args.verbose):
    return _score_job(job, evaluate, evaluate_text, args, out_dir, _stderr_log)


def score_all(evaluate, evaluate_text, runs, seeds, args, out_dir: str, log) -> dict:
  """Every evaluation of the table: {(kind, name, seed): report}, kind "tokens" for every
  (run, seed) and "text" as well with --t2t-workdir; the first also scores the reference rows.
  Up to `--jobs` run at once, each in a fresh (spawned) process: recognition, the vocoder and
  text-to-tokens are single-threaded, so two cores score two clips' worth at a time."""
  jobs = [_Job("tokens", name, workdir, seed, i == 0 and seed == seeds[0])
          for i, (name, workdir) in enumerate(runs) for seed in seeds]
  if args.t2t_workdir:
    jobs += [_Job("text", name, workdir, seed, False) for name, workdir in runs for seed in seeds]
  if args.jobs <= 1:
    return {job.key: _score_job(job, evaluate, evaluate_text, args, out_dir, log)
            for job in jobs}
  reports = {}
  with futures.ProcessPoolExecutor(
      args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
    pending = {pool.submit(_score_in_worker, job, evaluate, evaluate_text, args, out_dir):
               job.key for job in jobs}
    for done in futures.as_completed(pending):
      reports[pending[done]] = done.result()  # A worker's error is raised here, as is.
  return reports


def _sampling_time(workdir: str, args) -> dict:
  """`run_facts.sampling_time` of the run at `workdir`: one --timed-seconds sample."""
  from avflow_jax.inference import avatar as avatar_lib  # pylint: disable=g-import-not-at-top
  avatar = avatar_lib.Avatar.load(workdir, vocoder_weights=args.vocoder_weights)
  return run_facts.sampling_time(avatar, args.split, args.steps, args.timed_seconds)


# ---- The table -----------------------------------------------------------------------------------

def mean_std(values: list) -> dict:
  """{"mean", "std" (population, None for one value), "values"} of the non-None values."""
  vals = [float(v) for v in values if v is not None]
  if not vals:
    return {"mean": None, "std": None, "values": list(values)}
  return {"mean": float(np.mean(vals)), "std": float(np.std(vals)) if len(vals) > 1 else None,
          "values": list(values)}


def _reference_rows(report: dict) -> list[dict]:
  ref = report["reference"]
  return [{"name": "ground truth", "metrics": {k: mean_std([v]) for k, v in
                                               ref["ground_truth"].items()}},
          {"name": "vocoded ground truth", "metrics": {k: mean_std([v]) for k, v in
                                                       ref["vocoded_ground_truth"].items()}}]


def build_table(args, log=print, *, evaluate, evaluate_text) -> dict[str, Any]:
  """Scores every run of `args.runs`, writes OUTPUT/table.{md,json}; returns the table.

  Args:
    args: the parsed flags (`make_parser`).
    log: progress lines.
    evaluate: `scoring.evaluate` (passed in by the command, which keeps the import graph
      shallow: this module sits beside the scoring modules, not above them).
    evaluate_text: `text_scoring.evaluate_text`.
  """
  runs = parse_runs(args.runs)
  seeds = parse_seeds(args.seeds)
  check_arguments(args)
  out_dir = os.path.abspath(os.path.expanduser(args.output))
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise InputError(f"--output {out_dir}: cannot create it ({e.strerror})") from e

  start = time.perf_counter()
  rows, text_rows = [], []
  # Bad runs fail first.
  summaries = {name: run_facts.run_summary(workdir) for name, workdir in runs}
  by_job = score_all(evaluate, evaluate_text, runs, seeds, args, out_dir, log)
  first = by_job[("tokens", runs[0][0], seeds[0])]
  for name, workdir in runs:
    summary = summaries[name]
    reports = [by_job[("tokens", name, seed)] for seed in seeds]
    row = {"name": name, "workdir": workdir, **summary,
           "metrics": {k: mean_std([r["metrics"].get(k) for r in reports])
                       for k in av_metrics.METRIC_KEYS}}
    if not args.no_timing:
      row["timing"] = _sampling_time(workdir, args)
      log(f"{name}: one {args.timed_seconds:g} s sample {row['timing']['sample_s']:.2f} s")
    rows.append(row)
    if args.t2t_workdir:
      text = [by_job[("text", name, seed)] for seed in seeds]
      text_rows.append({"name": name, "metrics": {
          k: mean_std([t["metrics"].get(k) for t in text])
          for k in ("F1_lips", "F1_lips_speech", "token_agreement")}})
  table = {
      "format_version": TABLE_VERSION,
      "protocol": {**_protocol(args, None), "seeds": seeds, "seed_stride": SEED_STRIDE,
                   "timed_seconds": args.timed_seconds},
      "data_dir": first["data_dir"], "num_clips": first["num_clips"],
      "seconds_evaluated": first["seconds_evaluated"], "vocoder": first["config"]["vocoder"],
      "recogniser": first["config"]["recogniser"],
      "device": run_facts.device_name(), "t2t_workdir": args.t2t_workdir,
      "rows": _reference_rows(first) + rows, "text_rows": text_rows,
      "directions": {k: av_metrics.DIRECTION[k] for k in paper_table_markdown.COLUMNS},
      "seconds": time.perf_counter() - start,
  }
  files.write_atomic(os.path.join(out_dir, "table.md"),
                     paper_table_markdown.render_markdown(table))
  files.write_atomic(os.path.join(out_dir, "table.json"),
                     json.dumps(table, indent=2, allow_nan=False) + "\n")
  log(f"wrote {out_dir}/table.md and table.json in {table['seconds']:.0f} s")
  return table


def main(argv: Optional[list[str]] = None, *, evaluate, evaluate_text) -> int:
  """CLI entry point; returns the exit code (2 for bad input, with one line on stderr)."""
  return cli.run(argv, make_parser, functools.partial(
      build_table, evaluate=evaluate, evaluate_text=evaluate_text), (InputError,))
