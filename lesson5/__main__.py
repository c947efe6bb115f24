"""`python -m lesson5 [overrides]`: compose the config with Hydra, run it, print the metrics and the run."""

from __future__ import annotations

import signal
import sys

from lesson5.process import fast_exit, pause_gc, resume_gc

# Start-up (hydra, torch, torch.optim's dynamo, pandas) makes ~600k objects: the collector stays off until the fit
# starts (_resume_gc_at_fit), then everything made so far is frozen out of its scans.
pause_gc()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lesson5.config import validate  # noqa: E402
from lesson5.errors import Lesson5Error  # noqa: E402


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # a terminated run is closed as KILLED, like Ctrl-C


def _resume_gc_at_fit():
    """A callback that ends start-up as the first fit starts (made here, after the tracker started, because
    lesson5.learner imports torch)."""
    from lesson5.learner import Callback

    class ResumeGc(Callback):
        def before_fit(self, learn) -> None:
            resume_gc()

    return ResumeGc()


def report(result, spooled=None) -> None:
    """The final table of metrics and where to find the run (or its spool, when the store was away)."""
    from rich.console import Console
    from rich.table import Table

    from lesson5.tracking import ui_command, ui_link

    console = Console()
    table = Table(title="lesson5 results")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    if spooled:
        console.print(f"The run was not sent to the MLflow store {result.tracking_uri} (it stopped answering, or "
                      f"tracking.mode=offline): it is kept in {spooled}. Send it with: python -m lesson5.sync",
                      highlight=False, soft_wrap=True)
    elif result.run_id:
        console.print(f"MLflow run {result.run_id} (experiment {result.experiment_id}) in {result.tracking_uri}",
                      highlight=False, soft_wrap=True)
        console.print(f"Open the UI: {ui_command(result.tracking_uri)}", highlight=False, soft_wrap=True)
        console.print(f"  then {ui_link(result.tracking_uri, result.experiment_id)}", highlight=False,
                      soft_wrap=True)
    else:
        console.print("Tracking is off (tracking=none): nothing was stored.")


_composed = False  # set once Hydra has composed a config: an exit before that is Hydra refusing the overrides


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    global _composed
    from lesson5.tracking import Tracker

    _composed = True

    signal.signal(signal.SIGTERM, _sigterm)
    try:
        conf = validate(cfg)
        # Start the MLflow writer before importing torch: its own imports and store setup overlap ours.
        tracker = Tracker(conf.tracking.uri, offline=conf.tracking.mode.value == "offline",
                          models=conf.tracking.log_model) if conf.tracking.enabled else None
        try:
            from lesson5.run import run

            result = run(cfg, overrides=list(HydraConfig.get().overrides.task), tracker=tracker,
                         callbacks=[_resume_gc_at_fit()])
        finally:
            if tracker is not None:
                tracker.close()
    except Lesson5Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the MLflow run was marked KILLED", file=sys.stderr)
        sys.exit(130)
    report(result, tracker.spooled if tracker is not None else None)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:  # our exit codes and Hydra's
        if not isinstance(e.code, (int, type(None))):
            raise  # a message for Python to print
        # Hydra exits 1 when it cannot compose the overrides (an unknown key or option, a wrong type): bad input,
        # which exits 2 like every other refused config.
        fast_exit(2 if e.code == 1 and not _composed else e.code or 0)
    fast_exit(0)
