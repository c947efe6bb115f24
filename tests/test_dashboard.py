"""optuna-dashboard on a study's storage: the command the sweep prints for each kind of storage, and, in a real
browser, the dashboard that command opens on a small finished study."""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import chromium_dom
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from lesson5.sweep.progress import dashboard_command

BIN = Path(sys.executable).parent  # where pip put optuna-dashboard's command, beside this Python


def test_the_command_names_the_storage_as_optuna_dashboard_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    journal = dashboard_command("sweeps.journal").split("  (")[0]  # a journal: its absolute path, from any folder
    assert journal == f"optuna-dashboard {tmp_path / 'sweeps.journal'}"
    assert dashboard_command("my sweeps/s.journal").split("  (")[0] == \
        f"optuna-dashboard '{tmp_path / 'my sweeps' / 's.journal'}'"
    assert dashboard_command("sqlite:////data/optuna.db").startswith("optuna-dashboard sqlite:////data/optuna.db")
    url = "postgresql://lesson5:secret@db.example:5432/optuna"
    assert dashboard_command(url).startswith(f"optuna-dashboard {url}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text(html: str) -> str:
    """What a page shows: its DOM without styles, scripts and tags, spaces collapsed."""
    html = re.sub(r"<(style|script)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _dashboard_missing() -> str:
    if shutil.which("chromium") is None and not os.environ.get("LESSON5_REQUIRE_CHROMIUM"):
        return "Debian's chromium is not installed (apt-get install chromium)"
    if not (BIN / "optuna-dashboard").exists() and not os.environ.get("CI"):
        return "optuna-dashboard is not installed (pip install -e '.[dashboard]')"
    return ""


@pytest.mark.slow
@pytest.mark.skipif(bool(_dashboard_missing()), reason=_dashboard_missing() or "-")
def test_optuna_dashboard_shows_a_finished_study_and_its_trials(tmp_path):
    """A study of 5 complete and 1 pruned trials in a journal, made with Optuna directly; the command the sweep
    prints for that journal; headless Chromium on the study's trial list shows its name and its 6 trials."""
    journal = tmp_path / "sweeps.journal"
    study = optuna.create_study(study_name="lesson5-dashboard-check",
                                storage=JournalStorage(JournalFileBackend(str(journal))))
    for i in range(5):
        study.add_trial(create_trial(params={"optim.wd": 0.01 * (i + 1)}, value=0.9 - 0.01 * i,
                                     distributions={"optim.wd": FloatDistribution(0.001, 1.0, log=True)}))
    study.add_trial(create_trial(state=TrialState.PRUNED))
    port = _free_port()
    command = shlex.split(dashboard_command(str(journal)).split("  (")[0])
    server = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    summaries = json.load(r)["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, f"optuna-dashboard exited: {server.stderr.read().decode()[-2000:]}"
                assert time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.5)
        (found,) = [s for s in summaries if s["study_name"] == "lesson5-dashboard-check"]
        page = f"http://127.0.0.1:{port}/dashboard/studies/{found['study_id']}/trials"
        dom = chromium_dom(page, tmp_path / "chromium")
    finally:
        server.terminate()
        server.wait(timeout=30)
    shown = _text(dom)
    assert "lesson5-dashboard-check" in shown and "6 Trials" in shown, shown[:2000]
    assert shown.count("Complete") >= 5 and "Pruned" in shown


def _journal_with_a_study(path: Path) -> Path:
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    study.add_trial(create_trial(params={"optim.wd": 0.1}, value=0.9,
                                 distributions={"optim.wd": FloatDistribution(0.001, 1.0, log=True)}))
    return path


def _dashboard(*argv: str) -> int:
    from lesson5.dashboard import main

    return main(list(argv))


def test_lesson5_dashboard_serves_a_readable_storage(tmp_path, monkeypatch):
    import optuna_dashboard

    served = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, host, port: served.update(
        studies=[s.study_name for s in storage.get_all_studies()], host=host, port=port))
    journal = _journal_with_a_study(tmp_path / "sweeps.journal")
    assert _dashboard(f"storage={journal}", "port=8123") == 0
    assert served == {"studies": ["s"], "host": "127.0.0.1", "port": 8123}


@pytest.mark.parametrize("case", ["newer journal", "no file", "no sqlite file", "mlflow store", "no study", "port"])
def test_lesson5_dashboard_refuses_a_storage_it_cannot_read_with_the_reason(tmp_path, capsys, case):
    """What optuna-dashboard itself shows as an internal error (an AssertionError deep in Optuna's journal replay,
    a schema error for an MLflow store) is refused up front: exit 2, the storage named, the reason and a fix,
    and no file made."""
    journal = tmp_path / "sweeps.journal"
    db = tmp_path / "optuna.db"
    if case == "newer journal":  # an operation this Optuna does not know, as a newer Optuna may write
        _journal_with_a_study(journal)
        with open(journal, "a") as f:
            f.write(json.dumps({"op_code": 99, "worker_id": "w"}) + "\n")
        argv, said = [f"storage={journal}"], ["Optuna", "cannot read it", "pip install optuna=="]
    elif case == "no file":
        argv, said = [f"storage={journal}"], ["no such file"]
    elif case == "no sqlite file":
        argv, said = [f"storage=sqlite:///{db}"], ["no such file"]
    elif case == "mlflow store":
        from mlflow import MlflowClient

        MlflowClient(f"sqlite:///{db}").search_experiments()  # creates MLflow's tables
        argv, said = [f"storage=sqlite:///{db}"], ["MLflow store, not an Optuna storage"]
    elif case == "no study":
        optuna.storages.RDBStorage(f"sqlite:///{db}")  # Optuna's tables, no study
        argv, said = [f"storage=sqlite:///{db}"], ["holds no study yet"]
    else:
        argv, said = [f"storage={_journal_with_a_study(journal)}", "port=70000"], ["port=70000", "65535"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _dashboard(*argv) == 2
    err = capsys.readouterr().err
    assert all(s in err for s in said), err
    assert argv[-1].split("=", 1)[1] in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
