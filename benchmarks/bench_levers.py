r"""Trains one run per training lever on the same batches and scores each: what each lever buys.

  python benchmarks/bench_levers.py --root runs/levers [--config configs/demo.py] \
      [--steps 3000] [--head-vae runs/demo/head_vae] [--seeds 0,1000] [--no-wer] \
      [--set FIELD=VALUE ...] [--lever NAME:FIELD=VALUE,FIELD=VALUE ...] [--only NAME,NAME] \
      [--eval-data-dir SHARDS]

Every lever is a name and `--config.FIELD=VALUE` overrides of `--config`; `base` (no override)
is always run first, as the row the others are read against. Without `--lever` the default set
below runs (issue 17's levers that need a training run). `--set` overrides apply to every run
(for example `--set data.dir=/data/shards`). Runs share the seed, so they draw the
same crops, t and noise where their shapes allow (batch and crop length change the batches by
design), and share one head VAE (`--head-vae`, else base's own), except levers that override
`head_vae.*`, which train their own.

Each run is `python -m avflow_jax.train` into ROOT/NAME (resumed if cut, skipped if complete),
then `python -m avflow_jax.evaluate` on the whole val split at the run's own sampling
temperature, once per seed (reports in ROOT/NAME/eval/levers-seedS, reused when complete).
With `--eval-data-dir` every run is scored on that shard dir's val split instead (reports in
levers-seedS-on-TAG), so levers that change the corpus (`data.demo_minutes`, with
`data.stats_from` set to base's data dir so the normalisation is base's too) are read on clips
no run trained on (their validation losses stay each run's own split's).
Validation losses are `loop.evaluate_loss`' (fixed crops, t ~ U(0, 1) whatever the lever, raw
params), so every row is measured on the same scale. Prints progress, a markdown table and, last,
one JSON line with every row.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avflow_jax.core import run_dir  # pylint: disable=wrong-import-position

# Issue 17's levers that need their own training run (temperature, Euler steps and EMA-vs-raw
# are sampler options: `evaluate --temperature / --steps / --which` on any run).
DEFAULT_LEVERS = (
    "wide:model.d_model=192,model.hidden_dim=384",
    "deep:model.num_layers=6",
    "batch16:batch_size=16",
    "crop345:data.crop_frames=345",
    "t_logit_normal:loss.time_sampling=logit_normal",
    "ema_0.9999:optim.ema_decay=0.9999",
    "mel_weight_0.2:loss.mel_weight=0.2",
)
# WER_gap (WER minus the vocoded recordings' WER on the same clips) is the speech figure that
# compares across val splits: issue 17's goal is a gap <= 0.10.
METRICS = ("F1_lips", "F1_smiles", "FDe", "Div_h", "MCD", "WER", "WER_gap", "Jitter_face",
           "Jitter_head")


def parse_lever(spec: str) -> tuple[str, tuple[str, ...]]:
  """"NAME:FIELD=VALUE,..." -> (NAME, ("FIELD=VALUE", ...)); ValueError naming the spec."""
  name, _, body = spec.partition(":")
  overrides = tuple(o.strip() for o in body.split(",") if o.strip())
  if (not name or "/" in name or name.startswith(".") or not overrides
      or any("=" not in o for o in overrides)):
    raise ValueError(f"--lever {spec!r}: expected NAME:FIELD=VALUE[,FIELD=VALUE...]")
  return name, overrides


def trains_own_head_vae(overrides) -> bool:
  return any(o.startswith("head_vae.") for o in overrides)


def final_val_loss(workdir: str, step: int) -> dict:
  """{"total", "face", "head", "mel"}: the validation loss logged at `step` ({} if none)."""
  found = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      m = json.loads(line)
      if m.get("step") == step and "val_loss" in m:
        found = {"total": m["val_loss"], **{k: m.get(f"val_loss_{k}")
                                            for k in ("face", "head", "mel")}}
  return found


def _run(cmd: list[str], log_path: str) -> None:
  with open(log_path, "a") as log:
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode} (log: {log_path})")


def train(args, name: str, overrides, head_vae: str) -> str:
  workdir = os.path.join(args.root, name)
  if run_dir.latest_step(workdir) == args.steps:
    return workdir
  cmd = [sys.executable, "-m", "avflow_jax.train", "--config", args.config, "--workdir", workdir,
         f"--config.num_steps={args.steps}"]
  if not args.eval_every or args.steps % args.eval_every:  # The last step logs a val loss.
    cmd.append(f"--config.eval_every={args.steps}")
  if head_vae and not trains_own_head_vae(overrides):
    cmd.append(f"--config.head_vae.workdir={head_vae}")
  cmd += [f"--config.{o}" for o in list(args.set or ()) + list(overrides)]
  os.makedirs(workdir, exist_ok=True)
  _run(cmd, os.path.join(args.root, f"{name}.train.log"))
  return workdir


def data_tag(data_dir: str) -> str:
  """A report-folder tag for a shard dir: its name, or its parent's for `.../NAME/shards`."""
  path = os.path.abspath(os.path.expanduser(data_dir))
  base = os.path.basename(path)
  return os.path.basename(os.path.dirname(path)) if base == "shards" else base


