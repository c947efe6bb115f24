"""Core: discriminative learning rates, a stage's `lr` as the lesson writes it turned into one lr per layer group.

- a number, `1e-3`: every group gets it;
- `slice(b)`: the last group (the head) gets b, the others b / `trainer.slice_div` (3, as the lesson says; fastai
  made it 10 in 1.0.29, and v2 keeps 10);
- `slice(a, b)`: the first group a, the last b, the groups between spaced evenly in between, multiplicatively
  (fastai's `even_mults`);
- a list `[l1, l2, l3]`: one lr per group, as given.

No torch here: configs are checked (`lesson5.config.validate`) before anything heavy is imported.
"""

from __future__ import annotations

import math
import re
from typing import Any, Union

Lr = Union[float, tuple[float, ...], list]  # parsed: a number, a slice (1 or 2 bounds) or a per-group list
_SLICE = re.compile(r"^\s*slice\(\s*([^,()]+?)\s*(?:,\s*([^,()]+?)\s*)?\)\s*$")


def parse(value: Any) -> Lr:
    """A stage's lr as given in a config or on the command line; ValueError says what is wrong."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        lrs = [float(v) for v in value]
        if not lrs:
            raise ValueError("an empty list")
        return lrs
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    m = _SLICE.match(text)
    if m is None:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number, slice(b), slice(a,b) or a list") from None
    bounds = tuple(float(g) for g in m.groups() if g is not None)
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        raise ValueError(f"{text}: the first group's lr must not exceed the last's (slice(a,b) with a <= b: the "
                         f"body learns slower than the head)")
    return bounds


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """n values from start to stop, evenly spaced on a log scale (fastai's even_mults)."""
    if n == 1:
        return [stop]
    step = (stop / start) ** (1 / (n - 1))
    return [start * step**i for i in range(n)]


def group_lrs(value: Any, n_groups: int, div: float = 3.0) -> list[float]:
    """One lr per layer group for a stage's `lr` (see the module docstring)."""
    lr = parse(value)
    if isinstance(lr, float):
        return [lr] * n_groups
    if isinstance(lr, list):
        if len(lr) != n_groups:
            raise ValueError(f"{len(lr)} lrs for {n_groups} layer group(s)")
        return lr
    if len(lr) == 1:
        return [lr[0] / div] * (n_groups - 1) + [lr[0]]
    if n_groups < 2:
        raise ValueError(f"slice(a,b) needs at least 2 layer groups; this model has {n_groups}")
    return even_mults(lr[0], lr[1], n_groups)


def problems(value: Any, n_groups: int, div: float) -> list[str]:
    """What is wrong with a stage's lr for a model with n_groups layer groups ([] when nothing)."""
    try:
        lrs = group_lrs(value, n_groups, div)
    except ValueError as e:
        return [str(e)]
    return [] if all(math.isfinite(v) and v > 0 for v in lrs) else [f"{value}: every lr must be a finite number > 0"]
