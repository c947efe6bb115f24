"""Apps: `lesson5 [key=value ...]` (or `python -m lesson5`): compose the config with Hydra, run it, print the
metrics and the run. `--help` lists the config groups and an example.

Ctrl-C or SIGTERM (to this process or to its whole group: `timeout`, `scancel`, a container's stop) ends the run as
KILLED with the metrics logged until then, and exits 130 (SIGINT) or 143 (SIGTERM); the MLflow writer ignores
both, and is closed once the run is (`lesson5.process.Stop`). A Hydra multirun (`-m key=a,b`) checks every job's
config before the first one trains."""

from __future__ import annotations

import dataclasses
import itertools
import sys

from lesson5.process import Stop, fast_exit, pause_gc, resume_gc

# Start-up (hydra, torch, torch.optim's dynamo, pandas) makes ~600k objects: the collector stays off until the fit
# starts (ResumeGc), then everything made so far is frozen out of its scans.
pause_gc()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from lesson5 import cli  # noqa: E402
from lesson5.callback import Callback  # noqa: E402
from lesson5.config import CONF_PACKAGE, Config, compose, validate  # noqa: E402
from lesson5.errors import ConfigError, Lesson5Error  # noqa: E402
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
    return (f"lesson5: {SUMMARY}\n\n{usage()}\n\nexit codes: 0 done, 2 refused input, 130 interrupted (143 by "
            f"SIGTERM)\n\nexample:\n  lesson5 {EXAMPLE}\n  lesson5 --config-dir ./myconf experiment=mine")


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
_jobs_checked = False  # a multirun's jobs, all checked as its first job starts
# SIGINT and SIGTERM, as one KeyboardInterrupt anywhere but while the tracker closes (its runs' last messages)
_stop = Stop()


# Hydra's flags that take a value: it is not an override (`-cd DIR`, `--config-name NAME`, `--cfg job`...).
HYDRA_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                     "--package", "-p", "--info", "-i", "--experimental-rerun"}


def multirun_jobs() -> list[list[str]]:
    """Each job's overrides in this multirun (`-m`), as Hydra's basic sweeper launches them: the command line's
    overrides (and the config's hydra.sweeper.params), `key=a,b` lists expanded into every combination. Hydra's
    public override parser does the parsing; the command line's flags and their values are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, rest = [], sys.argv[1:]
    while rest:
        arg = rest.pop(0)
        if arg.startswith("-"):
            if arg in HYDRA_VALUE_FLAGS and rest and not rest[0].startswith("-") and \
                    (arg not in ("--info", "-i", "--cfg", "-c") or "=" not in rest[0]):
                rest.pop(0)  # the flag's value
        else:
            args.append(arg)
    params = [f"{k}={v}" for k, v in (HydraConfig.get().sweeper.get("params") or {}).items()]
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in OverridesParser.create().parse_overrides([*params, *args])]
    return [list(job) for job in itertools.product(*choices)]


def _one_line(error: BaseException) -> str:
    """An error's message and its cause's, on one line (validate's lists each bad key on a line of its own)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if line != "invalid config:" and not line.startswith("Fix the key")]
    if error.__cause__ is not None and str(error.__cause__).strip():
        lines.append(str(error.__cause__).strip().splitlines()[0])
    return "; ".join(lines) or type(error).__name__


def check_multirun() -> None:
    """In a multirun, before its first job trains: compose and validate every job's config, so that a bad value
    in a later job (`-m trainer.bs=64,0`) is refused before any job has run (ConfigError naming the job and key).
    Only Hydra's basic sweeper's jobs are known here; another sweeper's are checked as each starts."""
    global _jobs_checked
    hydra_conf = HydraConfig.get()
    if _jobs_checked or hydra_conf.mode != RunMode.MULTIRUN or \
            not str(hydra_conf.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return
    _jobs_checked = True
    jobs = multirun_jobs()
    for i, job in enumerate(jobs, start=1):
        try:
            validate(compose(job))
        except (Lesson5Error, HydraException, OmegaConfBaseException) as e:
            swept = " ".join(o for o in job if not all(o in other for other in jobs)) or " ".join(job)
            raise ConfigError(f"multirun job {i} of {len(jobs)} ({swept}): {_one_line(e)}; no job was run") \
                from None


@hydra.main(config_path=f"pkg://{CONF_PACKAGE}", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    global _composed
    _composed = True

    owner = not _stop.installed  # a caller that calls main() without console() gets its handlers back after
    _stop.install()
    tracker = result = None
    try:
        with _stop.interruptible():
            check_multirun()
            conf = validate(cfg)
            # Start the MLflow writer before importing torch: its own imports and store setup overlap ours.
            tracker = open_tracker(conf.tracking)
            try:
                from lesson5.run import run  # torch, after the writer has started

                result = run(cfg, overrides=list(HydraConfig.get().overrides.task), tracker=tracker,
                             callbacks=[ResumeGc()])
            finally:
                if tracker is not None:
                    with _stop.shielded():  # the run's end and last metrics reach the store, then the writer exits
                        tracker.close()
    except Lesson5Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(cli.REFUSED)
    except KeyboardInterrupt:
        if result is not None:  # the stop came as the finished run was closed: it stays FINISHED
            report(result, tracker.spooled if tracker is not None else None)
            print(f"stopped ({_stop.name}) as the finished run was closed: it is complete", file=sys.stderr)
        else:
            killed = ": the MLflow run was marked KILLED" if tracker is not None else ""
            print(f"interrupted ({_stop.name}){killed}", file=sys.stderr)
        sys.exit(_stop.code)
    finally:
        if owner:
            _stop.restore()
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
    _stop.install()
    try:
        with _stop.interruptible():
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
        print(f"interrupted ({_stop.name})", file=sys.stderr)
        fast_exit(_stop.code)
    fast_exit(cli.DONE)


if __name__ == "__main__":
    console()
