"""fast.ai Lesson 5 as tracked, sweepable, reproducible experiments."""

__version__ = "0.1.0"


def compose(overrides=()):
    """The config `python -m lesson5 <overrides>` would run (a DictConfig), for tests, benchmarks and sweeps."""
    from lesson5.config import compose

    return compose(overrides)
