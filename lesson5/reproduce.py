"""Apps: `lesson5-reproduce [quick=true] [only=KEY,...] [reuse=false] [out=FILE] [overrides]` (or `python -m
lesson5.reproduce`): re-test every claim of Lesson 5 (`lesson5.claims.CLAIMS`) and write the table of claim, test,
numbers and verdict to `reports/claims.md`.

Overrides (`tracking.uri=...`, say) apply to every run it makes. Runs go to the MLflow experiment
`lesson5-claims`; a later report reuses the finished runs it finds there (`reuse=false` runs everything again).
`quick=true` runs fewer values and seeds, so more verdicts may be inconclusive.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from lesson5 import cli
from lesson5.claims import CLAIMS, NOT_TESTED, Context


def measure_all(ctx: Context, only: Optional[list[str]] = None) -> list[tuple]:
    """(claim, verdict, numbers) for each claim; one that cannot be measured is "not yet tested", with why."""
    from lesson5.errors import Lesson5Error

    rows = []
    for claim in CLAIMS:
        if only and claim.key not in only:
            continue
        print(f"{claim.key}: {claim.text}", file=sys.stderr)
        try:
            verdict, numbers = claim.judge(claim.measure(ctx))
        except Lesson5Error as e:
            verdict, numbers = NOT_TESTED, f"could not be measured: {e}".replace("\n", " ")
        rows.append((claim, verdict, numbers))
    return rows


def markdown(rows: list[tuple], command: str, quick: bool, made: list[dict]) -> str:
    reused = sum(1 for m in made if m.get("reused"))
    lines = ["# Lesson 5's claims, re-tested", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')} "
             f"({'quick: fewer values and seeds' if quick else 'full grids'}; "
             f"{len(made)} runs, {reused} of them reused from earlier reports; MLflow experiment `lesson5-claims`). "
             "Each verdict is computed from the numbers beside it (`lesson5/claims.py`).", "",
             "| claim | how it was tested | numbers | verdict |", "|---|---|---|---|"]
    lines += [f"| {c.text} | {c.how} | {n} | **{v}** |" for c, v, n in rows]
    return "\n".join(lines) + "\n"


COMMAND = cli.Command(
    name="lesson5-reproduce", module="lesson5.reproduce",
    summary="re-test every claim of Lesson 5 with lesson5 runs (MLflow experiment lesson5-claims) and write the "
            "table of claim, test, numbers and verdict, each verdict computed from its numbers.",
    example="quick=true only=n_factors,wd tracking.uri=sqlite:///mlflow.db",
    options=(cli.Option("quick", bool, "fewer values and seeds: a few minutes, more verdicts inconclusive",
                        default=False),
             cli.Option("only", list, "re-test only these claims", choices=[c.key for c in CLAIMS]),
             cli.Option("reuse", bool, "reuse the finished runs of earlier reports", default=True),
             cli.Option("out", Path, "the report's file", default=Path("reports/claims.md"))),
    overrides="every run it makes")


def _reproduce(args) -> int:
    ctx = Context(args.quick, args.overrides, reuse=args.reuse)
    rows = measure_all(ctx, args.only)
    command = " ".join(["python -m lesson5.reproduce", *args.argv])
    text = markdown(rows, command, args.quick, ctx.made)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-reproduce` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _reproduce)


if __name__ == "__main__":
    sys.exit(main())
