"""The 178-symbol inventory of Matcha-TTS / VITS (pad, punctuation, Latin letters, IPA).

Ids are positions in `SYMBOLS`; a model trained on these ids depends on this exact order.
"""

PAD = "_"
# 16 marks including the space; the space therefore gets id 16 (SPACE_ID).
PUNCTUATION = ';:,.!?¡¿—…"«»“” '
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# IPA letters, stress (ˈ ˌ) and length (ː ˑ) marks, diacritics, tone arrows. The inventory
# lists the apostrophe twice (around a combining vertical line below); the duplicate is kept
# so that ids and the total of 178 match checkpoints trained on the original list.
IPA_LETTERS = (
    "ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐ"
    "ʒʔʡʕʢǀǁǂǃˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘'\u0329'ᵻ")

SYMBOLS = (PAD,) + tuple(PUNCTUATION) + tuple(LETTERS) + tuple(IPA_LETTERS)
N_SYMBOLS = len(SYMBOLS)  # 178
PAD_ID = 0  # also the blank interspersed by `add_blank`.
SPACE_ID = SYMBOLS.index(" ")  # 16

# For a duplicated symbol the later position wins, as in a dict built in order.
SYMBOL_TO_ID = {s: i for i, s in enumerate(SYMBOLS)}

assert N_SYMBOLS == 178, N_SYMBOLS
assert SPACE_ID == 16, SPACE_ID
