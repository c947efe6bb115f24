"""Hydra's config tree, shipped in the wheel as the package lesson5.conf (see pyproject.toml)."""
