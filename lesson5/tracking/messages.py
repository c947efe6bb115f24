"""What the trainer and the tracking writer say to each other: plain dataclasses of plain Python values.

Values are str, float, int and bytes only: unpickling a torch or numpy value would import torch in the writer.
A run is named by a small local id (`rid`) until MLflow assigns its run id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

Row = tuple[str, float, int]  # (key, value, step)


@dataclass
class StartRun:  # trainer -> writer: StartRun, LogMetrics, LogFiles, LogModel, EndRun, Close
    rid: int
    experiment: str
    name: Optional[str]
    params: dict[str, str]
    tags: dict[str, str]
    files: dict[str, bytes] = field(default_factory=dict)
    parent: Union[int, str, None] = None  # a local id of this tracker, or an MLflow run id from anywhere
    # MLflow dataset inputs: dicts of name, digest, source, source_type and profile (a JSON string)
    datasets: list[dict[str, str]] = field(default_factory=list)


@dataclass
class LogMetrics:
    rid: int
    timestamp: int  # ms
    rows: list[Row]


@dataclass
class LogFiles:
    rid: int
    files: dict[str, bytes]  # by path in the run, e.g. "model/weights.pt"


@dataclass
class LogModel:
    """An MLflow model: `payload` is torch.save({"model", "input", "output"}) of the CPU model and an example
    batch, for its signature. The writer imports torch for it, and only for it."""

    rid: int
    payload: bytes
    name: str = "model"


@dataclass
class EndRun:
    rid: int
    status: str  # FINISHED, FAILED or KILLED
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Close:
    """Finish everything queued, then exit."""



@dataclass
class Started:  # writer -> trainer: Started, Failed, Closed
    rid: int
    run_id: str
    experiment_id: str


@dataclass
class Failed:
    rid: Optional[int]  # None: the writer could not start at all
    error: str


@dataclass
class Closed:
    """Everything is written and every run closed; `spooled`: the spool folder, if the store went away."""

    spooled: Optional[str] = None
