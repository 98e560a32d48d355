"""User-facing errors. The CLI prints them as one line and exits with code 2."""


class DhpcError(Exception):
    """An error caused by the user's input or environment (bad file, bad value, missing model).

    The message names the bad value and says how to fix it.
    """


class ConfigError(DhpcError):
    """An invalid configuration value."""


class MissingModelError(DhpcError):
    """Weights or model files that are not on disk."""


class InputError(DhpcError):
    """An unreadable or malformed input file."""
