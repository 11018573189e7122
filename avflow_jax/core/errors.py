"""The package's error types and exit codes, in one place.

Every error here carries a message meant for a person: it names the file, flag or config field
involved and what to do, and the commands print it as one `error:` line without a traceback.
"""

EXIT_BAD_INPUT = 2  # Bad input: one `error:` line on stderr, nothing half-written.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the job was preempted after saving; restart it to resume.


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


class InputError(Exception):
  """Bad command-line input; the message is printed as one line."""


class AvatarError(ValueError):
  """A trained run (or an input to it) is unusable; the message says why and what to do."""
