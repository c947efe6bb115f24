"""Apps: `lesson5 [key=value ...]` (or `python -m lesson5`): compose the config with Hydra, run it, print the
metrics and the run. `--help` lists the config groups and an example."""

from __future__ import annotations

import dataclasses
import signal
import sys

from lesson5.process import fast_exit, pause_gc, resume_gc

# Start-up (hydra, torch, torch.optim's dynamo, pandas) makes ~600k objects: the collector stays off until the fit
# starts (ResumeGc), then everything made so far is frozen out of its scans.
pause_gc()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lesson5 import cli  # noqa: E402
from lesson5.callback import Callback  # noqa: E402
from lesson5.config import CONF_PACKAGE, Config, validate  # noqa: E402
from lesson5.errors import Lesson5Error  # noqa: E402
from lesson5.tracking import open_tracker, ui_command, ui_link  # noqa: E402

# Hydra's own flags, which it parses itself (anything else starting with - is refused with our usage).
HYDRA_FLAGS = {"--hydra-help", "--version", "--cfg", "-c", "--resolve", "--package", "-p", "--run", "-r",
               "--multirun", "-m", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}
SUMMARY = ("train one model with the config Hydra composes from the shipped conf/ and your overrides, track it in "
           "MLflow, and print its metrics and where to find the run.")
EXAMPLE = "model.n_factors=50 trainer.epochs=3 tracking=none"


def usage() -> str:
    """The usage line and the config's groups with their options."""
    lines = ["usage: lesson5 [key=value ...] [--config-dir DIR]", "   or: python -m lesson5 ...", "",
             "keys (Hydra overrides; `lesson5 --cfg job` prints every key of the composed config):"]
    fields = {f.name for f in dataclasses.fields(Config)}
    for group in sorted(cli.config_roots() - {"hydra"}):
        options = " | ".join(cli.group_options(group))
        keys = f"{group}.<key>=..." if group in fields else ""
        lines.append(f"  {group + '=':<12} " + ", or ".join(filter(None, [options, keys])))
    lines += ["", "  --config-dir DIR    add your config folder to Hydra's search path, after the shipped configs:",
              "                      DIR/experiment/mine.yaml is then experiment=mine (the same as",
              "                      hydra.searchpath=[file:///abs/DIR])",
              "  --hydra-help        Hydra's own flags (--cfg, --multirun, ...)"]
    return "\n".join(lines)


def help_text() -> str:
    """The --help text: what it does, its keys, exit codes and an example."""
    return (f"lesson5: {SUMMARY}\n\n{usage()}\n\nexit codes: 0 done, 2 refused input, 130 interrupted\n\n"
            f"example:\n  lesson5 {EXAMPLE}\n  lesson5 --config-dir ./myconf experiment=mine")


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # a terminated run is closed as KILLED, like Ctrl-C


class ResumeGc(Callback):
    """Ends start-up as the first fit starts."""

    def before_fit(self, learn) -> None:
        resume_gc()


def report(result, spooled=None) -> None:
    """The final table of metrics and where to find the run (or its spool, when the store was away)."""
    from rich.console import Console  # only here: the run's end
    from rich.table import Table

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


@hydra.main(config_path=f"pkg://{CONF_PACKAGE}", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    global _composed
    _composed = True

    signal.signal(signal.SIGTERM, _sigterm)
    try:
        conf = validate(cfg)
        # Start the MLflow writer before importing torch: its own imports and store setup overlap ours.
        tracker = open_tracker(conf.tracking)
        try:
            from lesson5.run import run  # torch, after the writer has started

            result = run(cfg, overrides=list(HydraConfig.get().overrides.task), tracker=tracker,
                         callbacks=[ResumeGc()])
        finally:
            if tracker is not None:
                tracker.close()
    except Lesson5Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the MLflow run was marked KILLED", file=sys.stderr)
        sys.exit(cli.INTERRUPTED)
    report(result, tracker.spooled if tracker is not None else None)


def console() -> None:
    """The `lesson5` command: Hydra parses the command line, after our --help and our check of its flags."""
    argv = sys.argv[1:]
    if any(a in cli.HELP for a in argv):
        print(help_text())
        fast_exit(cli.DONE)
    unknown = [a for a in argv if a.startswith("-") and a.split("=", 1)[0] not in HYDRA_FLAGS]
    if unknown:
        print(f"error: unknown option {unknown[0]}\n\n{usage()}", file=sys.stderr)
        fast_exit(cli.REFUSED)
    try:
        main()
    except SystemExit as e:  # our exit codes and Hydra's
        if not isinstance(e.code, (int, type(None))):
            raise  # a message for Python to print
        # Hydra exits 1 when it cannot compose the overrides (an unknown key or option, a wrong type): bad input,
        # which exits 2 like every other refused config, with the usage under Hydra's message.
        if e.code == 1 and not _composed:
            print(f"\n{usage()}", file=sys.stderr)
            fast_exit(cli.REFUSED)
        fast_exit(e.code or 0)
    except KeyboardInterrupt:  # before the run started (Hydra composing): nothing to close
        print("interrupted", file=sys.stderr)
        fast_exit(cli.INTERRUPTED)
    fast_exit(cli.DONE)


if __name__ == "__main__":
    console()
