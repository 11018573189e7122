"""Text-to-tokens: Matcha-TTS with 29 ASR-token features (AV-Flow's text front end).

Usage:
  python -m avflow_jax.train --config configs/text_to_tokens.py \
      --config.data.dir=/path/to/shards --workdir /tmp/t2t
  python -m avflow_jax.train --config configs/text_to_tokens.py:tiny ...   # smoke-test sizes
  python -m avflow_jax.train --config configs/text_to_tokens.py:demo --workdir /tmp/t2t_demo
      # demo corpus, ~17 min on a 2-core CPU; scored by python -m avflow_jax.evaluate_text

Shared knobs (mesh, logging, checkpoints, runtime) come from configs/base.py.
"""

import ml_collections

from avflow_jax.core import constants
from configs import base


def model_config(tiny: bool = False) -> ml_collections.ConfigDict:
  """Fields of `avflow_jax.models.text_to_tokens.TextToTokens` (Matcha-TTS defaults)."""
  m = ml_collections.ConfigDict()
  m.n_vocab = 178  # Matcha/VITS symbol set (avflow_jax.text.symbols).
  m.n_feats = 29  # Output features per frame: wav2vec 2.0 CTC logits.
  # Text encoder.
  m.enc_channels = 32 if tiny else 192  # Embedding and transformer width.
  m.enc_filters = 64 if tiny else 768  # Conv-FFN width.
  m.enc_heads = 2  # Attention heads (RoPE on half of each head's dims).
  m.enc_layers = 1 if tiny else 6  # Post-norm transformer layers.
  m.enc_kernel = 3  # Conv-FFN kernel.
  m.enc_dropout = 0.0 if tiny else 0.1  # Tiny runs are overfitting checks: no dropout.
  # ConvReluNorm prenet (the paper's "3 1-D conv layers").
  m.prenet_kernel = 5  # Conv kernel.
  m.prenet_layers = 1 if tiny else 3  # Conv layers.
  m.prenet_dropout = 0.0 if tiny else 0.5  # Dropout after each conv.
  # Duration predictor (sees the stop-gradient encoder output).
  m.dp_filters = 32 if tiny else 256  # Conv width.
  m.dp_kernel = 3  # Conv kernel.
  m.dp_dropout = 0.0 if tiny else 0.1  # Dropout after each conv.
  # Flow-matching 1-D U-Net.
  m.dec_channels = (32, 32) if tiny else (256, 256)  # Width per level; all but the last halve T.
  m.dec_heads = 2  # Attention heads per transformer block.
  m.dec_head_dim = 16 if tiny else 64  # Dims per head.
  m.dec_dropout = 0.0 if tiny else 0.05  # Dropout in the transformer blocks.
  m.dec_blocks = 1  # Transformer blocks per level.
  m.dec_mid_blocks = 1 if tiny else 2  # Middle (ResNet + transformer) blocks.
  m.sigma_min = 1e-4  # OT-CFM noise left at t = 1.
  # Token statistics: the decoder models (tokens - token_mean) / token_std. The defaults are the
  # official ones; an imported official checkpoint brings its own `mean` / `std` buffers.
  m.token_mean = constants.TOKEN_MEAN  # Mean of the raw token logits (one scalar).
  m.token_std = constants.TOKEN_STD  # Their standard deviation (one scalar, > 0).
  # Decoder padding: False masks padded frames (outputs independent of the padded length);
  # True reproduces the official decoder (mask added to attention scores, GroupNorm over padded
  # frames, synthesis on ceil4(frames), one compile per multiple of 4), for parity with it.
  m.official_padding = False
  return m


