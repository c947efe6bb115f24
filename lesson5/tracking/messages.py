"""Services: what the trainer and the tracking writer say to each other (services layer): plain dataclasses of plain
Python values, sent as length-prefixed pickles over the writer's standard input and output (`Pipe`).

Values are str, float, int and bytes only: unpickling a torch or numpy value would import torch in the writer.
A run is named by a small local id (`rid`) until MLflow assigns its run id.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Optional, Union

Row = tuple[str, float, int]  # (key, value, step)
_LENGTH = struct.Struct("!Q")  # each message: its pickle's length, then the pickle


class Pipe:
    """One direction of the trainer-writer channel on a binary file: `put` sends a message, `get` reads the next
    one, raising EOFError once the other end has closed (or died)."""

    def __init__(self, file: BinaryIO):
        self.file = file

    def put(self, msg) -> None:
        """Send `msg` now (a pipe of the OS buffers it; the caller's thread may block when that is full)."""
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self.file.write(_LENGTH.pack(len(data)))
        self.file.write(data)
        self.file.flush()

    def get(self):
        """The next message, waiting for it."""
        head = self.file.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            raise EOFError("the other end closed the channel")
        (n,) = _LENGTH.unpack(head)
        data = self.file.read(n)
        if len(data) < n:
            raise EOFError("the other end closed the channel mid-message")
        return pickle.loads(data)


@dataclass
class Settings:
    """trainer -> writer, first: where to write, whether to spool (tracking.mode=offline), whether runs will log
    MLflow models (the writer then imports torch while it waits)."""

    uri: str
    spool_root: str
    offline: bool = False
    models: bool = False


@dataclass
class StartRun:  # trainer -> writer: Settings, then StartRun, LogMetrics, LogFiles, LogModel, EndRun, Close
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
class Summary:
    """A run's summary metrics (at step 0) and tags, and its end when `status` is given, without the plots of
    EndRun: the calls a sweep's driver makes on the study's parent run, spooled when its store is away."""

    rid: int
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    status: Optional[str] = None  # FINISHED, FAILED or KILLED; None: the run stays open


@dataclass
class Close:
    """Finish everything queued, then exit."""


@dataclass
class Flush:
    """Answer Flushed once everything queued before it is written (or spooled)."""


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
class Flushed:
    """Everything sent before the Flush is written (or spooled)."""


@dataclass
class Closed:
    """Everything is written and every run closed; `spooled`: the spool folder, if the store went away."""

    spooled: Optional[str] = None
