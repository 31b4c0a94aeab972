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


class Terminated(BaseException):
    """SIGTERM asked a command to stop and it stopped cleanly at a safe point (exit code 143,
    128 + SIGTERM): like a KeyboardInterrupt, not an error of the input."""


class StoppedNow(BaseException):
    """A second Ctrl-C during training: stop at once, without saving (exit code 130). Not a
    KeyboardInterrupt, which Lightning turns into exit code 1 with no word of why."""


def check_at_least(key: str, value, minimum) -> None:
    """A ``UserError`` naming ``key`` unless ``value >= minimum``: the one-line check the typed
    constructors run on their options, so every entry point reports a bad value alike."""
    if value < minimum:
        raise UserError(f"{key} must be at least {minimum}, got {value}")
