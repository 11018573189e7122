"""Text front end: cleaning, number reading, symbol set, eSpeak phonemes and ids."""

import logging

import numpy as np
import pytest

from avflow_jax.text import cleaners
from avflow_jax.text import frontend
from avflow_jax.text import symbols


def _need_espeak():
  from avflow_jax.text import espeak
  try:
    espeak.library_source()
  except espeak.EspeakError as e:
    pytest.skip(f"eSpeak NG unavailable: {e}")


def test_symbol_set():
  assert symbols.N_SYMBOLS == len(symbols.SYMBOLS) == 178
  assert symbols.SPACE_ID == 16 and symbols.SYMBOLS[16] == " "
  assert symbols.SYMBOLS[0] == "_"
  assert symbols.SYMBOLS[1:17] == tuple(';:,.!?¡¿—…"«»“” ')
  assert symbols.SYMBOLS[17] == "A" and symbols.SYMBOLS[43] == "a"
  assert symbols.SYMBOL_TO_ID["ɑ"] == 69 and symbols.SYMBOL_TO_ID["ᵻ"] == 177
  for ch in "ˈˌːəɚɹʊθðŋʃʒɾᵻ":  # what eSpeak en-us emits.
    assert ch in symbols.SYMBOL_TO_ID


@pytest.mark.parametrize("raw, cleaned", [
    ("Mr. Smith paid $3.50 for 2 apples in 1984.",
     "mister smith paid three dollars, fifty cents for two apples in nineteen eighty four."),
    ("Dr. Jones, is it the 21st?", "doctor jones, is it the twenty first?"),
    ("It's 50% off: £5, £1.01 or $1,000,000!",
     "it's fifty percent off: five pounds, one pound, one penny or one million dollars!"),
    ("In 2000, 2007, 1900, 1905 and 2024; -3 and 3.14.",
     "in two thousand, two thousand seven, nineteen hundred, nineteen oh five and twenty "
     "twenty four; minus three and three point one four."),
    ("The 1990s, the 12th and 100th, 1,984 votes, $0.01.",
     "the nineteen nineties, the twelfth and one hundredth, one thousand nine hundred eighty "
     "four votes, one cent."),
    ("St. Mary's Co. Ltd., Capt. & Lt. Col. Sgt. Jr.",
     "saint mary's company limited, captain and lieutenant colonel sergeant junior"),
    ("Café  “naïve”\tfaçade…  Straße", 'cafe "naive" facade... strasse'),
    ("Meet at 3:30, 7:05 or 10:00.", "meet at three thirty, seven oh five or ten o'clock."),
])
def test_clean_text(raw, cleaned):
  assert cleaners.clean_text(raw) == cleaned


def test_number_words():
  assert cleaners.number_to_words(0) == "zero"
  assert cleaners.number_to_words(115) == "one hundred fifteen"
  assert cleaners.number_to_words(1_000_001) == "one million one"
  assert (cleaners.number_to_words(42_300_017) ==
          "forty two million three hundred thousand seventeen")
  assert cleaners.ordinal_to_words(3) == "third"
  assert cleaners.ordinal_to_words(40) == "fortieth"
  assert cleaners.ordinal_to_words(1002) == "one thousand second"


# Reference IPA from the bundled eSpeak NG (espeakng-loader); another eSpeak version may
# differ in a vowel or stress here and there.
@pytest.mark.parametrize("raw, ipa", [
    ("Hello, world.", "həlˈoʊ, wˈɜːld."),
    ("Dr. Jones, is it the 21st?", "dˈɑːktɚ dʒˈoʊnz, ɪz ɪt ðə twˈɛnti fˈɜːst?"),
    ("Mr. Smith paid $3.50 for 2 apples in 1984.",
     "mˈɪstɚ smˈɪθ pˈeɪd θɹˈiː dˈɑːlɚz, fˈɪfti sˈɛnts fɔːɹ tˈuː ˈæpəlz ɪn nˈaɪntiːn ˈeɪɾi "
     "fˈɔːɹ."),
    ("Wait... really!", "wˈeɪt... ɹˈiəli!"),
])
def test_phonemes(raw, ipa):
  _need_espeak()
  assert frontend.text_to_phonemes(raw) == ipa


def test_text_to_ids():
  _need_espeak()
  ids = frontend.text_to_ids("Hello, world.")
  plain = frontend.text_to_ids("Hello, world.", add_blank=False)
  assert ids.dtype == np.int32 and plain.dtype == np.int32
  expected = [symbols.SYMBOL_TO_ID[c] for c in "həlˈoʊ, wˈɜːld."]
  np.testing.assert_array_equal(plain, expected)
  assert len(ids) == 2 * len(plain) + 1
  np.testing.assert_array_equal(ids[0::2], 0)
  np.testing.assert_array_equal(ids[1::2], plain)
  assert symbols.SPACE_ID in plain and symbols.SYMBOL_TO_ID[","] in plain
  assert frontend.ids_to_text(ids) == "həlˈoʊ, wˈɜːld."
  np.testing.assert_array_equal(frontend.text_to_ids(""), [0])


def test_unknown_symbols_dropped_with_warning(caplog):
  with caplog.at_level(logging.WARNING):
    ids = frontend.symbols_to_ids("ab#c@ə")
  np.testing.assert_array_equal(ids, [symbols.SYMBOL_TO_ID[c] for c in "abcə"])
  assert "unknown symbol" in caplog.text and "'#'" in caplog.text and "'@'" in caplog.text


def test_intersperse():
  np.testing.assert_array_equal(frontend.intersperse(np.array([5, 7])), [0, 5, 0, 7, 0])
