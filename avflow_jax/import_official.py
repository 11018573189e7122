r"""Imports the official AV-Flow release into an avflow_jax run directory (no torch needed).

  python -m avflow_jax.import_official --config configs/official_50h.py \
      --release /data/av_flow_release --workdir /tmp/official_50h
  python -m avflow_jax.import_official --config configs/official_50h.py --workdir RUN \
      --av av_flow_ckpt_50h.pt --head-vae head_vae/iter-0500000.pt \
      --head-stats 50h_dataset/headpose/headpose_normstats [--t2t text_to_tokens.pth]

The run directory is then used as any trained run: `python -m avflow_jax.sample --workdir RUN`,
`evaluate`, `api.Avatar.load(RUN)`, or fine-tuned with `train --config.init.workdir=RUN`.
A missing, foreign or hostile file exits with status 2 and one `error:` line naming it (and the
key), and nothing is written.
"""

import sys
from typing import Optional

from avflow_jax.core import cli
from avflow_jax.core.errors import InputError


def make_parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m avflow_jax.import_official", description=__doc__,
                         formatter_class=cli.argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True,
                 help="the AV run config to record (configs/official_50h.py[:dyadic]); its "
                 "windows and heads are used, its sizes replaced by the file's")
  p.add_argument("--workdir", required=True, help="run directory to create (must not exist)")
  p.add_argument("--release", help="the release download directory (files found by name)")
  p.add_argument("--av", help="the AV checkpoint (av_flow_ckpt_50h.pt, checkpoints/iter-*.pt)")
  p.add_argument("--head-vae", help="the head-pose VAE (head_vae/iter-0500000.pt)")
  p.add_argument("--t2t", help="the text-to-tokens model (text_to_tokens.pth)")
  p.add_argument("--head-stats", help="headpose/headpose_normstats/ (head_qvec_mean.npy, ...)")
  p.add_argument("--participant-stats",
                 help="participant/camera01/smirk_outputs/stats/ (recorded for dyadic runs)")
  p.add_argument("--dyadic", choices=("auto", "yes", "no"), default="auto",
                 help="whether the AV model is dyadic (default: from its conditioning width)")
  p.add_argument("--adam-moments", action="store_true",
                 help="also import Adam's moments (for train --config.init.adam_moments)")
  p.add_argument("--verbose", action="store_true", help="show library logs on stderr")
  return p


def run(args, log=print) -> str:
  """Runs the import; returns the run directory."""
  from avflow_jax.inference import official_import  # pylint: disable=g-import-not-at-top
  config = cli.load_config_file(args.config)
  files = (official_import.find_release_files(args.release) if args.release
           else official_import.ReleaseFiles())
  for field, value in (("av", args.av), ("head_vae", args.head_vae),
                       ("text_to_tokens", args.t2t), ("head_stats", args.head_stats),
                       ("participant_stats", args.participant_stats)):
    if value:
      setattr(files, field, value)
  if not files.av:
    raise InputError("give --release DIR or --av FILE")
  dyadic: Optional[bool] = {"auto": None, "yes": True, "no": False}[args.dyadic]
  for field in ("av", "head_vae", "text_to_tokens", "head_stats", "participant_stats"):
    if getattr(files, field):
      log(f"{field}: {getattr(files, field)}")
  workdir = official_import.import_release(files, args.workdir, config, dyadic=dyadic,
                                           adam_moments=args.adam_moments, log=log)
  log(f"wrote {workdir}")
  return workdir


def main(argv=None) -> int:
  return cli.run(argv, make_parser, run)


if __name__ == "__main__":
  sys.exit(main())
