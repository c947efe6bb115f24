"""fast.ai Lesson 5 as tracked, sweepable, reproducible experiments."""

__version__ = "0.1.0"
