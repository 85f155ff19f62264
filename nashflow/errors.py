"""Errors that users see: one clear line naming the file, row or config key."""


class NashflowError(Exception):
    """A user-facing error. ``str(err)`` is a single line that says what to do."""


class ConfigError(NashflowError):
    """The configuration is invalid (unknown key, wrong type, out-of-range value)."""


class DataError(NashflowError):
    """An input table or file is missing or malformed."""
