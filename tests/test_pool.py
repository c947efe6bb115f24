"""lesson5.pool: a job trains the same in a worker process as in this one; a failing job raises its error from its
Future; a worker that dies fails its job and the next job starts another; the claims Context makes a run two
threads ask for once."""

from __future__ import annotations

import threading
import time

import pytest

from lesson5 import claims, pool
from lesson5.errors import ConfigError, Lesson5Error


def job(tiny, *runs: list[str], experiment: str = "pool") -> dict:
    return {"runs": list(runs), "extra": tiny, "experiment": experiment,
            "names": [" ".join(o) for o in runs], "tags": [{"test": "pool"} for _ in runs]}


@pytest.mark.slow
def test_a_stack_trains_the_same_in_a_worker_as_in_this_process(tiny):
    stack = job(tiny, ["trainer.seed=0"], ["trainer.seed=1", "optim.lr=0.01"])
    here = pool.pool(1)
    try:
        local = here.submit(stack).result()
    finally:
        here.close()
    workers = pool.pool(2)
    try:
        remote = workers.submit(stack).result()
    finally:
        workers.close()
    assert [r["metrics"]["valid_rmse"] for r in remote] == pytest.approx([r["metrics"]["valid_rmse"] for r in local],
                                                                         rel=1e-6)
    assert len({r["run_id"] for r in local + remote}) == 4  # each run its own MLflow run


@pytest.mark.slow
def test_a_refused_job_raises_its_error_naming_the_key_in_either_pool(tiny):
    bad = job(tiny, ["model.n_factors=0"])
    here = pool.pool(1)
    with pytest.raises(ConfigError, match="model.n_factors"):
        here.submit(bad).result()
    here.close()
    workers = pool.pool(2)
    try:
        with pytest.raises(Lesson5Error, match="model.n_factors"):
            workers.submit(bad).result()
        assert workers.submit(job(tiny, ["trainer.seed=3"])).result()[0]["metrics"]["valid_rmse"] > 0  # goes on
    finally:
        workers.close()


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_job_and_the_next_job_starts_another(tiny):
    workers = pool.Workers(1)
    try:
        long = workers.submit(job([o for o in tiny if not o.startswith("trainer.epochs")], ["trainer.epochs=500"]))
        deadline = time.monotonic() + 60
        while workers._procs[0] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # in its fit
        workers._procs[0].kill()
        with pytest.raises(Lesson5Error, match=r"exited with code -9 while training 'trainer.epochs=500'"):
            long.result(timeout=60)
        assert workers.submit(job(tiny, ["trainer.seed=4"])).result(timeout=120)[0]["metrics"]["valid_rmse"] > 0
    finally:
        workers.close()


@pytest.mark.slow
def test_a_run_two_claims_ask_for_at_once_is_made_once(tiny):
    ctx = claims.Context(quick=True, overrides=tiny, workers=2)
    runs = [["trainer.epochs=1", f"trainer.seed={s}"] for s in range(3)]
    threads = [threading.Thread(target=ctx.run_all, args=(name, runs)) for name in ("a", "b")]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        ctx.close()
    assert len(ctx.made) == 3 and all(not m.get("reused") for m in ctx.made)
    assert all(ctx.run("c", o) is not None for o in runs)  # known now: nothing more is made
    assert len(ctx.made) == 3
