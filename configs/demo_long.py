"""The demo avatar trained long enough to speak: configs/demo.py for 30,000 steps.

`configs/demo.py` (3,000 steps, ~20 minutes on two CPU cores) shows the pipeline end to end; its
speech is not yet intelligible (WER 1.02 against the vocoded recordings' 0.35). Training length
is the lever measured to move speech most (BENCHMARKS.md, "Learning curve"): this config keeps
the demo model and recipe and only trains longer (about 4 hours on two CPU cores).
"""

from configs import demo


def get_config(arg=None):
  c = demo.get_config(arg)
  c.num_steps = 30000  # 10x the demo: WER 1.02 @3k -> 0.79 @10k and still falling.
  c.eval_every = 2000  # Validation loss every ~15 minutes.
  c.ckpt_every = 2000  # Checkpoints to evaluate the learning curve from.
  c.keep_checkpoints = 16  # Keep them all (0.1 GB): the curve is the point of the run.
  return c
