"""English text normalisation before phonemisation.

`clean_text` folds the text to ASCII, lowercases it, spells out numbers, currency amounts and
percentages, expands common abbreviations and collapses whitespace. Matcha-TTS's
`english_cleaners2` leaves numbers to eSpeak; spelling them out here gives the same reading for
every eSpeak version and lets years, ordinals and money read naturally.
"""

import re
import unicodedata

# Characters NFKD cannot decompose into ASCII, with the spelling a reader would use. The
# currency signs are kept until `_expand_currency` has read them.
_FOLD = {
    "“": '"', "”": '"', "„": '"', "«": '"', "»": '"', "‘": "'", "’": "'", "‚": "'",
    "‹": "'", "›": "'", "—": "-", "–": "-", "‐": "-", "‑": "-", "−": "-", "…": "...",
    "ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "đ": "d",
    "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "Th", "ð": "d", "Ð": "D", "ı": "i",
    "×": "x", "\u00a0": " ",
}
_KEEP = frozenset("£€")

# (abbreviation, expansion); matched as a whole word followed by a period.
_ABBREVIATIONS = [
    (re.compile(rf"\b{abbr}\.", re.IGNORECASE), expansion) for abbr, expansion in [
        ("mrs", "misess"), ("mr", "mister"), ("drs", "doctors"), ("dr", "doctor"),
        ("st", "saint"), ("co", "company"), ("jr", "junior"), ("maj", "major"),
        ("gen", "general"), ("rev", "reverend"), ("lt", "lieutenant"), ("hon", "honorable"),
        ("sgt", "sergeant"), ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"),
        ("col", "colonel"), ("ft", "fort"),
    ]
]

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]
_ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                      "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}
_DIGITS_LIMIT = 10**15  # beyond this, numbers are read digit by digit.


def ascii_fold(text: str) -> str:
  """Replaces accented and typographic characters with ASCII; drops what has no spelling.

  `£` and `€` survive so that currency expansion can read them.
  """
  out = []
  for ch in text:
    if ord(ch) < 128 or ch in _KEEP:
      out.append(ch)
    elif ch in _FOLD:
      out.append(_FOLD[ch])
    else:
      # NFKD splits "é" into "e" + a combining accent and maps compatibility forms
      # ("ﬁ", full-width digits) to plain letters; whatever stays non-ASCII is dropped.
      decomposed = unicodedata.normalize("NFKD", ch)
      out.append("".join(c for c in decomposed if ord(c) < 128))
  return "".join(out)


def number_to_words(n: int) -> str:
  """Cardinal reading of a non-negative integer, American style ("one hundred five")."""
  if n < 0:
    return "minus " + number_to_words(-n)
  if n >= _DIGITS_LIMIT:
    return " ".join(_ONES[int(d)] for d in str(n))
  if n < 20:
    return _ONES[n]
  if n < 100:
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (" " + _ONES[ones] if ones else "")
  if n < 1000:
    hundreds, rest = divmod(n, 100)
    return _ONES[hundreds] + " hundred" + (" " + number_to_words(rest) if rest else "")
  for scale, name in _SCALES:
    if n >= scale:
      high, rest = divmod(n, scale)
      return (number_to_words(high) + " " + name +
              (" " + number_to_words(rest) if rest else ""))
  raise AssertionError(n)  # unreachable: n >= 1000 always meets a scale.


def ordinal_to_words(n: int) -> str:
  """Ordinal reading: 1 -> "first", 22 -> "twenty second", 100 -> "one hundredth"."""
  words = number_to_words(n).split(" ")
  last = words[-1]
  if last in _ORDINAL_IRREGULAR:
    words[-1] = _ORDINAL_IRREGULAR[last]
  elif last.endswith("y"):
    words[-1] = last[:-1] + "ieth"
  else:
    words[-1] = last + "th"
  return " ".join(words)


def year_to_words(n: int) -> str:
  """Reads a year in pairs of digits, the usual way for 1100-2099.

  1984 "nineteen eighty four", 1905 "nineteen oh five", 1900 "nineteen hundred",
  2000 "two thousand", 2007 "two thousand seven", 2024 "twenty twenty four".
  """
  if n % 1000 == 0 or 2000 < n < 2010:
    return number_to_words(n)  # "two thousand", "two thousand seven".
  high, low = divmod(n, 100)
  if low == 0:
    return number_to_words(high) + " hundred"
  if low < 10:
    return number_to_words(high) + " oh " + _ONES[low]
  return number_to_words(high) + " " + number_to_words(low)


def _digits(s: str) -> str:
  return " ".join(_ONES[int(d)] for d in s)


def _decimal_to_words(integer: str, fraction: str) -> str:
  return number_to_words(int(integer or "0")) + " point " + _digits(fraction)


