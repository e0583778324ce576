"""Exceptions that map to exit codes: a UserError is the user's to fix (exit 2, one line, no traceback)."""


class UserError(Exception):
    """Bad input from the user: a file, an option or a config. The message names the file and the cause."""

    exit_code = 2


def user_error(path, cause: str) -> UserError:
    """Build a UserError whose one-line message names ``path`` and ``cause``."""
    return UserError(f"{path}: {cause}")
