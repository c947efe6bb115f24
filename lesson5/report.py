"""Apps: `lesson5-report <study> [source=table|journal] [table=CSV] [storage=...] [study_name=...] [out=DIR]` (or
`python -m lesson5.report`): a study's report, again.

From its results table by default (`sweeps/results/<study>.csv`, committed with the report), so that anyone can
recompute a committed report on a fresh clone: no Optuna storage or MLflow store is needed, and the report comes
out byte for byte as committed. With `source=journal`, from the study's Optuna storage instead (the journal or a
database URL): its table is written too, and the report is logged to the study's MLflow parent run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from lesson5 import cli
from lesson5.sweep import report, spec
from lesson5.sweep import storage as stores

COMMAND = cli.Command(
    name="lesson5-report", module="lesson5.report",
    summary="a study's report, again: the verdicts on its claim and its control, each value's paired intervals "
            "and the seeds an undecided one would take, the best trials and the parameters' importances, written "
            "as Markdown. From the study's results table (sweeps/results/<study>.csv) by default, or from its "
            "Optuna storage with source=journal (then also logged to the study's MLflow parent run).",
    example="n_factors    # rebuilds sweeps/results/n_factors.md from sweeps/results/n_factors.csv",
    arguments=(("study", "the study's file, or a shipped study's name: " + ", ".join(spec.shipped())),),
    options=(cli.Option("source", str, "where the trials are read from: the results table, or the Optuna storage",
                        default="table", choices=("table", "journal")),
             cli.Option("table", Path, "source=table: the results table (default: OUT/<study_name>.csv)"),
             cli.Option("storage", str, "source=journal: the Optuna storage the study ran in (a journal file or a "
                                        "database URL)", default=stores.DEFAULT_JOURNAL),
             cli.Option("study_name", str, "the study's name (default: the file's name)", check=cli.plain_name),
             cli.Option("out", Path, "the folder for the Markdown and plots (default: sweeps/results)")),
    overrides="checking the study file, as given to lesson5-sweep")


def _report(args) -> int:
    from lesson5.sweep import table as tables

    study = spec.load(args.study, args.overrides)
    name = args.study_name or study.name
    out = cli.writable(args.out or report.RESULTS, "out", folder=True)  # before the storage is read
    client = parent = None
    if args.source == "journal":
        from lesson5.sweep.driver import PARENT_ATTR
        from lesson5.tracking.store import open_client, resolve_uri

        opt = stores.load_study(args.storage, name)
        study.base = list(opt.user_attrs.get("base", study.base))
        parent = opt.user_attrs.get(PARENT_ATTR)
        if parent:
            client = open_client(resolve_uri(cli.checked(study.base)[1].tracking.uri))
        rep = report.write(opt, study, name=name, client=client, parent_run_id=parent, out_dir=out)
    else:
        rep = report.write(tables.read(args.table or out / f"{name}.csv", study), study, name=name, out_dir=out)
    print(rep.markdown)
    print(f"\nwritten to {rep.markdown_path}" + (f", its table to {rep.table_path}" if rep.table_path else "")
          + (f", and logged to MLflow run {parent}" if parent else ""))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-report` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _report)


if __name__ == "__main__":
    sys.exit(main())