def get_config(arg=None):
  """Returns the config.

  Args:
    arg: "" (Matcha-TTS sizes and recipe), "tiny" (seconds-to-train model for tests) or "demo"
      (a smaller model and a short schedule for the demo corpus on a CPU).
  """
  if arg not in (None, "", "tiny", "demo"):
    raise ValueError(f"configs/text_to_tokens.py: unknown variant {arg!r} "
                     "(use '', 'tiny' or 'demo')")
  tiny = arg == "tiny"
  c = base.get_config()
  c.task = "text_to_tokens"  # Selects this model, loss and data pipeline in avflow_jax.train.
  c.seed = 1234  # Matcha-TTS's training seed.

  # ---- Data: one example per utterance (records' `utterances`, or `text` for LJSpeech) -----
  # c.data.dir (shard directory) is the placeholder inherited from base; unset = demo corpus.
  c.data.max_symbols = 192 if tiny else 512  # Padded symbol length (2 * phonemes + 1 blanks).
  c.data.max_frames = 512 if tiny else 1024  # Padded frame length (1024 = 11.9 s at 86.13 fps).
  c.data.crop_frames = c.data.max_frames  # Frames per example (throughput accounting).
  c.data.add_blank = True  # Intersperse the blank id 0 between symbols (Matcha recipe).
  c.data.index_cache = "~/.cache/avflow_jax/t2t_index"  # Phonemised utterance index cache.
  # Leave out of training every utterance whose text also occurs in this split ("" = keep all),
  # so that split's sentences are unseen text at evaluation time.
  c.data.holdout_split = ""

  c.model = model_config(tiny)

  # ---- Optimisation: Matcha's recipe (Adam 1e-4, no decay, clip 5.0, no EMA) ---------------
  c.batch_size = 8 if tiny else 32  # Global batch of utterances (Matcha LJSpeech: 32).
  c.num_steps = 200 if tiny else 500_000  # Matcha trains open-ended; ~500k steps on LJSpeech.
  c.optim.lr = 1e-3 if tiny else 1e-4  # Constant learning rate.
  c.optim.b1 = 0.9  # Adam beta1 (PyTorch default).
  c.optim.b2 = 0.999  # Adam beta2 (PyTorch default).
  c.optim.weight_decay = 0.0  # No weight decay.
  c.optim.grad_clip = 5.0  # Global-norm gradient clipping.
  c.optim.ema_decay = 0.0  # Matcha keeps no EMA.

  # ---- Synthesis (previews, sampling) -------------------------------------------------------
  c.sample = ml_collections.ConfigDict()
  c.sample.num_steps = 10  # Euler steps of the flow ODE.
  c.sample.temperature = 0.667  # Scale of the starting noise.
  c.sample.length_scale = 1.0  # Duration multiplier (> 1 speaks slower).

  # ---- Logging and checkpoints ----------------------------------------------------------
  c.log_every = 10 if tiny else 100  # Steps between metric logs.
  c.eval_every = 0 if tiny else 5000  # Steps between validation losses (0 = never).
  c.ckpt_every = 100 if tiny else 5000  # Steps between checkpoints.
  if arg == "demo":
    _demo_overrides(c)
  return c


def _demo_overrides(c: ml_collections.ConfigDict) -> None:
  """The demo corpus on a 2-core CPU in about 18 minutes (figures in BENCHMARKS.md).

  The demo's 12 minutes of actor speech are small and regular, so a 4M-parameter model with
  Matcha's layout learns them; the full 18M model is 3.5x slower per step on a CPU.
  """
  c.data.max_symbols = 160  # Longest demo utterance: 139 ids with blanks.
  c.data.max_frames = 320  # Longest demo utterance: 311 frames (3.6 s).
  c.data.crop_frames = c.data.max_frames
  c.data.holdout_split = "val"  # Val sentences stay unseen text (for avflow_jax.evaluate_text).
  m = c.model
  m.enc_channels = 128
  m.enc_filters = 512
  m.enc_layers = 3
  m.dp_filters = 128
  m.dec_channels = (128, 128)
  m.dec_head_dim = 32
  m.dec_mid_blocks = 1
  c.batch_size = 16  # ~1.1 s per step on 2 CPU cores.
  c.num_steps = 900
  # A short run needs a larger rate than Matcha's open-ended 1e-4; cosine to 0 at num_steps.
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.optim.schedule = "cosine"
  c.log_every = 50
  c.eval_every = 300
  c.ckpt_every = 300
