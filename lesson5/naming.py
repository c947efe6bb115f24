"""Core: how runs read in the MLflow UI: the experiment they land in, their names, their description and seed groups.

Pure functions of the validated config and the command's overrides; no torch, no MLflow.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from typing import Any, Optional

MAX_RUN_NAME = 250  # MLflow's run-name column; a longer name is cut, never refused

# Overrides that say where a run goes or how it prints, not what it trains: left out of its name.
_QUIET = ("tracking.", "trainer.progress", "data.path", "data.cache_dir", "data.sources", "data.verify", "hydra.")
_NAMED = ("model", "optim")  # already the name's first words


def experiment_name(conf) -> str:
    """tracking.experiment, or one experiment per data set (`lesson5-movielens`, `lesson5-mnist`), so that the
    UI's table and charts compare like with like: RMSE runs with RMSE runs."""
    return conf.tracking.experiment or f"lesson5-{conf.data.name}"


def _short(override: str) -> str:
    """`optim.wd=0.01` -> `wd=0.01`; a group choice `schedule=constant` -> `constant`."""
    key, value = override.lstrip("+~").split("=", 1)
    return f"{key.rsplit('.', 1)[-1]}={value}" if "." in key else value


def run_name(conf, overrides: Sequence[str]) -> str:
    """tracking.run_name, or the model, the optimizer and what the command changed: `collab adam wd=0.01`."""
    if conf.tracking.run_name:
        return cut(conf.tracking.run_name)
    extra = [_short(o) for o in overrides if "=" in o and not o.lstrip("+~").startswith(_QUIET)
             and o.lstrip("+~").split("=", 1)[0] not in _NAMED]
    return cut(" ".join([conf.model.name, conf.optim.name, *extra]))


def cut(name: str) -> str:
    return name if len(name) <= MAX_RUN_NAME else name[: MAX_RUN_NAME - 1] + "…"


def seed_group(conf, params: dict[str, Any]) -> str:
    """The same value for runs whose configs differ only in their seeds (and in where they are tracked): the
    `seed_group` tag, which the UI's "Group by" turns into a mean and a spread across seeds."""
    recipe = {k: v for k, v in params.items() if not k.startswith(("tracking.", "data.info.")) and
              k.rsplit(".", 1)[-1] != "seed" and k not in ("trainer.progress", "data.path", "data.cache_dir")}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{conf.model.name} {conf.optim.name} {conf.data.name} {digest}"


def source_name() -> str:
    """What MLflow's Source column shows: the command, as `python -m lesson5` rather than a file path."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return sys.argv[0] if sys.argv[0] not in ("", "-c") else "python"


def note(conf, name: str, overrides: Sequence[str]) -> str:
    """A run's one-line description (`mlflow.note.content`)."""
    o, stages = conf.optim, conf.trainer.stages
    fits = ("; then ".join(f"{st.name}: {st.epochs} epoch(s) at lr {st.lr}{', body frozen' if st.frozen else ''}"
                           for st in stages) if stages else f"{conf.trainer.epochs} epochs at lr {o.lr:g}")
    return (f"{name}: {conf.model.name} on {conf.data.name}, {o.name} wd={o.wd:g} ({o.wd_mode.value}), "
            f"{conf.schedule.name.value} schedule, {fits}, seed {conf.trainer.seed}. "
            f"Command: {' '.join([source_name(), *overrides])}")


def plain_name(value: Any) -> Optional[str]:
    """An Option check for a name that becomes a file name (a study's `<name>.md` and `<name>.csv`)."""
    text = str(value)
    if not text.strip() or text != text.strip():
        return "give a name without leading or trailing spaces"
    if any(c in text for c in "/\\") or text.startswith(".") or not text.isprintable():
        return ("give a plain name (letters, digits, - and _): it names the report's files, <name>.md and "
                "<name>.csv")
    return None
