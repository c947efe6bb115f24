"""Reading what a collab model learned (lesson5.interpret, lesson5.recommend), by a count threshold or, as the
lesson does, over the N most-rated movies. The claims report's tests are in tests/test_claims.py."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from lesson5 import bias, compose, interpret, recommend
from lesson5.errors import ConfigError
from lesson5.load import load_run
from lesson5.run import run


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


def test_most_rated_breaks_ties_at_the_cut_by_title_and_never_keeps_the_unknown_slot():
    count = np.array([99, 3, 5, 5, 1])  # index 0 is the unknown-id slot: never kept, whatever its count
    names = ["#na#", "b", "c", "a", "d"]
    assert bias.most_rated(count, names, 2).tolist() == [2, 3]
    assert bias.most_rated(count, names, 1).tolist() == [3]  # c and a tie at 5: a comes first by title
    assert bias.most_rated(count, names, 10).tolist() == [1, 2, 3, 4]
    assert bias.keep(count, names, min_ratings=4).tolist() == [2, 3]
    assert bias.keep(count, names, min_ratings=4, top=3).tolist() == [2, 3]  # top 3 is b, c, a; b has 3 < 4


def test_top_ranks_the_most_rated_items_as_the_lesson_does(trained, tiny, capsys):
    result, loaded = trained
    items, users = bias.bias_tables(loaded.model, loaded.data, min_ratings=0, top=10)
    x, _ = bias.ratings(loaded.data)
    counts = np.bincount(x[:, 1].numpy(), minlength=len(loaded.data.vocab["items"]))[1:]
    assert len(items) == 10 and items.bias.is_monotonic_increasing
    assert items.n_ratings.min() >= np.sort(counts)[::-1][9]  # no item outside the ten most-rated
    assert len(users) == len(loaded.data.vocab["users"]) - 1  # top= ranks items only; min_ratings 0 keeps all users
    fifth = int(np.sort(counts)[::-1][4])
    both, _ = bias.bias_tables(loaded.model, loaded.data, min_ratings=fifth, top=10)  # both apply
    assert set(both.title) == set(items[items.n_ratings >= fifth].title) and len(both) >= 5
    comps, _, _ = bias.pca(loaded.model, loaded.data, min_ratings=0, top=10)
    assert sorted(comps.title) == sorted(items.title)
    assert interpret.main([result.run_id, "top=10", f"tracking.uri={_uri(tiny)}"]) == 0
    out = capsys.readouterr().out
    assert "Lowest item biases (the 10 most-rated items):" in out and "(10 items)" in out
    assert interpret.main([result.run_id, "top=0", f"tracking.uri={_uri(tiny)}"]) == 2


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


def test_spearman_is_pandas_spearman_without_scipy_at_import():
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"bias": rng.normal(size=40), "mean_rating": rng.integers(1, 6, 40).astype(float)})
    assert bias.spearman(t) == pytest.approx(t.bias.corr(t.mean_rating, method="spearman"))


def test_recommend_refuses_a_bad_count_naming_it(capsys):
    assert recommend.main(["0" * 32, "user=new", "k=abc"]) == 2
    assert "k=abc: expected an integer >= 1" in capsys.readouterr().err


def test_a_filter_that_keeps_nothing_is_refused_and_the_runs_results_stay(trained, tiny, capsys):
    """Issue 21: `lesson5-interpret <run> min_ratings=100000` replaced item_bias.csv with a header and exited 0."""
    result, _ = trained
    uri = _uri(tiny)
    assert interpret.main([result.run_id, "min_ratings=20", f"tracking.uri={uri}"]) == 0
    client = MlflowClient(uri)
    before = pd.read_csv(client.download_artifacts(result.run_id, "interpret/item_bias.csv"))
    capsys.readouterr()
    assert interpret.main([result.run_id, "min_ratings=100000", f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert "min_ratings=100000 keeps 0 items" in err and "the most-rated has" in err and "Give min_ratings=" in err
    after = pd.read_csv(client.download_artifacts(result.run_id, "interpret/item_bias.csv"))
    pd.testing.assert_frame_equal(before, after)
    assert interpret.main([result.run_id, "top=2", f"tracking.uri={uri}"]) == 2  # too few for the components
    assert "top=2 keeps 2 items" in capsys.readouterr().err


def test_recommend_refuses_a_filter_that_keeps_no_item(trained, tiny, capsys):
    result, _ = trained
    assert recommend.main([result.run_id, "user=new", "min_ratings=100000", f"tracking.uri={_uri(tiny)}"]) == 2
    assert "min_ratings=100000 keeps 0 items" in capsys.readouterr().err
    assert recommend.main([result.run_id, "user=new", "k=0", f"tracking.uri={_uri(tiny)}"]) == 2
