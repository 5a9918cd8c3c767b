"""Errors an operator can act on: each renders as one line naming what is wrong and what to do."""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2  # a clean stop, a bug, input edged cannot use (one line says which)


class EdgedError(Exception):
    """A problem with the user's input or environment, shown as one line without a traceback."""


class ConfigError(EdgedError):
    """The configuration file cannot be used as written."""


class ModelError(EdgedError):
    """A model file is missing, unreadable or of an unknown family, or its device cannot run it.

    `key`: the model's setting at fault, `path` (the file) or `device`."""

    def __init__(self, message: str, *, key: str = "path") -> None:
        super().__init__(message)
        self.key = key
