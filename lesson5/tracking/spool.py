"""Services: the offline spool, what the tracking writer could not send, kept on disk until `python -m lesson5.sync`.

A spool is a folder under `.lesson5/offline/` (in the folder the command runs from) holding `target` (the store's
URI) and `messages.pkl`: the writer's messages in order, pickled one after another and flushed each time, so a
crash loses at most the message being written. `Known` records name the runs that already exist in the store.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(".lesson5") / "offline"


@dataclass
class Known:
    """Local run `rid` already exists in the store as `run_id` (created before the store went away)."""

    rid: int
    run_id: str


class Spool:
    def __init__(self, root: Path, uri: str):
        self.dir = root.resolve() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "target").write_text(uri)
        self._file = open(self.dir / "messages.pkl", "ab")

    def add(self, msg) -> None:
        pickle.dump(msg, self._file)
        self._file.flush()


def pending(root: Path = ROOT) -> list[Path]:
    """The spools under `root`, oldest first."""
    return sorted(d for d in root.glob("*") if (d / "messages.pkl").is_file()) if root.is_dir() else []


def read(folder: Path) -> Iterator:
    """A spool's messages in order (a record cut short by a crash ends the spool)."""
    with open(folder / "messages.pkl", "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except (EOFError, pickle.UnpicklingError):
                return


def spool_calls(uri: str, run_id: str, files: dict[str, bytes], metrics: dict[str, float], tags: dict[str, str],
                status: str | None, root: Path = ROOT) -> Path:
    """A spool of the calls a process makes directly on run `run_id` (a study's parent run), for when its store
    is away: its files, then its summary metrics, tags and end. `python -m lesson5.sync` sends them. Its folder."""
    from lesson5.tracking.messages import LogFiles, Summary

    spool = Spool(root, uri)
    spool.add(Known(1, run_id))
    if files:
        spool.add(LogFiles(1, files))
    spool.add(Summary(1, metrics, tags, status))
    spool._file.close()
    return spool.dir
