"""The one exception type for bad input a user can fix, the checks that raise it, and the
one-line form of another library's error that such a message quotes."""

import math


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


class Interrupted(BaseException):
    """A Ctrl-C that stopped cleanly inside ``fit`` (its ``prepare_data``): raised in place of
    the KeyboardInterrupt, which Lightning turns into exit code 1, the bad-input code."""


class StoppedNow(BaseException):
    """A second Ctrl-C during training: stop at once, without saving (exit code 130). Not a
    KeyboardInterrupt, which Lightning turns into exit code 1 with no word of why."""


def check_at_least(key: str, value, minimum) -> None:
    """A ``UserError`` naming ``key`` unless ``value >= minimum`` and finite: the one-line
    check the typed constructors run on their options, so every entry point reports a bad
    value alike. NaN fails it too (it compares false with everything)."""
    _check_finite(key, value)
    if not value >= minimum:
        raise UserError(f"{key} must be at least {minimum}, got {value}")


def check_in(key: str, value, low, high) -> None:
    """A ``UserError`` naming ``key`` unless ``low <= value < high``."""
    _check_finite(key, value)
    if not low <= value < high:
        raise UserError(f"{key} must be in [{low}, {high}), got {value}")


def check_above(key: str, value, minimum) -> None:
    """A ``UserError`` naming ``key`` unless ``value > minimum`` and finite."""
    _check_finite(key, value)
    if not value > minimum:
        raise UserError(f"{key} must be above {minimum}, got {value}")


def _check_finite(key: str, value) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value}")


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """An error's message as one line (whitespace runs collapsed; the type's name when it has no
    message), cut to ``limit`` characters: for quoting another library's error in a UserError.
    A DataLoader worker's error, which the main process re-raises wrapped in the worker's
    traceback, is its original message (the traceback's last line)."""
    message = str(error)
    if "\nOriginal Traceback" in message:
        message = message.rstrip().splitlines()[-1].split("Error: ", 1)[-1]
    text = " ".join(message.split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text[:limit] if limit else text
