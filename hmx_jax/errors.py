"""User-facing errors.

Anything a user can fix (a bad model name, a missing file, a malformed row, a
config key that does not exist) raises `UserError` with one line that names
what is wrong and where. The command line prints that line and exits with 2;
`--debug` shows the traceback.
"""


class UserError(Exception):
  """An error caused by the user's input, reported as one line."""
