"""The bad-input contract of every command but `python -m lesson5` (tests/test_contract.py fuzzes that one), fuzzed
with Hypothesis: each entry point's `main(argv)` is called in-process with drawn argument sets (its own options
with valid and invalid values, unknown keys, empty values, `+`-prefixed keys, Hydra overrides, arguments that
name nothing), on tiny data and an SQLite store in a temporary folder. Whatever it is given, a command

- exits 0 (done) or 2 (refused); never 130, and nothing but SystemExit escapes main() (no traceback);
- when it refuses, says so on stderr naming a key, a file or a run of its command line;
- leaves no MLflow run RUNNING in the store, and a refused one makes no mlflow.db in its folder.

Training is cut short: lr_find runs its one pass over 600 ratings; reproduce measures only the checks (identities,
no training); the sweep's driver stops after `Sweep.prepare` (the part that refuses), closing the parent run it
made; transfer stops after composing both steps' configs (its runs are resnet34 fits).

Each entry point draws LESSON5_FUZZ_EXAMPLES sets (default 20; about 2 minutes for all eight on 2 cores). A long run:
    LESSON5_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_entry_contract.py -q
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from tests.conftest import write_movielens

EXAMPLES = int(os.environ.get("LESSON5_FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False,
                database=None)
ROOT = Path(__file__).resolve().parents[1]
RUN_ID = "RUN_ID"  # drawn in place of the trained run's id

# Anything any command may be given by mistake
JUNK = st.sampled_from(["bogus=1", "kk=", "+kk=1", "tracking.url=", "=", "=1", "--bogus", "-x", "--help=no",
                        "model.n_factorz=3", "+trainer.x=1", "++trainer.epochs=1", "~model", "~nope",
                        "trainer.epochs=abc", "trainer.epochs=", "optim=nadam", "experiment=nope", "model=[1",
                        "hydra.job.chdir=false", "--config-dir", "--config-dir=/nonexistent/conf", "extra_arg",
                        "model@x=collab", "data/x=1", "tracking=none"])
NUMBER = st.sampled_from(["0", "-1", "1", "2", "3", "1e-3", "abc", "", "nan", "inf", "-inf", "1e300", "100000",
                          "1.5", "[1,2]", "null", "true"])
# Hydra overrides a collab run takes, with good and bad values (tests/test_contract.py draws the full set)
OVERRIDES = {
    "model.n_factors": NUMBER, "model.y_range": st.sampled_from(["[0,5.5]", "null", "[5,0]", "[1]", "x"]),
    "optim.lr": NUMBER, "optim.wd": NUMBER, "optim.momentum": NUMBER,
    "optim.wd_mode": st.sampled_from(["l2", "decoupled", "l1", ""]), "trainer.seed": NUMBER,
    "trainer.bs": st.sampled_from(["16", "0", "-3", "abc", "", "4096"]),
    "trainer.threads": st.sampled_from(["1", "-2"]),
    "trainer.device": st.sampled_from(["cpu", "auto", "cuda:3", "tpu"]), "data.valid_pct": NUMBER,
    "data.split": st.sampled_from(["random", "u9", "cv"]), "schedule": st.sampled_from(["constant", "cosine"]),
    "optim": st.sampled_from(["sgd", "adam", "lbfgs"]), "model": st.sampled_from(["collab", "mlp", "colab"]),
    "tracking.experiment": st.sampled_from(["x", "a b", ""]), "+trainer.extra": NUMBER,
}


def _overrides(n: int = 3):
    keys = st.lists(st.sampled_from(sorted(OVERRIDES)), max_size=n, unique=True)
    return keys.flatmap(lambda ks: st.tuples(*(OVERRIDES[k].map(lambda v, k=k: f"{k}={v}") for k in ks))).map(list)


def _options(choices: dict[str, st.SearchStrategy], n: int = 3):
    """Up to n of a command's own options, each key=value with a drawn value."""
    keys = st.lists(st.sampled_from(sorted(choices)), max_size=n, unique=True)
    return keys.flatmap(lambda ks: st.tuples(*(choices[k].map(lambda v, k=k: f"{k}={v}") for k in ks))).map(list)


