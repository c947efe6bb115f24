"""The study files, shipped in the wheel as the package lesson5.sweeps (see pyproject.toml)."""
