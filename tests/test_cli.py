"""One command-line style: every entry point takes key=value, answers --help, and refuses what it does not take."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lesson5 import cli, compose
from lesson5.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# (module, a command line it takes without running anything heavy up to its first check)
ENTRY_POINTS = ["lesson5.sweep.__main__", "lesson5.report", "lesson5.lr_find", "lesson5.interpret",
                "lesson5.recommend", "lesson5.reproduce", "lesson5.transfer", "lesson5.sync", "lesson5.dashboard"]


def _main(module: str):
    return importlib.import_module(module).main


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_says_what_it_does_its_keys_and_an_example(module, capsys):
    assert _main(module)(["--help"]) == 0
    out = capsys.readouterr().out
    command = importlib.import_module(module).COMMAND
    assert out.startswith(f"{command.name}: ") and "usage:" in out and f"example:\n  {command.name} " in out
    assert all(f"{o.key}=" in out for o in command.options)


@pytest.mark.parametrize("module", ENTRY_POINTS)
@pytest.mark.parametrize("bad", ["--bogus", "bogus_key=1"])
def test_an_unknown_option_exits_2_with_the_usage(module, bad, capsys):
    command = importlib.import_module(module).COMMAND
    args = ["x" for _ in command.arguments]
    assert _main(module)([*args, bad]) == 2
    err = capsys.readouterr().err
    assert f"unknown option {bad.split('=')[0]}" in err.replace("'", "") and f"usage: {command.name}" in err


def test_a_missing_or_extra_argument_exits_2():
    sweep = _main("lesson5.sweep.__main__")
    assert sweep([]) == 2
    assert sweep(["a", "b"]) == 2


def test_an_old_flag_is_refused_naming_the_new_form(capsys):
    assert _main("lesson5.sync")(["--to", "http://127.0.0.1:9"]) == 2
    assert "to=..." in capsys.readouterr().err


COMMAND = cli.Command(
    name="lesson5-demo", module="lesson5.demo", summary="a demo", example="x n=3",
    arguments=(("thing", "a thing"),),
    options=(cli.Option("n", int, "a count", default=1, low=1), cli.Option("lr", float, "an lr", default=0.1, above=0),
             cli.Option("flag", bool, "a flag", default=False), cli.Option("only", list, "some", choices=("a", "b")),
             cli.Option("tracking.uri", str, "a store"), cli.Option("who", str, "a name", choices=("me", "you"))),
    overrides="every run")


def test_options_are_typed_with_their_defaults():
    args = COMMAND.parse(["x", "n=3", "lr=1e-3", "flag=yes", "only=b,a", "tracking.uri=sqlite:///m.db",
                          "model.n_factors=5", "+trainer.x=1", "experiment=foo", "hydra.job.chdir=false"])
    assert (args.thing, args.n, args.lr, args.flag, args.only, args.tracking_uri) == (
        "x", 3, 1e-3, True, ["b", "a"], "sqlite:///m.db")
    assert args.overrides == ["model.n_factors=5", "+trainer.x=1", "experiment=foo", "hydra.job.chdir=false"]
    defaults = COMMAND.parse(["x"])
    assert (defaults.n, defaults.lr, defaults.flag, defaults.only, defaults.who) == (1, 0.1, False, None, None)


@pytest.mark.parametrize("bad, says", [
    ("n=0", "n=0: expected an integer >= 1"), ("n=two", "n=two: expected an integer"),
    ("lr=0", "lr=0: expected a number > 0"), ("flag=maybe", "flag=maybe: expected true or false"),
    ("only=a,c", "only=a,c: expected a comma-separated list of a, b"), ("who=them", "who=them: expected one of"),
    ("n=2 n=3", "n= is given twice"), ("modle.x=1", "unknown option 'modle.x'"),
])
def test_a_bad_value_is_refused_naming_the_key(bad, says):
    with pytest.raises(cli.UsageError, match=says):
        COMMAND.parse(["x", *bad.split()])


def test_a_required_option_must_be_given():
    command = cli.Command(name="c", module="m", summary="s", example="e",
                          options=(cli.Option("user", str, "who", required=True),))
    with pytest.raises(cli.UsageError, match="user= is required"):
        command.parse([])


def test_the_shared_exit_codes():
    def interrupted(args):
        raise KeyboardInterrupt

    def refused(args):
        raise ConfigError("model.n_factors=0: expected an integer >= 1")

    assert cli.run(COMMAND, ["x"], lambda args: None) == 0
    assert cli.run(COMMAND, ["x"], refused) == 2
    assert cli.run(COMMAND, ["x"], interrupted) == 130
    assert cli.run(COMMAND, ["x", "n=0"], lambda args: None) == 2


def _user_config(folder: Path) -> Path:
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "mine.yaml").write_text("# @package _global_\nmodel:\n  n_factors: 7\n")
    return folder


def test_a_config_dir_adds_the_users_experiments(tmp_path):
    mine = _user_config(tmp_path / "myconf")
    args = COMMAND.parse(["x", "experiment=mine", "--config-dir", str(mine)])
    assert args.config_dirs == [mine] and args.overrides[-1].startswith("hydra.searchpath=")
    assert compose(args.overrides).model.n_factors == 7
    assert compose(["experiment=mine"], config_dirs=[mine]).model.n_factors == 7
    assert compose([]).model.n_factors == 40  # the shipped configs are unchanged beside it
    with pytest.raises(cli.UsageError, match="no such folder"):
        COMMAND.parse(["x", f"--config-dir={tmp_path / 'nowhere'}"])


def test_a_study_file_that_does_not_exist_is_named(tmp_path, capsys):
    missing = tmp_path / "studies" / "mine.yaml"
    assert _main("lesson5.sweep.__main__")([str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def _lesson5(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lesson5", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_the_lesson5_command_shares_the_style(tmp_path):
    helped = _lesson5("--help", cwd=tmp_path)
    assert helped.returncode == 0 and "model=" in helped.stdout and "example:\n  lesson5 " in helped.stdout
    for bad in ("--bogus", "modle.n_factors=3"):
        refused = _lesson5(bad, cwd=tmp_path)
        assert refused.returncode == 2 and "usage: lesson5" in refused.stderr, refused.stderr
    mine = _user_config(tmp_path / "myconf")
    shown = _lesson5("--config-dir", str(mine), "experiment=mine", "--cfg", "job", cwd=tmp_path)
    assert shown.returncode == 0 and "n_factors: 7" in shown.stdout, shown.stderr


@pytest.mark.parametrize("module, args, says", [
    ("lesson5.lr_find", ["model=nope"], "Could not find 'model/nope'"),
    ("lesson5.lr_find", ["trainer.epochs=abc"], "trainer.epochs=abc"),
    ("lesson5.transfer", ["model=nope"], "Could not find 'model/nope'"),
    ("lesson5.reproduce", ["model=nope"], "Could not find 'model/nope'"),
    ("lesson5.sweep.__main__", ["n_factors", "storage="], "storage= is empty"),
    ("lesson5.sync", ["to="], "to= is empty"),
])
def test_an_override_hydra_cannot_compose_or_an_empty_value_exits_2(module, args, says, capsys, tmp_path,
                                                                      monkeypatch):
    """Refused before anything runs, with Hydra's own words or the key, not a traceback (the review's inputs)."""
    monkeypatch.chdir(tmp_path)
    assert _main(module)(args) == 2
    assert says in capsys.readouterr().err


def test_sigterm_ends_a_command_as_interrupted(capsys):
    """`timeout`, `scancel` and a container's stop send SIGTERM: every command ends it as Ctrl-C, exit 143."""
    import signal

    def body(args):
        signal.raise_signal(signal.SIGTERM)

    assert cli.run(cli.Command("lesson5-x", "lesson5.x", "test", ""), [], body) == cli.TERMINATED == 143
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is not cli._interrupt  # the caller's handler is back


