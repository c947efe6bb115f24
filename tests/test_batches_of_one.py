"""Batches of one row and BatchNorm (issue 21, item 8): BatchNorm cannot train on one row ('Expected more than 1
value per channel when training'). trainer.bs=1 is refused for models with BatchNorm; a training set one more than
a multiple of bs trains, its last batch of one row left out of each epoch, with a note printed and tagged."""

import pytest
import torch
from mlflow import MlflowClient

from lesson5 import compose
from lesson5 import data as datasets
from lesson5.data.batches import batches, drops_one
from lesson5.errors import ConfigError
from lesson5.run import BATCH_OF_ONE_TAG, run
from tests.test_finetune import write_images
from tests.test_mnist import write_idx_folder

CPU = torch.device("cpu")


def _sizes(source, gen=None):
    return [len(yb) for _, yb in source.epoch(gen)]


@pytest.mark.parametrize("n, bs, dropped", [(9, 4, True), (8, 4, False), (10, 4, False), (1, 4, False),
                                            (5, 1, False), (65, 64, True)])
def test_drop_one_leaves_out_only_a_last_batch_of_one_row(n, bs, dropped):
    x, y = torch.arange(n * 2.0).view(n, 2), torch.arange(n)
    assert drops_one((x, y), bs) is dropped
    for part in ((x, y), torch.utils.data.TensorDataset(x, y)):  # tensors, and a Dataset through a DataLoader
        plain = batches(part, bs, CPU, train=True)
        kept = batches(part, bs, CPU, train=True, drop_one=True)
        sizes = _sizes(kept, torch.Generator().manual_seed(0))
        assert sum(sizes) == n - dropped and len(kept) == len(sizes)
        assert not dropped or sizes[-1] > 1
        assert sum(_sizes(plain, torch.Generator().manual_seed(0))) == n
        # validation is never cut
        assert sum(_sizes(batches(part, bs, CPU, train=False, drop_one=True))) == n


def test_the_row_left_out_changes_with_each_epoch():
    x, y = torch.arange(9.0).view(9, 1), torch.arange(9)
    source = batches((x, y), 4, CPU, train=True, drop_one=True)
    gen = torch.Generator().manual_seed(0)
    seen = [set(torch.cat([yb for _, yb in source.epoch(gen)]).tolist()) for _ in range(6)]
    assert all(len(s) == 8 for s in seen) and len(set(range(9)) - set.intersection(*seen)) > 1


def test_an_mlp_with_batchnorm_trains_on_a_training_set_one_more_than_a_multiple_of_bs(tmp_path, monkeypatch,
                                                                                       capsys):
    """The user's case: 129 training images at bs 64 (2 x 64 + 1); before, the run ended FAILED with
    'ValueError: Expected more than 1 value per channel when training'."""
    monkeypatch.chdir(tmp_path)
    idx = write_idx_folder(tmp_path / "idx", n_train=129, n_valid=40)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run(compose(["model=mlp", "model.batchnorm=true", f"data.path={idx}", "trainer.bs=64",
                          "trainer.epochs=2", "trainer.progress=false", f"tracking.uri={uri}",
                          "tracking.experiment=bn", "tracking.log_model=false"]))
    r = MlflowClient(uri).get_run(result.run_id)
    assert r.info.status == "FINISHED"
    assert "left out" in r.data.tags[BATCH_OF_ONE_TAG] and "trainer.bs=64" in r.data.tags[BATCH_OF_ONE_TAG]
    assert "note: the last training batch of each epoch, one row, is left out" in capsys.readouterr().err


def test_without_batchnorm_nothing_is_left_out(tmp_path, capsys):
    idx = write_idx_folder(tmp_path / "idx", n_train=129, n_valid=40)
    run(compose(["model=mlp", f"data.path={idx}", "trainer.bs=64", "trainer.epochs=1", "trainer.progress=false",
                 "tracking=none"]))
    assert "left out" not in capsys.readouterr().err


@pytest.mark.slow
def test_resnet34_trains_on_a_training_set_one_more_than_a_multiple_of_bs(tmp_path, capsys):
    folder = write_images(tmp_path / "imgs", n=6)  # 12 images: 2 held out, 10 = 3 x 3 + 1 to train on
    run(compose(["model=resnet34", "model.weights=none", f"data.path={folder}", "data.size=32",
                 "data.valid_pct=0.2", "trainer.bs=3", "trainer.progress=false", "tracking=none",
                 "trainer.stages.0.epochs=1", "trainer.stages.1.epochs=1"]))
    assert "trainer.bs=3" in capsys.readouterr().err


@pytest.mark.parametrize("overrides", [["model=mlp", "model.batchnorm=true"], ["model=resnet34"]],
                         ids=["mlp batchnorm", "resnet34"])
def test_bs_1_is_refused_for_batchnorm_models_before_any_data_or_run(overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "build", lambda conf: pytest.fail("data fetched before validation"))
    with pytest.raises(ConfigError, match="trainer.bs=1 is not allowed"):
        run(compose([*overrides, "trainer.bs=1", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]))
    assert not (tmp_path / "mlflow.db").exists()
