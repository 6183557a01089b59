"""Errors that jobs turn into a clear message and a non-zero exit.

Every error names what is wrong (file, column, row) so that a user can fix the input
without reading a traceback.
"""


class SemrecError(Exception):
    """Base class: an expected failure with a user-facing message."""

    exit_code = 1


class InputError(SemrecError):
    """Bad input data: missing/wrong columns, NaN embeddings, duplicate ids, empty text..."""

    exit_code = 3


class ConfigError(SemrecError):
    """Invalid settings (bad value, unknown field, unreadable config file)."""

    exit_code = 2
