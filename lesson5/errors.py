"""Core: the errors a user can cause and fix; each message names the key or file and says how to fix it."""


class Lesson5Error(Exception):
    """Base of the errors reported without a traceback."""


class ConfigError(Lesson5Error):
    """A config value out of its allowed range."""


class DataError(Lesson5Error):
    """Data that cannot be found, fetched, verified or parsed."""


class TrackingError(Lesson5Error):
    """An MLflow store that cannot be reached or written."""


class DivergedError(Lesson5Error):
    """A loss that became NaN or infinite."""
