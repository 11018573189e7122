"""The paper's AV-Flow model and optimiser (official recipe values).

Usage:
  python -m avflow_jax.train --config configs/base.py --workdir /tmp/avflow
  python -m avflow_jax.train --config configs/base.py --config.data.dir=/data/shards \
      --config.batch_size=32 --config.mesh.fsdp=2
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
  """Returns the base ConfigDict; `arg` is unused (kept for `configs/x.py:arg` overrides)."""
  del arg
  c = ml_collections.ConfigDict()
  c.task = "av"  # What to train: "av" (this model), "head_vae" or "text_to_tokens".
  c.seed = 0  # Seeds init, data order, crops and flow noise; same seed => same run.

  # ---- Data -------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.dir = config_dict.placeholder(str)  # Shard dir from `python -m data_prep`; unset = demo.
  c.data.demo_cache = "~/.cache/avflow_jax"  # Where the demo corpus and its shards are built.
  c.data.demo_minutes = 30.0  # Length of the demo corpus generated when data.dir is unset.
  c.data.demo_seed = 0  # Seed of the demo corpus generator.
  c.data.train_split = "train"  # Manifest split to train on.
  c.data.eval_split = "val"  # Manifest split for the periodic validation loss.
  c.data.crop_frames = 345  # Training segment length in mel frames (4.0 s at 86.13 fps).
  c.data.num_workers = 0  # Grain multiprocessing workers per host (0 = read in the main process).
  c.data.read_threads = 1  # Threads reading crops ahead in each reader process (0 = none);
  # more threads contend for the GIL (16, Grain's default, halves the crops/s).
  c.data.participant = False  # Dyadic setting: condition on the participant's 87-d features.
  c.data.stats_from = config_dict.placeholder(str)  # Shard/normalisation dir whose manifest
  # stats normalise the streams instead of data.dir's (set by init.workdir; see below).
  c.data.cache_mb = 1024  # Decoded records kept in memory per reader process (0 = none): in
  # format-1 shards a crop reads its whole clip; paged shards (format 2) read only its pages.
  c.data.crop_sampling = "frames"  # "frames": every start frame of the split is a sample, so
  # long clips are drawn in proportion to their length (the official recipe); "clips": each
  # clip once per pass at a random start.

  # ---- Model (official: 67,935,576 parameters with 29 token dims) -------------------------
  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 8  # Blocks per tower (audio and visual each).
  c.model.d_model = 512  # Tower width.
  c.model.hidden_dim = 1024  # Feed-forward width.
  c.model.num_heads = 4  # Attention heads (head dim = d_model / num_heads = 128).
  c.model.windows = (16, 8)  # (left, right) frames seen; one pair for all layers, or a list of
  # pairs, one per layer; a negative value means unbounded (full attention) for that layer.
  c.model.attention_block = 64  # Query block of the linear-cost windowed attention.
  c.model.token_lookahead = 0  # Frames the token conditioning is read ahead: frame i sees the
  # tokens of frame i + k, so lips can anticipate speech with small right windows; a stream
  # waits k frames more (0 = the paper's and the official model's conditioning).
  c.model.variant = "av_flow"  # "av_flow", or the paper's ablations: "separate" (two towers,
  # no connection), "shared" (one tower for both modalities), "cascaded" (tokens -> mel, then
  # mel -> motion); see avflow_jax/models/dit.py.
  c.model.fusion = True  # Highway fusion between the towers (False = the ablation).
  c.model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (params, LayerNorm,
  # softmax, outputs and the loss stay float32).
  c.model.remat = "none"  # Recompute blocks in the backward pass to save memory: "none",
  # "full" (keep nothing), "dots_saveable" (keep matmul outputs) or
  # "dots_with_no_batch_dims_saveable" (keep weight matmuls only); True/False mean full/none.
  c.model.attention = "auto"  # "blocked" (linear-cost band), "dense" (T x T scores, as the
  # official model), "cudnn" (jax.nn.dot_product_attention as a shifted causal window; the
  # cuDNN kernel on GPU, XLA's elsewhere); "auto": cudnn on a GPU in bf16 where it compiles,
  # else blocked.
  c.model.scan_layers = False  # One block pair under nn.scan instead of num_layers unrolled
  # (compiles once; params stacked under "layers"; needs one window for all layers).

  # ---- Initial weights (fine-tuning) -------------------------------------------------------
  c.init = ml_collections.ConfigDict()
  c.init.workdir = config_dict.placeholder(str)  # Start from this AV run's weights (e.g. one
  # made by `python -m avflow_jax.import_official`) instead of a random init, at step 0.
  c.init.which = "params"  # Its weights to start from: "params" or "ema".
  c.init.adam_moments = False  # Also start Adam's moments from its checkpoint (an imported
  # official file's exp_avg / exp_avg_sq, or the run's own optimiser state).
  c.init.stats = True  # Keep its normalisation statistics (its weights were trained with them):
  # data.stats_from is set to its data, so data.dir only supplies the crops.

  # ---- Head-pose VAE -----------------------------------------------------------------------
  c.head_vae = ml_collections.ConfigDict()
  c.head_vae.workdir = config_dict.placeholder(str)  # Trained VAE workdir; unset = train one
  # first into WORKDIR/head_vae with configs/head_vae.py and the steps below.
  c.head_vae.steps = 3000  # Steps of that automatic VAE training.
  c.head_vae.ff_dim = 2048  # Feed-forward width of that VAE's transformer layers (official).
  c.head_vae.kld_weight = 1.0  # KL weight of that VAE (official 1.0, trained for 500k steps).
  # (left, right) frames each frame of that VAE attends to, or None for full attention (the
  # official model); a window lets the decoder run exactly on a stream (inference/streaming.py).
  c.head_vae.window = config_dict.placeholder(tuple)

  # ---- Flow matching loss ------------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.sigma_min = 1e-6  # Noise left at t = 1 on the straight path.
  c.loss.face_weight = 1.0  # L1 weight of the face codes.
  c.loss.head_weight = 0.2  # L1 weight of the head-pose latent.
  c.loss.mel_weight = 3.0  # L1 weight of the mel spectrogram.
  c.loss.time_sampling = "uniform"  # Training t: "uniform" (official) or "logit_normal"
  # (sigmoid of N(time_loc, time_scale^2): more steps mid-path); validation is always uniform.
  c.loss.time_loc = 0.0  # Logit-normal location (> 0 leans towards the data end, t = 1).
  c.loss.time_scale = 1.0  # Logit-normal scale.

  # ---- Sampling defaults (read by sample, evaluate, serve and the API from config.json) -----
  c.sample = ml_collections.ConfigDict()
  c.sample.temperature = 1.0  # Scale of the sampler's initial noise when none is asked for
  # (1.0: the distribution trained on, as the official sampler).

  # ---- Optimisation ------------------------------------------------------------------------
  c.batch_size = 16  # Global batch (segments), split over all devices of all hosts.
  c.num_steps = 1_000_000  # Training steps.
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4  # Peak learning rate.
  c.optim.b1 = 0.9  # Adam beta1.
  c.optim.b2 = 0.98  # Adam beta2.
  c.optim.weight_decay = 0.0  # Decoupled (AdamW) weight decay.
  c.optim.eps = 1e-8  # Adam's epsilon (optax's default; the official trainer used 1e-9).
  c.optim.warmup_steps = 0  # Linear warmup from 0 to lr.
  c.optim.schedule = "constant"  # After warmup: "constant" or "cosine" (decays to 0 at num_steps).
  c.optim.grad_clip = 0.0  # Global-norm clipping threshold (0 = off, as the official recipe).
  c.optim.ema_decay = 0.9999  # EMA of the params used for sampling (0 = EMA equals the params).

  # ---- Mesh: axes (data, fsdp); -1 fills the remaining devices -----------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Data-parallel axis size.
  c.mesh.fsdp = 1  # Parameter-sharding axis size (the batch is split over both axes).
  # Logical axis -> mesh axes: the batch is split over both axes, the model's d_model side of
  # every kernel (and its Adam moments) over fsdp; unnamed axes are replicated.
  c.mesh.rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"))

  # ---- Logging, checkpoints, runtime -------------------------------------------------------
  c.log_every = 50  # Steps between metric logs (TensorBoard + console with ETA).
  c.eval_every = 5000  # Steps between validation-loss evaluations (0 = never).
  c.eval_batches = 8  # Batches per validation evaluation.
  c.ckpt_every = 5000  # Steps between checkpoints (and one at the end).
  c.keep_checkpoints = 3  # Latest checkpoints kept.
  c.async_checkpointing = True  # Write checkpoints in a background thread.
  c.compilation_cache_dir = "~/.cache/avflow_jax/jax_cache"  # Persistent XLA cache ("" = off).
  c.distributed_init_timeout = 300  # Seconds to wait for all hosts in jax.distributed.
  return c
