"""User-facing errors: one line, no traceback, non-zero exit from the CLI (and from scripts that ask for it)."""

import sys


class CircuitryError(Exception):
    """An error caused by the caller's input or files (bad name, bad file, bad value).

    The CLI prints ``error: <message>`` on one line and exits with status 1.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def check_flags(positive: dict[str, float], non_negative: dict[str, float] | None = None) -> None:
    """Refuse CLI options (``{"--flag": value}``) that are not > 0 / >= 0 (NaN fails both), naming the flag."""
    for flags, ok, what in ((positive, lambda v: v > 0, "a positive number"), (non_negative or {}, lambda v: v >= 0, "a number >= 0")):
        for flag, value in flags.items():
            if not ok(value):
                raise CircuitryError(f"{flag} must be {what}, got {value}")


def one_line_errors_in_scripts() -> None:
    """For scripts (the examples): an uncaught :class:`CircuitryError` prints ``error: <message>`` on one line, as the CLI
    does, instead of a traceback; the exit status stays 1. Other exceptions keep their traceback."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, CircuitryError):
            print(f"error: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
