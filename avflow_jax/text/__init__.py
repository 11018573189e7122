"""Text front end: cleaning, eSpeak NG phonemes, Matcha-TTS's 178 symbol ids."""

from avflow_jax.text.cleaners import clean_text
from avflow_jax.text.frontend import ids_to_text
from avflow_jax.text.frontend import intersperse
from avflow_jax.text.frontend import symbols_to_ids
from avflow_jax.text.frontend import text_to_ids
from avflow_jax.text.frontend import text_to_phonemes
from avflow_jax.text.symbols import N_SYMBOLS
from avflow_jax.text.symbols import SPACE_ID
from avflow_jax.text.symbols import SYMBOLS

__all__ = ["clean_text", "ids_to_text", "intersperse", "symbols_to_ids", "text_to_ids",
           "text_to_phonemes", "N_SYMBOLS", "SPACE_ID", "SYMBOLS"]
