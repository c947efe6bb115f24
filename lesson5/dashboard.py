"""Apps: `lesson5-dashboard [storage=sweeps.journal] [host=127.0.0.1] [port=8080]` (or `python -m
lesson5.dashboard`): optuna-dashboard on a study's storage, after lesson5 has read it with the Optuna installed
here; a storage it cannot read (another Optuna version's journal, an MLflow store, a missing file) is refused
with the reason and the fix, where optuna-dashboard itself shows an internal error."""

from __future__ import annotations

import sys
from typing import Optional

from lesson5 import cli
from lesson5.sweep.dashboard import serve
from lesson5.sweep.storage import DEFAULT_JOURNAL

COMMAND = cli.Command(
    name="lesson5-dashboard", module="lesson5.dashboard",
    summary="optuna-dashboard on a study's storage (a sweep's journal or database), after checking that it can be "
            "read; a storage from another Optuna version, or not Optuna's, is refused with the reason.",
    example="storage=sweeps.journal port=8080",
    options=(cli.Option("storage", str, "the journal file or database URL a sweep printed", default=DEFAULT_JOURNAL),
             cli.Option("host", str, "the address to serve on", default="127.0.0.1"),
             cli.Option("port", int, "the port to serve on", default=8080, low=1, high=65535)))


def _serve(args) -> None:
    serve(args.storage, args.host, args.port)


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-dashboard` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _serve)


if __name__ == "__main__":
    sys.exit(main())
