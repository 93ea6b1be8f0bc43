"""User-facing errors: one clear line, exit code 2, never a stack trace."""


class UsageError(Exception):
    """Bad input from the user. The message names the problem and the fix."""

    exit_code = 2


class NumericalError(UsageError):
    """NaN or inf in weights, activations or statistics: the run stops and names where."""
