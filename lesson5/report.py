"""`python -m lesson5.report <study name or file> [storage=...] [study_name=...] [out=DIR]`: a study's report.

The verdict on its claim, computed from its trials by the rule in its study file, the objective against each
swept parameter, the best trials and the parameters' importances: written as Markdown under `sweeps/results/`
(or DIR) and logged to the study's MLflow parent run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lesson5.errors import Lesson5Error


def main(argv: list[str]) -> int:
    import optuna

    from lesson5.config import compose, validate
    from lesson5.sweep import report, spec
    from lesson5.sweep import storage as stores
    from lesson5.sweep.driver import PARENT_ATTR
    from lesson5.tracking.store import open_client, resolve_uri

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    options = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    try:
        study = spec.load(argv[0])
        storage = options.get("storage", stores.DEFAULT_JOURNAL)
        name = options.get("study_name", study.name)
        try:
            opt = optuna.load_study(study_name=name, storage=stores.open_storage(storage))
        except KeyError:
            raise Lesson5Error(f"no study {name!r} in {storage}; run `python -m lesson5.sweep {argv[0]}` first, "
                               f"or pass storage=... and study_name=...") from None
        study.base = list(opt.user_attrs.get("base", study.base))
        client, parent = None, opt.user_attrs.get(PARENT_ATTR)
        if parent:
            client = open_client(resolve_uri(validate(compose(study.base)).tracking.uri))
        out = Path(options["out"]) if "out" in options else report.RESULTS
        rep = report.write(opt, study, client=client, parent_run_id=parent, out_dir=out)
    except Lesson5Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rep.markdown)
    print(f"\nwritten to {rep.markdown_path}" + (f" and logged to MLflow run {parent}" if parent else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
