"""Apps: `lesson5-reproduce [quick=true] [only=KEY,...] [reuse=false] [workers=N] [out=FILE] [overrides]` (or `python -m
lesson5.reproduce`): re-test every claim of Lesson 5 (`lesson5.claims.CLAIMS`) and write `reports/claims.md`: each
claim with the paired seeds behind its interval, the interval and the verdict; the studies' controls; the checks
(identities that cannot fail), apart; every threshold with its reason; and the lesson's bias tables beside ours.

Overrides (`tracking.uri=...`, say) apply to every run it makes. Runs go to the MLflow experiment
`lesson5-claims`; a later report reuses the finished runs it finds there (`reuse=false` runs everything again).
`quick=true` runs fewer values and two seeds at one look, so more verdicts may be inconclusive; the report's header
says which it is. The report is written only by `markdown` here, from the judged claims.

`workers=N` (default: one per CPU core) trains the runs in N processes (`lesson5.pool`), the claims measured at once;
N changes where and in what order the runs train, not which runs are made.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Optional

from lesson5 import cli
from lesson5.claims import (
    CLAIMS,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    THRESHOLDS,
    VERDICTS,
    Claim,
    Context,
    Judged,
    interval,
)

TITLE = "# Lesson 5's claims, re-tested"
CLAIMS_HEADER = "| claim | how it was tested | n | advantage [interval] vs | verdict | numbers |"
CONTROLS_HEADER = "| study's claim | control: must come out not reproduced | n | advantage [interval] vs | verdict |"
CHECKS_HEADER = "| check | how it was tested | numbers | result |"
THRESHOLDS_HEADER = "| key | threshold | unit | why this number |"
# Each worker trains one run (or stack) at a time on one thread (trainer.threads), and its MLflow writer takes part
# of another core: one worker per core keeps a 2-core machine busy (BENCHMARKS.md); beyond 8, the report's claims
# (13, each waiting on its looks) rarely have the runs to feed more.
MAX_DEFAULT_WORKERS = 8
DEFAULT_WORKERS = max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))
MODES = {True: "quick (quick=true): fewer values, two seeds and one look at 95%, so more verdicts are inconclusive",
         False: "full: each study's grid and seeds, seeds added look by look until decided"}


def measure_all(ctx: Context, only: Optional[list[str]] = None) -> list[tuple[Claim, Judged]]:
    """(claim, judged) for each claim, in CLAIMS' order; one that cannot be measured is inconclusive, saying why.
    With more than one worker the claims are measured at once, each in a thread, so that the runs of all of them
    keep the workers busy (a claim's next look waits for its last, and a lone claim's stacks would leave cores
    idle)."""
    chosen = [c for c in CLAIMS if not only or c.key in only]
    if ctx.workers <= 1:
        return [(c, _measure(ctx, c)) for c in chosen]
    # the checks first, in this thread alone: they seed torch's global generator, which threads would share
    judged = {c.key: _measure(ctx, c) for c in chosen if c.check}
    started = {}

    def measure(claim: Claim, done: Future) -> None:
        try:
            done.set_result(_measure(ctx, claim))
        except BaseException as e:  # noqa: BLE001 - raised in the main thread, by result()
            done.set_exception(e)

    for claim in chosen:  # daemons: a stopped report does not wait for its claims' threads
        if claim.key not in judged:
            started[claim.key] = Future()
            threading.Thread(target=measure, args=(claim, started[claim.key]), name=f"lesson5-claim-{claim.key}",
                             daemon=True).start()
    judged.update((key, done.result()) for key, done in started.items())
    return [(c, judged[c.key]) for c in chosen]


def _measure(ctx: Context, claim: Claim) -> Judged:
    from lesson5.errors import Lesson5Error

    print(f"{claim.key}: {claim.text}", file=sys.stderr)
    try:
        return claim.judge(claim.measure(ctx))
    except Lesson5Error as e:
        return Judged(INCONCLUSIVE, f"not measured: {e}".replace("\n", " "))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary(rows: list[tuple[Claim, Judged]]) -> str:
    """The counts: claims by verdict, controls that came out not reproduced, checks that passed."""
    claims = [j for c, j in rows if not c.check]
    counts = {v: sum(j.verdict == v for j in claims) for v in VERDICTS}
    controls = [j.control for j in claims if j.control is not None]
    checks = [j for c, j in rows if c.check]
    return (f"**{len(claims)} claims: {counts[REPRODUCED]} reproduced, {counts[NOT_REPRODUCED]} not reproduced, "
            f"{counts[INCONCLUSIVE]} inconclusive.** Controls: {sum(j.verdict == NOT_REPRODUCED for j in controls)} "
            f"of {len(controls)} came out not reproduced, as a control must. Checks: "
            f"{sum(j.verdict == REPRODUCED for j in checks)} of {len(checks)} passed.")


def markdown(rows: list[tuple[Claim, Judged]], command: str, quick: bool, made: list[dict], minutes: float,
             date: Optional[str] = None) -> str:
    """The report: header, summary, the claims, their controls, the checks, the thresholds, extra sections."""
    reused = sum(1 for m in made if m.get("reused"))
    # the runs' own training time stays the same when a later report reuses them; the report's time does not
    trained = sum(m.get("train_seconds", 0.0) for m in made if m.get("train_seconds", 0.0) == m.get("train_seconds"))
    lines = [TITLE, "",
             f"Made by `{command}` on {date or time.strftime('%Y-%m-%d')}, {MODES[quick]}; {len(made)} runs ({reused} "
             f"reused from earlier reports) with {trained / 60:.0f} min of training between them, and this report "
             f"took {minutes:.0f} min on {os.cpu_count()} CPU cores (MLflow experiment `lesson5-claims`). Each "
             "verdict is computed from the numbers beside it (`lesson5/claims.py`), by the paired rules of "
             "`lesson5/sweep/verdict.py` where a claim is judged over seeds. The fine-tuning claims are in "
             "[transfer.md](transfer.md).", "", summary(rows), "",
             "## Claims", "",
             "n: the paired seeds (folds, runs) behind the interval shown. Advantage: the claimed side's mean "
             "advantage over the value named, paired by seed (positive: as the claim says), in the objective's "
             "units, with its two-sided interval at the level shown (Holm-corrected for a `best` rule's rows; a "
             "threshold claim's advantage is the measurement minus the threshold). For a `best` claim the row shown "
             "is the one that decided it: the closest competitor, the strongest rival, or the first undecided.", "",
             CLAIMS_HEADER, "|---|---|---:|---|---|---|"]
    claims = [(c, j) for c, j in rows if not c.check]
    for c, j in claims:
        n = j.row.n if j.row is not None else ""
        lines.append(f"| {_cell(c.text)} | {_cell(c.how)} | {n} | {_cell(interval(j.row))} | **{j.verdict}** | "
                     f"{_cell(j.numbers)} |")
    controlled = [(c, j) for c, j in claims if j.control is not None]
    lines += ["", "## Controls", "",
              "A control is a claim of the same study, by the same rule, that must come out not reproduced (a value "
              "known to be poor): it shows the rule can fail on that study.", ""]
    if controlled:
        lines += [CONTROLS_HEADER, "|---|---|---:|---|---|"]
        for c, j in controlled:
            k = j.control
            lines.append(f"| {_cell(c.text)} | {_cell(j.control_text)} | {k.row.n if k.row else ''} | "
                         f"{_cell(interval(k.row))} | **{k.verdict}** |")
    else:
        lines.append("No study measured here has a control.")
    lines += ["", "## Checks: identities that cannot fail", "",
              "These are exact identities, computed, not claims about training: they pass unless the code is "
              "wrong.", "",
              CHECKS_HEADER, "|---|---|---|---|"]
    passed = {REPRODUCED: "passed", NOT_REPRODUCED: "failed", INCONCLUSIVE: "not measured"}
    lines += [f"| {_cell(c.text)} | {_cell(c.how)} | {_cell(j.numbers)} | {passed[j.verdict]} |"
              for c, j in rows if c.check]
    lines += ["", "## Thresholds", "",
              "Every threshold a rule here uses, one per claim, with its reason (`lesson5.claims.THRESHOLDS`; the "
              "studies' tolerances are in their files, `sweeps/*.yaml`).", "", THRESHOLDS_HEADER, "|---|---:|---|---|"]
    lines += [f"| {k} | {t.value:g} | {_cell(t.unit)} | {_cell(t.reason)} |" for k, t in THRESHOLDS.items()]
    for _, j in rows:
        if j.section:
            lines += ["", *j.section]
    return "\n".join(lines) + "\n"


COMMAND = cli.Command(
    name="lesson5-reproduce", module="lesson5.reproduce",
    summary="re-test every claim of Lesson 5 with lesson5 runs (MLflow experiment lesson5-claims) and write the "
            "table of claim, test, paired seeds, interval and verdict, each verdict computed from its numbers.",
    example="quick=true only=n_factors,wd tracking.uri=sqlite:///mlflow.db",
    options=(cli.Option("quick", bool, "fewer values, two seeds, one look: a few minutes, more verdicts "
                                       "inconclusive", default=False),
             cli.Option("only", list, "re-test only these claims", choices=[c.key for c in CLAIMS]),
             cli.Option("reuse", bool, "reuse the finished runs of earlier reports", default=True),
             cli.Option("workers", int, "worker processes that train the runs (default: one per CPU core, at most "
                                        f"{MAX_DEFAULT_WORKERS})", default=DEFAULT_WORKERS, low=1,
                        high=cli.max_workers(), why_high=cli.WORKERS_BOUND),
             cli.Option("out", Path, "the report's file", default=Path("reports/claims.md"))),
    overrides="every run it makes")


def _reproduce(args) -> int:
    # refused before a store is opened or a claim measured: the overrides (every run gets them) and the report's file
    cli.checked(args.overrides)
    cli.writable(args.out, "out")
    start = time.perf_counter()
    ctx = Context(args.quick, args.overrides, reuse=args.reuse, workers=args.workers)
    try:
        rows = measure_all(ctx, args.only)
    except BaseException:
        ctx.close(stop=True)  # Ctrl-C reached the workers too; SIGTERM (or an error here) did not
        raise
    ctx.close()
    command = " ".join(["python -m lesson5.reproduce", *args.argv])
    text = markdown(rows, command, args.quick, ctx.made, (time.perf_counter() - start) / 60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-reproduce` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _reproduce)


if __name__ == "__main__":
    sys.exit(main())