# ---- issue 21: the inputs a user found, each refused (exit 2) naming its cause, with no traceback and no store ----

@pytest.mark.parametrize("module, args, says", [
    ("lesson5.lr_find", ["start_lr=abc"], "start_lr=abc: expected a number > 0"),
    ("lesson5.lr_find", ["trainer.epochs=abc"], "trainer.epochs=abc: Value 'abc' of type 'str' could not be converted"),
    ("lesson5.lr_find", ["optim=nadam"], "Could not find 'optim/nadam'"),
    ("lesson5.lr_find", ["end_lr=inf"], "end_lr=inf: expected a finite number"),
    ("lesson5.reproduce", ["trainer.epochs=abc", "quick=true", "only=y_range"], "trainer.epochs=abc: Value 'abc'"),
    ("lesson5.reproduce", ["only=embedding", "out=/proc/nope/claims.md"], "out=/proc/nope/claims.md: cannot write"),
    ("lesson5.transfer", ["trainer.epochs=abc"], "trainer.epochs=abc: Value 'abc'"),
    ("lesson5.sweep.__main__", ["n_factors", "storage="], "storage= is empty"),
    ("lesson5.sweep.__main__", ["n_factors", "study_name="], "study_name= is empty"),
    ("lesson5.sweep.__main__", ["n_factors", "trainer.epochs=abc"], "the command line's trainer.epochs=abc"),
    ("lesson5.report", ["n_factors", "storage="], "storage= is empty"),
    ("lesson5.report", ["n_factors", "source=journal", "storage=."], "storage='.': give a journal file"),
    ("lesson5.report", ["n_factors", "out=/proc/nope"], "out=/proc/nope: cannot write in /proc/nope"),
    ("lesson5.report", ["n_factors", "study_name=../x"], "study_name=../x: give a plain name"),
    ("lesson5.report", [""], "<study> is empty"),
    ("lesson5.interpret", ["0" * 32, "tracking.url="], "unknown option 'tracking.url'"),
    ("lesson5.interpret", ["0" * 32], "no MLflow store at"),
    ("lesson5.recommend", ["0" * 32, "user=new", "kk="], "unknown option 'kk'"),
    ("lesson5.recommend", ["0" * 32, "user=new", "k=0"], "k=0: expected an integer >= 1"),
])
def test_the_users_inputs_are_refused_naming_the_cause(module, args, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _main(module)(args) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert not (tmp_path / "mlflow.db").exists(), "a refused command made an empty store"


def test_an_unwritable_report_folder_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    table = ROOT / "sweeps" / "results" / "n_factors.csv"
    assert _main("lesson5.report")(["n_factors", f"table={table}", "out=afile"]) == 2
    assert "out=afile: afile is a file" in capsys.readouterr().err
    assert _main("lesson5.report")(["n_factors", f"table={table}", "out=afile/sub"]) == 2
    assert "out=afile/sub: cannot write in afile/sub (Not a directory" in capsys.readouterr().err


def test_an_upper_bound_and_a_check_refuse_what_can_only_be_a_mistake():
    command = cli.Command(name="c", module="m", summary="s", example="e", options=(
        cli.Option("workers", int, "processes", default=1, low=1, high=cli.max_workers(), why_high=cli.WORKERS_BOUND),
        cli.Option("study_name", str, "a name", check=cli.plain_name)))
    assert command.parse([f"workers={cli.max_workers()}"]).workers == cli.max_workers()
    with pytest.raises(cli.UsageError, match=rf"workers=100000: expected an integer >= 1 <= {cli.max_workers()} "
                                             r"\(4 per CPU core"):
        command.parse(["workers=100000"])
    for bad in ("x/y", ".hidden", " a"):
        with pytest.raises(cli.UsageError, match=f"study_name={re.escape(bad)}: give a"):
            command.parse([f"study_name={bad}"])


def test_a_postgresql_url_without_its_driver_says_what_to_install():
    from lesson5.sweep import storage

    says = storage.how_to_open("postgresql://u@h/db", ModuleNotFoundError("No module named 'psycopg'", name="psycopg"))
    assert 'pip install -e ".[postgres]"' in says and "psycopg" in says
    other = storage.how_to_open("postgresql+psycopg2://u@h/db", ModuleNotFoundError("no psycopg2", name="psycopg2"))
    assert "psycopg2" in other and "storage=postgresql://u@h/db" in other
    # as if psycopg were not installed: in a process of its own, since taking a module out of sys.modules here
    # would leave SQLAlchemy's dialect modules imported twice in this one
    probe = ("import sys; sys.modules['psycopg'] = None\n"
             "from lesson5.errors import ConfigError\nfrom lesson5.sweep import storage\n"
             "try:\n    storage.open_storage('postgresql://u@h:1/db')\nexcept ConfigError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120).stdout
    assert re.search(r'storage=postgresql://u@h:1/db: .*pip install -e "\.\[postgres\]"', out), out


def test_lr_find_refuses_a_pass_that_explodes_at_once_and_closes_its_run(tiny, tmp_path, capsys):
    from mlflow import MlflowClient

    assert _main("lesson5.lr_find")([*tiny, "end_lr=1e300"]) == 2
    err = capsys.readouterr().err
    assert "end_lr=1e+300: the loss exploded after" in err and "Lower end_lr" in err
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
