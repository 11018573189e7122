"""The paper table as markdown: Table 1's columns, then size, training and sampling time."""

from typing import Optional

from avflow_jax.evaluation import av_metrics
from avflow_jax.evaluation import common

# The paper's Table 1 columns, then this project's jitter ratios.
COLUMNS = ("F1_lips", "FDe", "Div_h", "Div_e", "BC_h", "BC_e", "MCD", "WER", "Jitter_face",
           "Jitter_head")


def _cell(stat: Optional[dict]) -> str:
  """A `paper_table.mean_std` as "mean ± std" (the mean alone for one value, – for none)."""
  if not stat or stat["mean"] is None:
    return "–"
  if stat["std"] is None:
    return common.fmt(stat["mean"])
  return f"{common.fmt(stat['mean'])} ± {stat['std']:.2g}"


def _timing_cell(timing: Optional[dict]) -> str:
  """The timed sample's seconds, with the cascaded variant's two stages in brackets."""
  if not timing:
    return "–"
  timed = f"{timing['sample_s']:.2f} s"
  if "stages_s" in timing:
    st = timing["stages_s"]
    timed += f" ({st['audio']:.2f} + {st['visual']:.2f})"
  return timed


def render_markdown(table: dict) -> str:
  """The table (`paper_table.build_table`) as markdown: the paper's Table 1 layout plus size,
  training and timing."""
  p = table["protocol"]
  lines = [
      "# AV-Flow and its ablations (the paper's Table 1 protocol)", "",
      f"* data: `{table['data_dir']}`, split `{p['split']}`: {table['num_clips']} clips, "
      f"{table['seconds_evaluated']:.1f} s each evaluation"
      + (f" (first {p['max_seconds']:g} s of each)" if p["max_seconds"] else " (whole clips)"),
      f"* seeds {', '.join(map(str, p['seeds']))} (clip i of seed k: noise seed "
      f"{p['seed_stride']} k + i); {p['num_steps']} Euler steps; vocoder {table['vocoder']}; "
      f"recogniser {table['recogniser'] or 'none'}",
      f"* timing: one {p['timed_seconds']:g} s sample on {table['device']}", "",
      "| row | " + " | ".join(COLUMNS) + f" | params | train | {p['timed_seconds']:g} s sample |",
      "|---|" + "---|" * (len(COLUMNS) + 3),
      "| better | " + " | ".join(av_metrics.DIRECTION[k].split(" (")[0] for k in COLUMNS)
      + " | | | lower |",
  ]
  for row in table["rows"]:
    size = f"{row['params'] / 1e6:.2f} M" if row.get("params") else "–"
    train = f"{row['train_s'] / 60:.1f} min" if row.get("train_s") else "–"
    lines.append(f"| {row['name']} | " + " | ".join(_cell(row["metrics"].get(k))
                                                   for k in COLUMNS)
                 + f" | {size} | {train} | {_timing_cell(row.get('timing'))} |")
  if table["text_rows"]:
    lines += ["", "Driven from text (tokens predicted by the text-to-tokens run "
              f"`{table['t2t_workdir']}`):", "",
              "| row | F1_lips | F1_lips (sentence frames) | token agreement |",
              "|---|---|---|---|"]
    for row in table["text_rows"]:
      m = row["metrics"]
      lines.append(f"| {row['name']} | {_cell(m.get('F1_lips'))} | "
                   f"{_cell(m.get('F1_lips_speech'))} | {_cell(m.get('token_agreement'))} |")
  lines += ["", "Rows: mean ± std over the seeds (population std). `params`: the AV network's "
            "parameters (the head VAE, shared by every row, not counted); `train`: seconds in "
            "training steps (start-up, compilation, evaluations and checkpoints excluded). "
            "Ground-truth rows: metrics that are defined on the recordings alone; the vocoded "
            "ground truth is the recorded mel through the same vocoder (MCD's and WER's floor).",
            "See docs/evaluation.md for the protocol."]
  return "\n".join(lines) + "\n"
