"""Services: the offline spool, what the tracking writer could not send, kept on disk until `python -m lesson5.sync`.

A spool is a folder under `.lesson5/offline/` (in the folder the command runs from) holding `target` (the store's
URI) and `messages.pkl`: a format marker (`MAGIC`), then the writer's messages in order, one record each: its
pickle's length (8 bytes) and CRC-32 (4 bytes), then the pickle, written in one call and flushed, so a crash
of the process loses at most the record being written (only `close` fsyncs: a crash of the machine may lose
what the system had not yet written, and sync then finds the spool cut). `Known` records name the runs that
already exist in the store.

A spool proves itself whole: `Spool.close` ends it with an `End` record, and `read` yields its messages only up
to that record. Anything else is `Incomplete`, named by record number and byte offset: a record cut short (a
header or a payload with bytes missing, as when the disk fills mid-write), a garbled one (its checksum does not
match, or it does not unpickle), or a file that stops at a record boundary without its `End`. The last is what a
writer leaves when it stops before closing (killed, crashed, its trainer gone, or a full disk between two
records): its whole records are real and are synced, but nothing shows that nothing followed them, so its runs
left open cannot be taken as finished. A writer holds an exclusive lock on `messages.pkl` while it writes, so
sync can tell such a spool from one still being written (`locked`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(".lesson5") / "offline"
MAGIC = b"lesson5 spool 2\n"  # 1 was bare pickles, one after another, with no way to tell a cut
HEAD = struct.Struct("!QI")  # a record's header: its pickle's length and the pickle's CRC-32


@dataclass
class Known:
    """Local run `rid` already exists in the store as `run_id` (created before the store went away)."""

    rid: int
    run_id: str


@dataclass
class End:
    """The last record of a spool closed by its writer: everything it was given is before this."""


class Incomplete(Exception):
    """A spool that cannot be read to its `End` record: `file` (its messages.pkl) is readable up to record
    `record` (counted from 1), which starts at byte `offset`."""

    def __init__(self, file: Path, record: int, offset: int, what: str, why: str):
        super().__init__(f"{file} {what} at record {record} (byte {offset}): {why}")
        self.file, self.record, self.offset = file, record, offset


class InUse(Exception):
    """A spool another process holds: its writer, still writing, or another sync."""


class Spool:
    def __init__(self, root: Path, uri: str):
        root = root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-", dir=root))
        (self.dir / "target").write_text(uri)
        part = self.dir / "messages.pkl.part"
        self._file = open(part, "xb")
        fcntl.flock(self._file, fcntl.LOCK_EX)  # released when closed, or when this process dies
        self._file.write(MAGIC)
        self._file.flush()
        part.rename(self.dir / "messages.pkl")  # pending() sees it only now, locked and marked: sync skips it

    def add(self, msg) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.write(HEAD.pack(len(data), zlib.crc32(data)) + data)
        self._file.flush()

    def close(self) -> None:
        """End the spool with its `End` record, on disk before this returns: it is whole and can be synced."""
        self.add(End())
        os.fsync(self._file.fileno())
        self._file.close()


def pending(root: Path = ROOT) -> list[Path]:
    """The spools under `root`, oldest first (not those moved aside into its subfolders)."""
    return sorted(d for d in root.glob("*") if (d / "messages.pkl").is_file()) if root.is_dir() else []


@contextlib.contextmanager
def locked(folder: Path):
    """Hold a spool for syncing it; InUse if its writer still writes it or another sync holds it."""
    with open(folder / "messages.pkl", "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUse(f"{folder} is in use: a running process is still writing it, or another sync is sending "
                        f"it") from None
        yield


def read(folder: Path) -> Iterator:
    """A spool's messages in order, up to its `End` record; then Incomplete if the file does not end there."""
    file = folder / "messages.pkl"
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(MAGIC)) != MAGIC:
            raise Incomplete(file, 1, 0, "is cut, or not a lesson5 spool,", f"it does not start with {MAGIC!r}")
        record, offset = 1, len(MAGIC)
        while True:
            at = (file, record, offset)
            head = f.read(HEAD.size)
            if not head:
                raise Incomplete(*at, "ends", "no End record follows: the process writing it stopped before closing it")
            if len(head) < HEAD.size:
                raise Incomplete(*at, "is cut", f"its header has {len(head)} of {HEAD.size} bytes")
            length, crc = HEAD.unpack(head)
            left = size - offset - HEAD.size
            if length > left:
                raise Incomplete(*at, "is cut", f"its payload has {left} of {length} bytes")
            data = f.read(length)
            if zlib.crc32(data) != crc:
                raise Incomplete(*at, "is garbled", "its checksum does not match its payload")
            try:
                msg = pickle.loads(data)
            except Exception as e:  # noqa: BLE001 - whatever a bad pickle raises
                raise Incomplete(*at, "is garbled", f"it does not unpickle ({type(e).__name__}: {e})") from None
            record, offset = record + 1, offset + HEAD.size + length
            if isinstance(msg, End):
                if offset < size:
                    raise Incomplete(file, record, offset, "is garbled", f"{size - offset} byte(s) follow its End")
                return
            yield msg


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
    spool.close()
    return spool.dir
