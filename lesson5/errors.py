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


def describe(error: BaseException) -> str:
    """An error's message as a user needs it: Hydra's "Error merging override trainer.epochs=abc" with its cause
    (the value and the type it wanted), without the config search path Hydra appends."""
    text = str(error).split("\nConfig search path:")[0].rstrip()
    cause = error.__cause__
    said = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    if said and said not in text:  # lesson5's own errors already quote theirs
        text += f": {said}"
    return text
