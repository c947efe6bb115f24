"""Services (the sweep engine): a sweep's live progress, read from its study's storage.

The driver, which otherwise only waits for its workers, polls the study's storage every few seconds and shows one
line: trials done / total, running, pruned, failed, the elapsed time, an estimate of the time left and the best
so far (for a grid study with seeds, the best setting's mean +- std over its seeds). It reads nothing but the
storage, so it shows every worker of a shared study, on this machine or any other.

    12/30 trials, 2 running, 1 pruned, 0 failed | 2m14s, ETA 3m40s | best valid_rmse 0.9031 +- 0.0021 (3 seeds) ...

On a terminal the line redraws in place (a carriage return, cut to the terminal's width); otherwise a plain line is
printed every `every_n` trials done, or every `every_s` seconds, whichever comes first. A storage that cannot be
read (a database gone, a journal removed) shows as a message, and the display keeps trying.

Cost. A poll is one `get_trials` on the storage: on a journal, the driver's Optuna replays only the lines appended
since its last poll; on a database, one query. Polls are at least `interval` seconds apart, and further apart when a
poll is slow: the next waits at least `budget` times the last poll's own time (0.5% of one core with the default
200), so the display takes well under 1% of a sweep's wall time whatever the storage. Nothing here ever waits on a
worker.
"""

from __future__ import annotations

import importlib.util
import math
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

SEED = "trainer.seed"
INTERVAL_S = 2.0  # the shortest time between polls
EVERY_S = 30.0  # without a terminal: a line at least this often
BUDGET = 200  # the next poll waits at least this many times the last poll's own time


@dataclass(frozen=True)
class Best:
    """The best so far: a trial's value, or, by seeds, a setting's mean over its seeds (std when it has two)."""

    value: float
    params: dict[str, Any]  # the setting (without the seed, when by seeds)
    n: int = 1  # seeds averaged
    std: Optional[float] = None
    number: Optional[int] = None  # the trial, when one trial


@dataclass(frozen=True)
class Snapshot:
    """What the storage says now about a study's trials."""

    total: int
    done: int  # finished trials that count towards the total (a lost trial is run again)
    complete: int
    pruned: int
    failed: int
    running: int
    best: Optional[Best] = None


def _state(trial) -> str:
    return trial.state if isinstance(trial.state, str) else trial.state.name


def _counts(trial) -> bool:
    """As `lesson5.sweep.storage.counts`: a failed trial without an outcome (lost, interrupted) is run again."""
    return _state(trial) != "FAIL" or trial.user_attrs.get("outcome") not in (None, "interrupted")


