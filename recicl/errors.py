"""Error types for problems a user can fix; the CLI prints them as one line, no traceback."""


class ReciclError(Exception):
    """Base for user-fixable errors: the message names the field/file and says how to fix it."""


class DataError(ReciclError):
    """Input data that cannot be read as the chosen source (wrong layout, unreadable file)."""