@st.composite
def argv(draw, arguments, options, overrides: bool, junk_weight: int = 3):
    """A command line: its arguments (drawn, maybe missing or extra), its options, Hydra overrides, junk."""
    args = [draw(a) for a in arguments]
    if draw(st.integers(0, 9)) == 0:
        args = args[:-1] if args and draw(st.booleans()) else [*args, "extra"]
    opts = draw(_options(options))
    hydra = draw(_overrides()) if overrides else []
    junk = [draw(JUNK) for _ in range(draw(st.integers(0, 1))) if draw(st.integers(0, 9)) < junk_weight]
    parts = [*opts, *hydra, *junk]
    return args + draw(st.permutations(parts)) if parts else args


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny MovieLens data, a store in a temporary folder, and a finished collab run in it."""
    from lesson5 import compose
    from lesson5.run import run

    root = tmp_path_factory.mktemp("entry_contract")
    ml = write_movielens(root / "ml", n_ratings=600)
    store = root / "store" / "mlflow.db"
    store.parent.mkdir()
    uri = f"sqlite:///{store}"
    trained = run(compose([f"data.path={ml}", "data.verify=false", "trainer.epochs=1", "trainer.progress=false",
                           f"tracking.uri={uri}", "tracking.experiment=fuzz", "tracking.log_model=false"]))
    (root / "afile").write_text("not a folder\n")
    return {"root": root, "ml": ml, "uri": uri, "store": store, "run_id": trained.run_id, "n": itertools.count()}


def _data(world) -> list[str]:
    return [f"data.path={world['ml']}", "data.verify=false", "trainer.progress=false"]


def _tracking(world) -> list[str]:
    return [f"tracking.uri={world['uri']}", "tracking.experiment=fuzz"]


# out= values: a new file in the example's folder, a folder, a regular file's subpath, a place that cannot be made
OUT_FILE = st.sampled_from(["report/out.md", "out.md", ".", "AFILE/x.md", "/proc/nope/x.md", ""])
AFILE = "AFILE"  # a regular file of the world's folder


def _running(world) -> list[str]:
    client = MlflowClient(world["uri"])
    exps = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_id for r in client.search_runs(exps, "attributes.status = 'RUNNING'")] if exps else []


def _names_something(err: str, args: list[str], command) -> bool:
    """Whether a refusal names a key, file, folder or run of its command line, one of the command's own keys or
    arguments (a required one left out), or the store it looked in."""
    words = {"mlflow.db", "data.path", "trainer.bs", "trainer.device", *(o.key for o in command.options),
             *(f"<{a}>" for a, _ in command.arguments)}
    for a in args:
        key, eq, value = a.partition("=")
        key = key.strip("-+~")
        words |= {key, key.split(".")[-1], key.split("@")[0], key.split("/")[0]} if key else set()
        if eq and len(value) > 2:
            words |= {value, Path(value).name}
    return any(w and re.search(rf"(?<![\w.]){re.escape(w)}(?![\w])", err) for w in words)


def check(world, capsys, module: str, args: list[str]) -> int:
    """Call the command's main(args) in a fresh folder; assert the contract; return its exit code."""
    main, command = importlib.import_module(module).main, importlib.import_module(module).COMMAND
    args = [world["run_id"] if a == RUN_ID else a.replace(AFILE, str(world["root"] / "afile")) for a in args]
    folder = world["root"] / f"call{next(world['n'])}"
    folder.mkdir()
    capsys.readouterr()
    with contextlib.chdir(folder):
        try:
            code = main(args)
        except SystemExit as e:  # allowed, as long as its code keeps the contract
            code = e.code
    out, err = capsys.readouterr()
    assert code in (0, 2), f"{module} {args}: exit {code}\n{err[-3000:]}"
    assert "Traceback" not in err, f"{module} {args}: a traceback\n{err[-3000:]}"
    running = _running(world)
    assert not running, f"{module} {args}: left MLflow run(s) RUNNING: {running}"
    if code == 2:
        first = next((line for line in err.splitlines() if line.startswith("error:")), "")
        assert first, f"{module} {args}: refused without an error line\n{err[-2000:]}"
        named = _names_something(err.split("\n\nusage:")[0], args, command)
        assert named, f"{module} {args}: names nothing: {err[:2000]}"
        assert not (folder / "mlflow.db").exists(), f"{module} {args}: a refused command made an mlflow.db"
        event(f"refused: {first[7:40]}")
    else:
        event("done")
    return code


