"""Errors raised for unusable input."""


class BadInput(ValueError):
  """A clip's input is unusable; the message names the file and the reason.

  Attributes:
    kind: short reason category used to group skipped clips in the summary.
  """

  def __init__(self, message: str, kind: str = "bad input"):
    super().__init__(message)
    self.kind = kind


class FatalError(RuntimeError):
  """The whole run cannot go on (bad arguments, layout, or --strict with bad input)."""
