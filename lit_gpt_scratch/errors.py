"""The one exception type for bad input a user can fix."""


class UserError(Exception):
    """Bad input: the CLI prints the message as one line and exits non-zero, with no traceback.

    Raise it with a message that names the thing (a path, a config key) and the problem,
    and, where there is one, the way out.
    """

    exit_code = 1


class Diverged(UserError):
    """Training produced a non-finite loss or gradient and the policy is to stop (exit 3)."""

    exit_code = 3