# ---- each entry point -------------------------------------------------------------------------------------------

LR = st.sampled_from(["1e-7", "1e-5", "10", "100", "0", "-1", "abc", "", "inf", "nan", "1e300", "1e-320"])


@pytest.mark.slow
@FUZZ
@given(drawn=argv([], {"start_lr": LR, "end_lr": LR}, overrides=True), tracked=st.integers(0, 3))
def test_lr_find(world, capsys, drawn, tracked):
    """The data first, so that the drawn overrides (trainer.bs=..., say) win; the store last, so that it does. One
    pass in four is tracked (the writer's start and end take seconds on a loaded machine)."""
    store = _tracking(world) if tracked == 0 else ["tracking=none"]
    check(world, capsys, "lesson5.lr_find", [*_data(world), "trainer.bs=16", *drawn, *store])


CHECKS_ONLY = st.sampled_from(["embedding", "wd_vs_l2", "embedding,wd_vs_l2", "nope", "", "embedding,nope", "[]"])


@pytest.mark.slow
@FUZZ
@given(drawn=argv([], {"quick": st.sampled_from(["true", "false", "maybe", ""]), "only": CHECKS_ONLY,
                       "reuse": st.sampled_from(["true", "no", "2"]), "workers": NUMBER, "out": OUT_FILE},
                  overrides=True))
def test_reproduce(world, capsys, drawn):
    """Only the checks (identities: no training) are measured; the overrides are still checked for every run."""
    if not any(a.startswith("only=") for a in drawn):
        drawn.append("only=embedding")
    check(world, capsys, "lesson5.reproduce", [*drawn, *_tracking(world)])


@pytest.mark.slow
@FUZZ
@given(drawn=argv([], {"quick": st.sampled_from(["true", "false", "x"]), "seeds": NUMBER,
                       "out": OUT_FILE}, overrides=True))
def test_transfer(world, capsys, monkeypatch, drawn):
    """The protocol's runs are resnet34 fits: each is stopped once its config composes and validates."""
    from lesson5 import transfer
    from lesson5.config import validate

    def dry(self):
        for step in ("pretrain", "mnist"):
            validate(self.config(step, []))
        return {}

    monkeypatch.setattr(transfer.Protocol, "all", dry)
    monkeypatch.setattr(transfer, "markdown", lambda out, command, conf: f"# dry run of {command}\n")
    check(world, capsys, "lesson5.transfer", [*drawn, *_tracking(world)])


STUDY = st.sampled_from(["n_factors", "y_range", "nope", "missing.yaml", "/proc/nope.yaml", "sweeps", ""])


@pytest.mark.slow
@FUZZ
@given(drawn=argv([STUDY], {
    "n_trials": NUMBER, "workers": st.sampled_from(["1", "2", "0", "100000", "abc", ""]),
    "storage": st.sampled_from(["s.journal", "", ".", "sub/s.journal", "/proc/nope/s.journal",
                                "postgresql://u@127.0.0.1:1/db", "sqlite:///optuna.db"]),
    "study_name": st.sampled_from(["mine", "", "a b", "x/y"]), "resume": st.sampled_from(["true", "false", "x"]),
    "pruner": st.sampled_from(["none", "median", "nope"]), "stack": st.sampled_from(["auto", "1", "0", "x"]),
    "progress": st.sampled_from(["false", "maybe"])}, overrides=True))
