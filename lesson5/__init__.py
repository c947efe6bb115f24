"""Core: fast.ai Lesson 5 as tracked, sweepable, reproducible experiments."""

__version__ = "0.1.0"


def compose(overrides=(), config_dirs=()):
    """The config `python -m lesson5 <overrides>` would run (a DictConfig), for scripts, tests, benchmarks and
    sweeps; `config_dirs` are folders of your own configs (`experiment/NAME.yaml`...), searched after lesson5's."""
    from lesson5.config import compose

    return compose(overrides, config_dirs)
