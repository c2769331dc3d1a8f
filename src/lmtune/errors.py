"""Exceptions for problems the user can fix; the CLI prints them as one line."""


class LmtuneError(Exception):
    """Bad input or configuration: shown to the user as `error: <message>`, never a traceback."""

    exit_code = 1


class Interrupted(LmtuneError):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
