"""The text-to-tokens task for the shared training loop (`config.task = "text_to_tokens"`)."""

from avflow_jax.data import utterances
from avflow_jax.models import t2t_loss
from avflow_jax.models import text_to_tokens
from avflow_jax.training import task as task_lib


def build_t2t_task(config, manifest: dict, data_dir: str) -> task_lib.Task:
  """Matcha-style text -> 29-d token model on the utterances of the shards.

  The loss normalises the tokens with the run's statistics, `config.model.token_mean` /
  `token_std` (carried by the model; an older config.json without them gets the official
  constants), so a run trained or fine-tuned from an imported official checkpoint keeps the
  checkpoint's `mean` / `std`.
  """
  del manifest
  model = text_to_tokens.make_model(config)
  max_symbols, max_frames = config.data.max_symbols, config.data.max_frames

  def init(rng):
    return text_to_tokens.init_params(model, rng, max_symbols, max_frames)

  def loss_fn(params, batch, rng, train=True):
    # `model` holds token_mean / token_std: the loss works on the run's normalised tokens.
    loss, metrics = t2t_loss.loss_fn(params, batch, rng, model, train)
    return loss, {"loss_" + k: v for k, v in metrics.items() if k != "loss"}

  def make_dataset(split, seed, rows=None):
    return utterances.make_t2t_dataset(
        data_dir, split, config.batch_size, seed, max_symbols, max_frames,
        add_blank=config.data.add_blank, rows=rows, num_workers=config.data.num_workers,
        cache_dir=config.data.get("index_cache"),
        holdout_split=config.data.get("holdout_split", ""),
        cache_mb=config.data.get("cache_mb", 0))

  return task_lib.Task("text_to_tokens", init, loss_fn, make_dataset, max_frames)