_CURRENCY_UNITS = {"$": ("dollar", "dollars", "cent", "cents"),
                   "£": ("pound", "pounds", "penny", "pence"),
                   "€": ("euro", "euros", "cent", "cents")}
# One number with its context: optional currency sign, digits with optional thousands
# separators and decimals, optional ordinal suffix, plural "s" ("1990s") or percent sign.
_NUMBER_RE = re.compile(
    r"(?:(?P<cur>[$£€])\s?)?"
    r"(?<!\d)(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?:\.(?P<frac>\d+))?"
    r"(?P<suf>(?:st|nd|rd|th|s)\b|\s?%)?")
# Clock times "3:30", "10:05", "7:00".
_TIME_RE = re.compile(r"\b(\d{1,2}):(\d{2})\b")
# A minus sign: a hyphen at the start of a word directly before a digit.
_NEGATIVE_RE = re.compile(r"(?:^|(?<=[\s(]))-(?=[$£€]?\.?\d)")


def _read_currency(sign: str, integer: str, frac: str | None) -> str:
  one, many, sub_one, sub_many = _CURRENCY_UNITS[sign]
  if frac is not None and len(frac) != 2:
    # Not an amount with cents ("$1.5"): read the decimal, then the unit.
    return _decimal_to_words(integer, frac) + " " + many
  major, minor = int(integer or "0"), int(frac or "0")
  parts = []
  if major or not minor:
    parts.append(number_to_words(major) + " " + (one if major == 1 else many))
  if minor:
    parts.append(number_to_words(minor) + " " + (sub_one if minor == 1 else sub_many))
  return ", ".join(parts)


def _read_number(m: re.Match) -> str:
  sign, integer, frac, suffix = m.group("cur"), m.group("int"), m.group("frac"), m.group("suf")
  if integer is None and frac is None:
    return m.group(0)  # a bare sign or suffix letters, not a number.
  has_commas = integer is not None and "," in integer
  integer = (integer or "").replace(",", "")
  suffix = (suffix or "").strip()
  if sign:
    words = _read_currency(sign, integer, frac)
    return words + (" percent" if suffix == "%" else "")
  if frac is not None:
    words = _decimal_to_words(integer, frac)
  elif suffix and suffix not in ("%", "s") and not has_commas:
    return ordinal_to_words(int(integer))
  elif (len(integer) == 4 and not has_commas and not integer.startswith("0") and
        1100 <= int(integer) <= 2099):
    words = year_to_words(int(integer))
  else:
    words = number_to_words(int(integer))
  if suffix == "%":
    return words + " percent"
  if suffix == "s":  # "1990s" -> "nineteen nineties", "4s" -> "fours".
    return words[:-1] + "ies" if words.endswith("y") else words + "s"
  return words + (" " + suffix if suffix else "")


def _read_time(m: re.Match) -> str:
  hours, minutes = int(m.group(1)), int(m.group(2))
  if minutes == 0:
    return number_to_words(hours) + " o'clock"
  if minutes < 10:
    return number_to_words(hours) + " oh " + _ONES[minutes]
  return number_to_words(hours) + " " + number_to_words(minutes)


def expand_numbers(text: str) -> str:
  """Spells out times, currency, percentages, decimals, ordinals, years and integers."""
  text = _TIME_RE.sub(_read_time, text)
  text = _NEGATIVE_RE.sub("minus ", text)
  return _NUMBER_RE.sub(_read_number, text)


def expand_abbreviations(text: str) -> str:
  for pattern, expansion in _ABBREVIATIONS:
    text = pattern.sub(expansion, text)
  return text


def collapse_whitespace(text: str) -> str:
  """Single spaces, none before punctuation, none at the ends."""
  text = re.sub(r"\s+", " ", text)
  return re.sub(r" ([,.;:!?])", r"\1", text).strip()


def clean_text(text: str) -> str:
  """Normalises English text for phonemisation.

  ASCII folding -> lowercase -> numbers (times, currency $ £ €, %, decimals, ordinals,
  years, integers) -> abbreviations -> "&" as "and" -> whitespace collapse.

  Args:
    text: raw text.

  Returns:
    Lowercase ASCII text with every digit spelled out.
  """
  if not isinstance(text, str):
    raise TypeError(f"clean_text: text must be str, got {type(text).__name__}")
  text = ascii_fold(text).lower()
  text = expand_numbers(text)
  for sign, unit in (("$", " dollars "), ("£", " pounds "), ("€", " euros ")):
    text = text.replace(sign, unit)  # signs without an amount right after them.
  text = expand_abbreviations(text)
  text = re.sub(r"\s*&\s*", " and ", text)
  return collapse_whitespace(text)
