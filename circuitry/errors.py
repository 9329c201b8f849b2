"""User-facing errors: one line, no traceback, non-zero exit from the CLI."""


class CircuitryError(Exception):
    """An error caused by the caller's input or files (bad name, bad file, bad value).

    The CLI prints ``error: <message>`` on one line and exits with status 1.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