def score(args, name: str, workdir: str, seed: int) -> dict:
  tag = f"-on-{data_tag(args.eval_data_dir)}" if args.eval_data_dir else ""
  out = os.path.join(workdir, "eval", f"levers-seed{seed}{tag}", "report.json")
  if os.path.isfile(out):
    with open(out) as f:
      report = json.load(f)
    # A report of another corpus under the same tag is not reused.
    same_data = not args.eval_data_dir or report.get("data_dir") == os.path.abspath(
        os.path.expanduser(args.eval_data_dir))
    if report.get("checkpoint_step") == args.steps and same_data:
      return report
  cmd = [sys.executable, "-m", "avflow_jax.evaluate", "--workdir", workdir, "--max-seconds", "0",
         "--no-plots", "--seed", str(seed), "--output", out] + (["--no-wer"] if args.no_wer else [])
  if args.eval_data_dir:
    cmd += ["--data-dir", args.eval_data_dir]
  _run(cmd, os.path.join(args.root, f"{name}.eval.log"))
  with open(out) as f:
    return json.load(f)


def _metric(report: dict, key: str):
  """A report's metric; WER_gap is its WER minus the vocoded recordings' on the same clips."""
  m = report["metrics"]
  if key != "WER_gap":
    return m.get(key)
  ref = report.get("reference", {}).get("vocoded_ground_truth", {}).get("WER")
  return None if m.get("WER") is None or ref is None else m["WER"] - ref


def _row(args, name, overrides, workdir, reports) -> dict:
  from avflow_jax.evaluation import paper_table  # pylint: disable=g-import-not-at-top
  from avflow_jax.evaluation import run_facts  # pylint: disable=g-import-not-at-top
  facts = run_facts.run_summary(workdir)
  stats = {k: paper_table.mean_std([_metric(r, k) for r in reports]) for k in METRICS}
  return {"name": name, "overrides": list(overrides), "params": facts["params"],
          "train_minutes": None if facts["train_s"] is None else facts["train_s"] / 60,
          "val_loss": final_val_loss(workdir, args.steps),
          "temperature": reports[0]["config"]["temperature"], "seeds": args.seeds,
          "metrics": {k: v["mean"] for k, v in stats.items()},
          "metrics_std": {k: v["std"] for k, v in stats.items()}}


def markdown(rows) -> str:
  fmt = lambda v: "–" if v is None else f"{v:.3g}"  # pylint: disable=unnecessary-lambda-assignment
  head = ["lever", "params", "train min", "val loss", "face", "head", "mel"] + list(METRICS)
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    v = r["val_loss"]
    cells = [r["name"], f"{r['params'] / 1e6:.2f} M", fmt(r["train_minutes"])]
    cells += [fmt(v.get(k)) for k in ("total", "face", "head", "mel")]
    cells += [fmt(r["metrics"][k]) for k in METRICS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True, help="folder of the runs (ROOT/NAME)")
  p.add_argument("--config", default="configs/demo.py")
  p.add_argument("--steps", type=int, default=3000, help="training steps of every run")
  p.add_argument("--head-vae", help="head-VAE workdir shared by the runs (default: base's own)")
  p.add_argument("--seeds", default="0,1000", help="evaluate seeds, comma-separated")
  p.add_argument("--no-wer", action="store_true", help="skip the recogniser")
  p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                 help="a config override of every run (repeatable)")
  p.add_argument("--lever", action="append", help="NAME:FIELD=VALUE,... (repeatable)")
  p.add_argument("--only", help="run only these lever names (comma-separated; base always)")
  p.add_argument("--eval-data-dir", help="score every run on this shard dir's val split "
                 "instead of its own (each keeps its own normalisation): one split for levers "
                 "that change the corpus")
  args = p.parse_args(argv)
  args.seeds = [int(s) for s in args.seeds.split(",")]
  args.root = os.path.abspath(args.root)
  if args.head_vae:
    args.head_vae = os.path.abspath(args.head_vae)
  import common  # pylint: disable=g-import-not-at-top  (benchmarks/common.py)
  args.eval_every = common.load_config(args.config).eval_every
  levers = [("base", ())] + [parse_lever(s) for s in (args.lever or DEFAULT_LEVERS)]
  if args.only:
    keep = set(args.only.split(","))
    levers = [lv for lv in levers if lv[0] == "base" or lv[0] in keep]
  os.makedirs(args.root, exist_ok=True)
  rows, start = [], time.perf_counter()
  head_vae = args.head_vae
  for i, (name, overrides) in enumerate(levers):
    t0 = time.perf_counter()
    workdir = train(args, name, overrides, head_vae)
    if head_vae is None and name == "base":
      head_vae = os.path.join(workdir, run_dir.HEAD_VAE_DIR)
    reports = [score(args, name, workdir, s) for s in args.seeds]
    rows.append(_row(args, name, overrides, workdir, reports))
    done = time.perf_counter() - start
    print(f"[{i + 1}/{len(levers)}] {name}: {time.perf_counter() - t0:.0f} s; ETA "
          f"{done / (i + 1) * (len(levers) - i - 1) / 60:.0f} min", flush=True)
  print(markdown(rows))
  print(json.dumps({"benchmark": "levers", "config": args.config, "steps": args.steps,
                    "rows": rows}))


if __name__ == "__main__":
  main()
