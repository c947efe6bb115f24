"""Reading what a collab model learned (lesson5.interpret, lesson5.recommend) and the claims report's verdicts."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from lesson5 import bias, claims, compose, interpret, recommend
from lesson5.errors import ConfigError
from lesson5.load import load_run
from lesson5.reproduce import measure_all
from lesson5.run import run
from lesson5.sweep.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED


def _uri(tiny) -> str:
    return next(o for o in tiny if o.startswith("tracking.uri=")).split("=", 1)[1]


@pytest.fixture
def trained(tiny):
    """A tiny collab run, loaded back from MLflow alone."""
    result = run(compose([*tiny, "tracking.log_model=false"]))
    return result, load_run(result.run_id, _uri(tiny))


def test_a_collab_run_logs_its_interpretation_with_the_contracts_columns(tiny):
    result = run(compose([*tiny, "tracking.log_model=false"]))
    client = MlflowClient(_uri(tiny))
    arts = {a.path for a in client.list_artifacts(result.run_id, "interpret")}
    assert {"interpret/item_bias.csv", "interpret/user_bias.csv", "interpret/pca.csv", "interpret/pca_ends.csv",
            "interpret/bias_vs_mean_rating.png"} <= arts
    items = pd.read_csv(client.download_artifacts(result.run_id, "interpret/item_bias.csv"))
    assert list(items.columns) == ["title", "bias", "mean_rating", "n_ratings"]
    assert len(items) == 3 and (items.n_ratings >= 50).all()  # min_ratings 50: the tiny data has three such movies
    assert items.bias.is_monotonic_increasing


def test_interpret_command_on_a_finished_run(trained, tiny, capsys):
    result, _ = trained
    assert interpret.main([result.run_id, "min_ratings=20", f"tracking.uri={_uri(tiny)}"]) == 0
    out = capsys.readouterr().out
    assert "Highest item biases" in out and "Spearman correlation" in out
    client = MlflowClient(_uri(tiny))
    items = pd.read_csv(client.download_artifacts(result.run_id, "interpret/item_bias.csv"))
    assert len(items) > 10 and (items.n_ratings >= 20).all() and items.bias.is_monotonic_increasing
    pca = pd.read_csv(client.download_artifacts(result.run_id, "interpret/pca.csv"))
    assert list(pca.columns) == ["title", "n_ratings", "pc1", "pc2", "pc3"] and len(pca) == len(items)
    assert "interpret/pca.png" in {a.path for a in client.list_artifacts(result.run_id, "interpret")}
    assert client.get_run(result.run_id).data.metrics["interpret_spearman_bias_mean_rating"] > 0.3


def test_min_ratings_above_every_count_gives_an_empty_table_with_a_note(trained):
    _, loaded = trained
    items, users = bias.bias_tables(loaded.model, loaded.data, min_ratings=10**6)
    assert items.empty and users.empty
    buf = io.StringIO()
    interpret.show(items, 10**6, float("nan"), file=buf)
    assert "the table is empty" in buf.getvalue()


def test_pca_shapes_and_explained_variance(trained):
    _, loaded = trained
    comps, explained, ends = bias.pca(loaded.model, loaded.data, min_ratings=1, ends=5)
    n_items = len(loaded.data.vocab["items"]) - 1
    assert comps.shape == (n_items, 5) and len(explained) == 3
    w = loaded.model.item_factors.weight.detach().double().numpy()[1:]
    s = np.linalg.svd(w - w.mean(0), compute_uv=False)
    np.testing.assert_allclose(explained, (s[:3] ** 2 / (s**2).sum()), rtol=1e-9)
    assert explained == sorted(explained, reverse=True) and sum(explained) <= 1
    assert len(ends) == 3 * 2 * 5


def test_cold_start_recommendations_are_sorted_by_bias_and_known_users_get_unseen_items(trained):
    _, loaded = trained
    cold = recommend.for_new_user(loaded, k=5, min_ratings=1)
    assert len(cold) == 5 and cold.bias.is_monotonic_decreasing
    items, _ = bias.bias_tables(loaded.model, loaded.data, min_ratings=1)
    assert cold.bias.iloc[0] == pytest.approx(items.bias.max())
    user = loaded.data.vocab["users"][1]
    top = recommend.for_user(loaded, str(user), k=5)
    assert top.predicted_rating.is_monotonic_decreasing
    x, _ = bias.ratings(loaded.data)
    seen = {loaded.data.vocab["items"][i] for i in x[x[:, 0] == 1, 1].tolist()}
    assert not seen & set(top.title)


def test_bad_input_names_what_was_looked_up(trained, tiny, tmp_path):
    _, loaded = trained
    with pytest.raises(ConfigError, match="user=nobody is not among"):
        recommend.for_user(loaded, "nobody")
    with pytest.raises(ConfigError, match=r"run '0{32}' was not found in sqlite"):
        load_run("0" * 32, _uri(tiny))
    from tests.test_mnist import write_idx_folder

    folder = write_idx_folder(tmp_path / "idx", n_train=60, n_valid=20)
    mlp = run(compose(["model=mlp", f"data.path={folder}", "trainer.epochs=1", "trainer.progress=false",
                       f"tracking.uri={_uri(tiny)}", "tracking.log_model=false"]))
    with pytest.raises(ConfigError, match="trained model=mlp; this needs a model=collab run"):
        load_run(mlp.run_id, _uri(tiny), kind="collab")
    assert interpret.main([mlp.run_id, f"tracking.uri={_uri(tiny)}"]) == 2


# ---- the claims report ------------------------------------------------------------------------------------


def test_each_verdict_follows_the_measurements():
    by = {c.key: c for c in claims.CLAIMS}
    assert by["embedding"].judge({"max_abs_diff": 0.0})[0] == REPRODUCED
    assert by["embedding"].judge({"max_abs_diff": 0.1})[0] == NOT_REPRODUCED
    assert by["wd_vs_l2"].judge({"sgd": 1e-8, "adam": 0.2})[0] == REPRODUCED
    assert by["wd_vs_l2"].judge({"sgd": 1e-8, "adam": 1e-8})[0] == NOT_REPRODUCED
    frozen = {"frozen_s": 10.0, "unfrozen_s": 12.4, "frozen_mb": 1.0, "unfrozen_mb": 2.0}
    assert by["frozen_faster"].judge(frozen)[0] == REPRODUCED
    assert by["frozen_faster"].judge({**frozen, "unfrozen_s": 8.0})[0] == NOT_REPRODUCED
    assert by["frozen_faster"].judge({})[0] == claims.NOT_TESTED
    bias = {"spearman": 0.9, "n_items": 600, "top15_mean_over_4": 15, "bottom15_mean_under_2_5": 8}
    assert by["bias_ranks"].judge(bias)[0] == REPRODUCED
    assert by["bias_ranks"].judge({**bias, "spearman": 0.1})[0] == NOT_REPRODUCED

    rule = {"kind": "better", "param": "model.y_range", "value": "[0,5.5]", "than": "[0,5]", "tolerance": 0.001}
    def trials(a, b):  # noqa: E306
        return {"rule": rule, "maximize": False, "trials": [({"model.y_range": v, "trainer.seed": s}, m + d)
                                                             for v, m in (("[0,5.5]", a), ("[0,5]", b))
                                                             for s, d in ((0, 0.0005), (1, -0.0005))]}
    assert by["y_range"].judge(trials(0.89, 0.90))[0] == REPRODUCED
    assert by["y_range"].judge(trials(0.90, 0.89))[0] == NOT_REPRODUCED
    # a steady 0.0002 gap, inside the tolerance: no difference that matters (the paired rule; was inconclusive)
    assert by["y_range"].judge(trials(0.8950, 0.8952))[0] == NOT_REPRODUCED
    assert by["y_range"].judge({**trials(0.89, 0.90), "trials": []})[0] == claims.NOT_TESTED


@pytest.mark.slow
def test_the_quick_report_runs_on_tiny_data_and_reuses_its_runs(tiny, tmp_path):
    keys = ["embedding", "wd_vs_l2", "y_range", "adam_vs_sgd", "bias_ranks"]
    ctx = claims.Context(quick=True, overrides=[*[o for o in tiny if not o.startswith("tracking.experiment")],
                                                "trainer.epochs=1"])
    rows = measure_all(ctx, keys)
    assert [c.key for c, _, _ in rows] == keys
    assert all(v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE) for _, v, _ in rows)
    assert all(not m.get("reused") for m in ctx.made) and len(ctx.made) == 2 * 2 + 2 * 2 * 2 + 1
    again = claims.Context(quick=True, overrides=ctx.overrides)
    assert [v for _, v, _ in measure_all(again, keys)] == [v for _, v, _ in rows]
    assert all(m.get("reused") for m in again.made)


def test_spearman_is_pandas_spearman_without_scipy_at_import():
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"bias": rng.normal(size=40), "mean_rating": rng.integers(1, 6, 40).astype(float)})
    assert bias.spearman(t) == pytest.approx(t.bias.corr(t.mean_rating, method="spearman"))


def test_recommend_refuses_a_bad_count_naming_it(capsys):
    assert recommend.main(["0" * 32, "user=new", "k=abc"]) == 2
    assert "k=abc: expected an integer >= 0" in capsys.readouterr().err
