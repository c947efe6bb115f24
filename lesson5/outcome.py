"""Core: how a run ends: the one table from what stopped a fit to the MLflow run status and the `outcome` tag.

A fit stops by an exception, as fastai's do (`CancelFitException`); `run(cfg)` looks the exception up here.
A pruned trial is KILLED, not FINISHED: its metrics stop partway, and a FINISHED run is one that trained to the
end, so filtering the UI on `status = FINISHED` compares only whole runs. It is not FAILED either: nothing went
wrong. Its `outcome` tag says `pruned`, which tells it from a run stopped by Ctrl-C (`interrupted`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from lesson5.errors import DivergedError


@dataclass(frozen=True)
class Outcome:
    status: str  # MLflow's RunStatus name
    outcome: str  # the run's `outcome` tag
    reason: Optional[str] = None  # its `stop_reason` tag: why it did not finish

    def tags(self) -> dict[str, str]:
        """The tags a run ends with: its outcome, and why it stopped when it did not finish."""
        return {"outcome": self.outcome, **({"stop_reason": self.reason[:5000]} if self.reason else {})}


# First match wins. A class given by name ("module.Class") matches without importing its module: the trainer does
# not import Optuna, whose pruners raise TrialPruned from a callback.
TABLE: list[tuple[Union[type, str], str, str]] = [
    (DivergedError, "FAILED", "diverged"),
    ("optuna.exceptions.TrialPruned", "KILLED", "pruned"),
    (KeyboardInterrupt, "KILLED", "interrupted"),  # Ctrl-C, and SIGTERM (the CLI raises KeyboardInterrupt for it)
    (BaseException, "FAILED", "error"),
]
FINISHED = Outcome("FINISHED", "finished")


def _matches(exc: BaseException, spec: Union[type, str]) -> bool:
    if isinstance(spec, type):
        return isinstance(exc, spec)
    return any(f"{k.__module__}.{k.__qualname__}" == spec for k in type(exc).__mro__)


def outcome(exc: Optional[BaseException]) -> Outcome:
    """The status and tags for a run that ended by `exc` (None: it trained to the end)."""
    if exc is None:
        return FINISHED
    status, name = next((status, name) for spec, status, name in TABLE if _matches(exc, spec))
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        reason = "interrupted (Ctrl-C or SIGTERM)"
    return Outcome(status, name, reason)
