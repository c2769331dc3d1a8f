"""One exception type for problems the user can fix; the CLI prints it as one line."""


class LmtuneError(Exception):
    """Bad input or configuration: shown to the user as `error: <message>`, never a traceback."""
