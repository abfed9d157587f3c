"""The one exception type whose message reaches the user as a single line (the CLI prints it, exit code 2)."""


class UserError(Exception):
    """Bad input: a suite key, a file, a parameter. The message names it and says what is wrong."""
