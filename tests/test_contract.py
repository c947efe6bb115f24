"""The bad-input contract, fuzzed (Hypothesis): any set of overrides either trains (a dry run of one step) or is
refused with a lesson5 or Hydra error that names a key (the CLI exits 2 for both), before any MLflow run exists.
Nothing else escapes: no traceback.

The CI profile draws LESSON5_FUZZ_EXAMPLES sets (default 60); BENCHMARKS.md records a long run:
    LESSON5_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_contract.py -q
"""

import os
import re

import pytest
from hydra.errors import HydraException
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from lesson5 import compose
from lesson5 import data as datasets
from lesson5.callback import Callback, CancelFit
from lesson5.config import validate
from lesson5.errors import Lesson5Error
from lesson5.learner import Learner
from lesson5.run import build_model, pick_device, run
from tests.conftest import write_movielens
from tests.test_mnist import write_idx_folder

EXAMPLES = int(os.environ.get("LESSON5_FUZZ_EXAMPLES", "60"))

number = st.one_of(st.integers(-10, 10_000), st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from(["0", "-1", "1e-3", "abc", "null", "[1,2]", "true"]))
fraction = st.one_of(st.floats(-0.5, 1.5), st.sampled_from(["0", "1", "nan", "x"]))
listing = st.lists(st.one_of(st.integers(-5, 300), st.floats(-2, 10)), max_size=4).map(
    lambda xs: "[" + ",".join(map(str, xs)) + "]")
KEYS = {
    "model.n_factors": number, "model.y_range": st.one_of(listing, st.just("null")), "model.hidden": listing,
    "model.dropout": fraction, "model.batchnorm": st.sampled_from(["true", "false", "maybe", "1"]),
    "optim.lr": number, "optim.wd": number, "optim.momentum": fraction, "optim.sqr_mom": fraction,
    "optim.eps": number, "optim.wd_mode": st.sampled_from(["l2", "decoupled", "l1"]),
    "optim.impl": st.sampled_from(["torch", "scratch", "numpy"]), "schedule.pct_start": fraction,
    "schedule.div": number, "schedule.div_final": number, "schedule.moms": listing,
    "trainer.epochs": number, "trainer.bs": number, "trainer.seed": number, "trainer.threads": st.integers(-2, 4),
    "trainer.diverge_factor": number, "trainer.device": st.sampled_from(["cpu", "auto", "cuda", "cuda:3", "tpu"]),
    "loss.impl": st.sampled_from(["torch", "scratch", "fast"]), "data.valid_pct": fraction,
    "data.split": st.sampled_from(["random", "u1", "cv", "u9"]), "data.item_key": st.sampled_from(["title", "id", "x"]),
    "data.seed": number, "data.normalize": st.sampled_from(["true", "false", "2"]),
    "data.valid_from_train": st.sampled_from(["true", "false"]), "tracking.log_every_n_steps": number,
    "tracking.flush_every": number, "tracking.experiment": st.sampled_from(["x", "''", "a b"]),
    "model.n_factorz": number, "optim.momentom": fraction, "trainer.fast": st.just("true"),
}
GROUPS = {"model": ["collab", "logistic", "mlp", "colab"], "optim": ["sgd", "momentum", "rmsprop", "adam", "lbfgs"],
          "schedule": ["constant", "one_cycle", "cosine"], "data": ["movielens", "mnist", "fashion_mnist"]}


@st.composite
def override_sets(draw):
    groups = [f"{g}={draw(st.sampled_from(opts))}" for g, opts in GROUPS.items() if draw(st.booleans())]
    keys = draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=4, unique=True))
    return groups + [f"{k}={draw(KEYS[k])}" for k in keys]


class OneStep(Callback):
    def after_step(self, learn):
        raise CancelFit


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    return write_movielens(root / "ml", n_ratings=600), write_idx_folder(root / "idx", n_train=100, n_valid=50), root


def _names_a_key(message: str, overrides: list[str]) -> bool:
    keys = {o.split("=", 1)[0] for o in overrides} | {"data.path", "trainer.device"}
    return any(re.search(rf"\b{re.escape(k)}\b", message) or re.search(rf"\b{re.escape(k.split('.')[-1])}\b", message)
               for k in keys)


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
@given(overrides=override_sets())
def test_any_overrides_train_or_are_refused_naming_a_key(tiny_data, overrides):
    ml, idx, root = tiny_data
    data = next((o.split("=", 1)[1] for o in overrides if o.startswith("data=")), None)
    model = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "collab")
    images = data in ("mnist", "fashion_mnist") or (data is None and model in ("logistic", "mlp"))
    store = root / "mlflow.db"
    fixed = [f"data.path={idx if images else ml}", "data.verify=false" if not images else "data.normalize=false",
             "trainer.progress=false", f"tracking.uri=sqlite:///{store}", "tracking.experiment=contract"]
    try:
        cfg = compose([*overrides, *fixed[:1], *([fixed[1]] if not images else []), *fixed[2:]])
        conf = validate(cfg)
        device = pick_device(conf.trainer.device)
        data = datasets.build(conf.data)
    except (Lesson5Error, HydraException) as e:  # what the CLI turns into exit code 2 (Hydra's own, since it exits 1)
        event(f"refused: {type(e).__name__}")
        assert _names_a_key(str(e), overrides), f"{overrides}: the error names no key: {e}"
        if isinstance(e, Lesson5Error) or "cfg" in locals():  # refused after composing: run() must leave no run
            before = _runs(store)
            with pytest.raises((Lesson5Error, HydraException)):
                run(cfg)
            assert _runs(store) == before, f"{overrides}: a refused input left an MLflow run"
        return
    learn = Learner.from_config(conf, data, data.folds[0], build_model(conf, data, device), device, [OneStep()])
    learn.fit(1)  # builds the data sources, the model, the optimizer, and takes one step
    event("trained one step")
    assert learn.step == 1


def _runs(store) -> int:
    if not store.exists():
        return 0
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("contract")
    return len(client.search_runs([exp.experiment_id])) if exp else 0
