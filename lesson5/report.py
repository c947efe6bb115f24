"""Apps: `lesson5-report <study> [storage=...] [study_name=...] [out=DIR]` (or `python -m lesson5.report`): a study's
report.

The verdict on its claim, computed from its trials by the rule in its study file, the objective against each
swept parameter, the best trials and the parameters' importances: written as Markdown under `sweeps/results/`
(or DIR) and logged to the study's MLflow parent run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from lesson5 import cli
from lesson5.config import compose, validate
from lesson5.sweep import report, spec
from lesson5.sweep import storage as stores
from lesson5.sweep.driver import PARENT_ATTR
from lesson5.tracking.store import open_client, resolve_uri

COMMAND = cli.Command(
    name="lesson5-report", module="lesson5.report",
    summary="a study's report, again, from its trials: the verdict on its claim, the objective against each swept "
            "parameter, the best trials and the parameters' importances, written as Markdown and logged to the "
            "study's MLflow parent run.",
    example="my_study.yaml storage=postgresql://host/optuna out=reports",
    arguments=(("study", "the study's file, or a shipped study's name: " + ", ".join(spec.shipped())),),
    options=(cli.Option("storage", str, "the Optuna storage the study ran in", default=stores.DEFAULT_JOURNAL),
             cli.Option("study_name", str, "the study's name in the storage (default: the file's name)"),
             cli.Option("out", Path, "the folder for the Markdown and plots (default: sweeps/results)")),
    overrides="checking the study file, as given to lesson5-sweep")


def _report(args) -> int:
    study = spec.load(args.study, args.overrides)
    opt = stores.load_study(args.storage, args.study_name or study.name)
    study.base = list(opt.user_attrs.get("base", study.base))
    client, parent = None, opt.user_attrs.get(PARENT_ATTR)
    if parent:
        client = open_client(resolve_uri(validate(compose(study.base)).tracking.uri))
    rep = report.write(opt, study, client=client, parent_run_id=parent, out_dir=args.out or report.RESULTS)
    print(rep.markdown)
    print(f"\nwritten to {rep.markdown_path}" + (f" and logged to MLflow run {parent}" if parent else ""))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-report` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _report)


if __name__ == "__main__":
    sys.exit(main())
