"""Apps: `lesson5-sync [to=URI] [dir=FOLDER]` (or `python -m lesson5.sync`): send spooled runs to their MLflow store.

Runs are spooled under `.lesson5/offline/` (of the folder the command ran from) when the store stopped answering
mid-run, or always with `tracking.mode=offline`. Each spool is replayed through the tracking writer's own code,
into the store it was meant for (or `to=`): runs that already exist there are continued, the others created,
with their names, tags, parents, params, metrics (their steps and timestamps), artifacts, plots and final
status. It is idempotent: the runs it creates are recorded in the spool as it goes (`state.json`), MLflow skips a
metric row it already holds, and a spool is deleted only once all of it is in the store. Nothing to sync: says so.

A store that cannot be reached or refuses a call leaves the spool where it is, for another try. A spool that
cannot be read to its end (`spool.Incomplete`: cut, garbled, or its writer stopped before closing it) is sent
up to the damage, its runs still open end FAILED with a `stop_reason` naming the file, record and byte where it
stops, and it is moved into `damaged/` beside the others, kept for a person to look at and never read again; the
command goes on to the other spools and exits 2. A spool its writer still holds is skipped, and said so.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

from lesson5 import cli
from lesson5.errors import TrackingError
from lesson5.tracking.messages import StartRun
from lesson5.tracking.spool import ROOT, Incomplete, InUse, Known, locked, pending, read
from lesson5.tracking.store import fail_fast_http, fail_run


class Damaged(TrackingError):
    """A spool that could not be read to its end: sent up to the damage, its open runs FAILED, moved aside."""


def sync_one(folder: Path, to: Optional[str] = None) -> list[str]:
    """Replay one spool into its store and delete it; returns the MLflow run ids it holds. Raises TrackingError,
    keeping the spool, when the store cannot be reached or refuses a call; Damaged, once the spool is handled
    as the module's docstring says, when it cannot be read to its end; InUse when another process holds it."""
    from lesson5.tracking.writer import HANDLERS, RunState, Writer

    folder = folder.resolve()  # its paths, in messages and stop_reason tags, mean something from anywhere
    target = (folder / "target").read_text().strip()
    uri = to or target
    try:
        w = Writer(uri)
    except Exception as e:  # noqa: BLE001 - any failure to open the store
        raise TrackingError(f"cannot reach the MLflow store {uri} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                            f"the spool {folder} is kept: start the store, or pass to=URI") from None
    state_path = folder / "state.json"
    state: dict[str, str] = json.loads(state_path.read_text()) if state_path.exists() else {}
    exists = lambda run_id: _exists(w.client, run_id)  # noqa: E731
    aside = folder.parent / "damaged" / folder.name
    with locked(folder):
        try:
            try:
                for msg in read(folder):
                    if isinstance(msg, Known):
                        if uri == target and str(msg.rid) not in state:
                            state[str(msg.rid)] = msg.run_id
                        if state.get(str(msg.rid)) and exists(state[str(msg.rid)]):
                            w.runs[msg.rid] = RunState(state[str(msg.rid)], "", series=None)  # ended: for children
                    elif isinstance(msg, StartRun):
                        if state.get(str(msg.rid)) and exists(state[str(msg.rid)]):
                            run_id = state[str(msg.rid)]
                            w.adopt(msg, run_id, w.client.get_run(run_id).info.experiment_id)
                        else:
                            state[str(msg.rid)] = w.start(msg).run_id
                            state_path.write_text(json.dumps(state))  # before anything else: a rerun reuses the run
                    elif type(msg) in HANDLERS and msg.rid in w.runs:
                        HANDLERS[type(msg)](w, msg)
                cut = None
            except Incomplete as e:
                cut = e
                for run in w.runs.values():
                    if w.client.get_run(run.run_id).info.status == "RUNNING":
                        fail_run(w.client, run.run_id, f"lesson5.sync: the spool {cut}; it is kept in {aside}")
        except Exception as e:  # noqa: BLE001 - the spool stays for another try
            state_path.write_text(json.dumps(state))
            again = ("the store stopped answering: running sync again continues it" if w.store_down() else
                     "running sync again replays it, so first fix what the store refused")
            raise TrackingError(f"syncing {folder} into {uri} failed ({type(e).__name__}: {e}); the spool is kept, "
                                f"and {again}") from None
        run_ids = sorted(set(state.values()))
        if cut is None:
            shutil.rmtree(folder)
            return run_ids
        state_path.write_text(json.dumps(state))
        aside.parent.mkdir(exist_ok=True)
        folder.rename(aside)
    raise Damaged(f"the spool {cut}. What it holds before that is in {uri} ({len(run_ids)} run(s): "
                  f"{', '.join(run_ids) or 'none'}), and its runs left open ended FAILED; it is kept in {aside}, "
                  f"where sync does not read it again")


def _exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - not in this store
        return False


COMMAND = cli.Command(
    name="lesson5-sync", module="lesson5.sync",
    summary="send the runs spooled while their MLflow store was away (or with tracking.mode=offline) to the store; "
            "idempotent, and a spool is deleted only once all of it is in the store; one that cannot be read to its "
            "end is sent up to the damage, its open runs FAILED, and it is moved to damaged/ (exit code 2).",
    example="to=http://127.0.0.1:5000",
    options=(cli.Option("to", str, "the store to send to (default: the one each run was meant for)"),
             cli.Option("dir", Path, "where the spools are", default=ROOT)))


def _sync(args) -> int:
    fail_fast_http()
    spools = pending(args.dir)
    if not spools:
        print(f"nothing to sync: no spooled runs under {args.dir.resolve()}")
        return 0
    code = cli.DONE
    for folder in spools:
        try:
            run_ids = sync_one(folder, args.to)
        except InUse as e:
            print(f"skipped {folder.name}: {e}; sync it once that process is done")
            continue
        except Damaged as e:
            print(f"error: {e}", file=sys.stderr)
            code = cli.REFUSED
            continue
        print(f"synced {folder.name}: {len(run_ids)} run(s) ({', '.join(run_ids)})")
    return code


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-sync` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _sync)


if __name__ == "__main__":
    sys.exit(main())