def best_so_far(trials: Sequence, direction: str, by_seed: bool) -> Optional[Best]:
    """The best COMPLETE trial with a finite value; `by_seed`: the best setting of the swept parameters by its mean
    over seeds (trials that differ only in `trainer.seed`), with their std when there are two or more."""
    done = [t for t in trials if _state(t) == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
    if not done:
        return None
    pick = max if direction == "maximize" else min
    if not by_seed:
        t = pick(done, key=lambda t: t.value)  # the first such trial on a tie
        return Best(t.value, {k: v for k, v in t.params.items() if k != SEED}, number=t.number)
    groups: dict[tuple, list] = {}
    for t in done:
        setting = tuple(sorted((k, repr(v)) for k, v in t.params.items() if k != SEED))
        groups.setdefault(setting, []).append(t)
    setting = pick(groups, key=lambda s: statistics.fmean(t.value for t in groups[s]))
    members = groups[setting]
    values = [t.value for t in members]
    return Best(statistics.fmean(values), {k: v for k, v in members[0].params.items() if k != SEED}, len(values),
                statistics.stdev(values) if len(values) > 1 else None)


def snapshot(trials: Sequence, total: int, direction: str = "minimize", by_seed: bool = False) -> Snapshot:
    """The counts and the best so far of `trials` (Optuna's FrozenTrials, or anything with state, value, params,
    user_attrs and number) for a study of `total` trials."""
    states = [_state(t) for t in trials]
    done = sum(1 for t, s in zip(trials, states) if s in ("COMPLETE", "PRUNED", "FAIL") and _counts(t))
    return Snapshot(total=max(total, done), done=done, complete=states.count("COMPLETE"),
                    pruned=states.count("PRUNED"), failed=states.count("FAIL"), running=states.count("RUNNING"),
                    best=best_so_far(trials, direction, by_seed))


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def describe(best: Optional[Best], metric: str) -> str:
    if best is None:
        return f"best {metric}: none yet"
    spread = f" ± {best.std:.4f}" if best.std is not None else ""
    seeds = f" ({best.n} seed{'s' if best.n > 1 else ''})" if best.number is None else ""
    trial = f" (trial {best.number})" if best.number is not None else ""
    at = ", ".join(f"{_short(k)}={v}" for k, v in best.params.items())
    return f"best {metric} {best.value:.4f}{spread}{seeds}{trial}" + (f" at {at}" if at else "")


def render(snap: Snapshot, elapsed: float, eta: Optional[float], metric: str) -> str:
    """The progress line."""
    left = "ETA ?" if eta is None else "ETA 0s" if snap.done >= snap.total else f"ETA {duration(eta)}"
    return (f"{snap.done}/{snap.total} trials, {snap.running} running, {snap.pruned} pruned, {snap.failed} failed | "
            f"{duration(elapsed)}, {left} | {describe(snap.best, metric)}")


@dataclass
class Progress:
    """The live display of one sweep. `read()` returns the study's trials (it may raise: a lost storage), `total()`
    the study's trial count now (later looks add to it). The driver calls `poll()` whenever `wait_s()` has passed,
    and `close()` at the end; `say(line)` prints a line of its own without breaking the display."""

    read: Callable[[], Sequence]
    total: Callable[[], int]
    metric: str = "value"
    direction: str = "minimize"
    by_seed: bool = False
    where: str = "the storage"  # named in the message when it cannot be read
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    tty: Optional[bool] = None  # None: whether `stream` is a terminal
    every_n: Optional[int] = None  # None: a tenth of the total
    every_s: float = EVERY_S
    interval: float = INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    prefix: str = ""

    def __post_init__(self):
        if self.tty is None:
            self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.clock()
        self.next_poll = self.start
        self.shown = ""  # the line on the terminal now (tty)
        self.last: Optional[Snapshot] = None
        self.printed_done: Optional[int] = None  # trials done at the last plain line
        self.printed_at = self.start
        self.lost: Optional[str] = None  # why the storage cannot be read, while it cannot
        self._base: Optional[tuple[float, int]] = None  # (time, done) at the first read: the rate counts from there

    def wait_s(self) -> float:
        """Seconds until the next poll is due (0 when due)."""
        return max(0.0, self.next_poll - self.clock())

    def eta(self, snap: Snapshot, now: float) -> Optional[float]:
        """Seconds left at this sweep's rate of trials done so far (None before one is done)."""
        if self._base is None:
            return None
        t0, done0 = self._base
        if snap.done <= done0 or now <= t0:
            return None
        return (snap.total - snap.done) * (now - t0) / (snap.done - done0)

    def poll(self) -> Optional[str]:
        """Read the storage now and show what it says: the line, or None when nothing was printed."""
        t = self.clock()
        try:
            snap = snapshot(self.read(), self.total(), self.direction, self.by_seed)
        except Exception as e:  # noqa: BLE001 - a storage gone: any driver's error, shown and retried
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            was, self.lost = self.lost, reason
            self.next_poll = self.clock() + max(self.interval, self.every_s / 3)
            text = (f"cannot read {self.where} ({reason}); the workers' trials may be lost. Still trying; when it is "
                    f"back, a sweep that stops can continue with resume=true")
            return self._show(text, force=was != reason)
        cost = self.clock() - t
        self.next_poll = self.clock() + max(self.interval, BUDGET * cost)
        now = self.clock()
        if self._base is None:
            self._base = (now, snap.done)
        came_back, self.lost = self.lost is not None, None
        self.last = snap
        line = render(snap, now - self.start, self.eta(snap, now), self.metric)
        every_n = self.every_n or max(1, snap.total // 10)
        due = (self.printed_done is None or snap.done - self.printed_done >= every_n
               or now - self.printed_at >= self.every_s or came_back)
        if self._show(line, force=due) is None:
            return None
        self.printed_done = snap.done
        return line

    def _show(self, line: str, force: bool) -> Optional[str]:
        line = self.prefix + line
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            line = line if len(line) <= width else line[: max(0, width - 1)] + "…"
            if line != self.shown:
                self.stream.write("\r" + line + "\x1b[K")
                self.stream.flush()
                self.shown = line
            return line
        if not force:
            return None
        self.stream.write(line + "\n")
        self.stream.flush()
        self.printed_at = self.clock()
        return line

    def clear(self) -> None:
        """Take the line off the terminal (before another line is printed)."""
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = ""

    def say(self, text: str) -> None:
        """Print a line of the caller's own above the display."""
        self.clear()
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """One last reading, left on screen: on a terminal with its newline; otherwise printed unless the last
        line already said it."""
        self.poll()
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = ""
        elif not self.tty and self.last is not None and self.lost is None and self.printed_done != self.last.done:
            now = self.clock()
            self._show(render(self.last, now - self.start, self.eta(self.last, now), self.metric), force=True)
            self.printed_done = self.last.done


def dashboard_command(storage: str) -> str:
    """The command that opens optuna-dashboard on a study's storage: a journal file by its absolute path (so that
    it works from any folder), a database URL as it is (SQLite, PostgreSQL). Where optuna-dashboard is not
    installed, it says how to install it."""
    target = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    command = f"optuna-dashboard {shlex.quote(target)}"
    if importlib.util.find_spec("optuna_dashboard") is None:
        command += "  (install it with: pip install 'lesson5[dashboard]')"
    return command
