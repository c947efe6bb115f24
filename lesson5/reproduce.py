"""`python -m lesson5.reproduce [--quick] [--only KEY ...] [--out FILE] [overrides]`: re-test every claim of
Lesson 5 (`lesson5.claims.CLAIMS`) and write the table of claim, test, numbers and verdict to `reports/claims.md`.

Overrides (`tracking.uri=...`, say) apply to every run it makes. Runs go to the MLflow experiment
`lesson5-claims`; a later report reuses the finished runs it finds there (`--no-reuse` runs everything again).
`--quick` takes a few minutes on 2 CPU cores: fewer values and seeds, so more verdicts may be inconclusive.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

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
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')} ({'quick: fewer values and seeds' if quick else 'full grids'}; "
             f"{len(made)} runs, {reused} of them reused from earlier reports; MLflow experiment `lesson5-claims`). "
             "Each verdict is computed from the numbers beside it (`lesson5/claims.py`).", "",
             "| claim | how it was tested | numbers | verdict |", "|---|---|---|---|"]
    lines += [f"| {c.text} | {c.how} | {n} | **{v}** |" for c, v, n in rows]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lesson5.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", metavar="KEY", choices=[c.key for c in CLAIMS])
    ap.add_argument("--no-reuse", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("reports/claims.md"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    ctx = Context(args.quick, list(args.overrides), reuse=not args.no_reuse)
    rows = measure_all(ctx, args.only)
    command = " ".join(["python -m lesson5.reproduce", *(sys.argv[1:] if argv is None else argv)])
    text = markdown(rows, command, args.quick, ctx.made)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