def test_sweep(world, capsys, monkeypatch, drawn):
    """The driver stops after Sweep.prepare (everything that refuses), closing the parent run it made."""
    from lesson5.sweep import driver

    def dry(self, progress=True):
        MlflowClient(self.tracking_uri).set_terminated(self.parent_run_id, "KILLED")
        return 0

    monkeypatch.setattr(driver.Sweep, "run", dry)
    check(world, capsys, "lesson5.sweep.__main__", [*_data(world), "trainer.epochs=1", *drawn, *_tracking(world)])


@pytest.mark.slow
@FUZZ
@given(drawn=argv([STUDY], {
    "source": st.sampled_from(["table", "journal", "csv", ""]),
    "table": st.sampled_from([str(ROOT / "sweeps/results/n_factors.csv"), str(ROOT / "sweeps/results/y_range.csv"),
                              "missing.csv", "", "."]),
    "storage": st.sampled_from(["s.journal", "", ".", "/proc/nope/s.journal"]),
    "study_name": st.sampled_from(["n_factors", "", "../x", ".hidden", "mine"]),
    "out": st.sampled_from(["res", "", ".", "/proc/nope", AFILE])}, overrides=True))
def test_report(world, capsys, drawn):
    study = drawn[0] if drawn else ""
    if study in ("n_factors", "y_range") and not any(a.startswith(("table=", "source=")) for a in drawn):
        drawn.append(f"table={ROOT / 'sweeps' / 'results' / study}.csv")  # most lines can succeed
    if not any(a.startswith("out=") for a in drawn):
        drawn.append("out=res")  # never the committed sweeps/results/
    check(world, capsys, "lesson5.report", drawn)


RUN = st.sampled_from([RUN_ID, RUN_ID, "0" * 32, "abc", ""])


def _store(world):
    return st.sampled_from([world["uri"], world["uri"], "sqlite:///missing.db", "", "file:///nope"])


def _in_store(world, data, drawn: list[str]) -> list[str]:
    """Most command lines look in the world's store (the rest in this folder's, which does not exist)."""
    if not any(a.startswith("tracking.uri=") for a in drawn) and data.draw(st.integers(0, 4)) > 0:
        return [*drawn, f"tracking.uri={world['uri']}"]
    return drawn


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_interpret(world, capsys, data):
    drawn = data.draw(argv([RUN], {"top": st.sampled_from(["10", "1000", "3", "0", "-1", "x", ""]),
                                   "min_ratings": st.sampled_from(["0", "5", "50", "100000", "-1", "x", ""]),
                                   "tracking.uri": _store(world)}, overrides=False))
    check(world, capsys, "lesson5.interpret", _in_store(world, data, drawn))


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_recommend(world, capsys, data):
    drawn = data.draw(argv([RUN], {"user": st.sampled_from(["new", "new", "1", "2", "nobody", ""]),
                                   "k": st.sampled_from(["1", "5", "0", "-1", "abc", "100000", ""]),
                                   "min_ratings": st.sampled_from(["0", "5", "100000", "-1", ""]),
                                   "top": st.sampled_from(["10", "0", "x"]),
                                   "tracking.uri": _store(world)}, overrides=False))
    if not any(a.startswith("user=") for a in drawn) and data.draw(st.integers(0, 4)) > 0:
        drawn.append(data.draw(st.sampled_from(["user=1", "user=new min_ratings=5"])))
        drawn = [*drawn[:-1], *drawn[-1].split()]
    check(world, capsys, "lesson5.recommend", _in_store(world, data, drawn))


@FUZZ
@given(drawn=argv([], {"to": st.sampled_from(["sqlite:///synced.db", "", "x"]),
                       "dir": st.sampled_from(["spools", "", ".", "/proc/nope", ".lesson5/offline"])},
                  overrides=False))
def test_sync(world, capsys, drawn):
    check(world, capsys, "lesson5.sync", drawn)
