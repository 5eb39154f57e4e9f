"""The one exception type that reaches users: a message saying what is wrong and how to fix it."""


class UserError(Exception):
  """Bad input (a path, a name, a config value). `main` prints it as one line and exits 2."""
