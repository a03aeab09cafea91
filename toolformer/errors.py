"""Errors a user can cause and fix: printed as one line by the CLI, never as a traceback."""


class UserError(Exception):
    """A mistake in a flag, a file or a record. ``exit_code`` is the CLI's exit status."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
