r"""Exports an avflow_jax AV run in the official AV-Flow checkpoint format (no torch needed).

  python -m avflow_jax.export_official --workdir RUN --output av_flow.pt \
      [--head-vae-output head_vae.pt] [--which params]

The file loads with the official `Trainer.load_checkpoint` (and `torch.load`): the
`AVDiffusionWrapper` state dict, the iteration, and an AdamW state with empty moments. The
official code normalises with its own constants; a run trained with other statistics gets a
warning (see `inference/official_export.py`).
"""

import sys

from avflow_jax.core import cli


def make_parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m avflow_jax.export_official", description=__doc__,
                         formatter_class=cli.argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="the AV run directory")
  p.add_argument("--output", required=True, help="the .pt file to write")
  p.add_argument("--head-vae-output", help="also write the run's head VAE to this .pt file")
  p.add_argument("--which", choices=("ema", "params"), default="ema", help="weights to export")
  p.add_argument("--verbose", action="store_true", help="show library logs on stderr")
  return p


def run(args, log=print) -> list:
  from avflow_jax.inference import official_export  # pylint: disable=g-import-not-at-top
  return official_export.export_run(args.workdir, args.output, which=args.which,
                                    head_vae_output=args.head_vae_output, log=log)


def main(argv=None) -> int:
  return cli.run(argv, make_parser, run)


if __name__ == "__main__":
  sys.exit(main())
