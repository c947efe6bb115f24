"""Core: images for fine-tuning (`data=images`): a folder of photos, or, offline, upscaled 3-channel digits or clothes.

- `data.path` set: an ImageFolder tree (one subfolder per class), or a flat folder whose labels come from each
  file name by `data.label_regex` (its first group), the Oxford-IIIT Pets convention: `^(.+)_\\d+\\.jpg$`.
  Files PIL cannot open are skipped with a warning and counted (`data.info.corrupt_skipped`), or, with
  `data.skip_corrupt=false`, refused by name. A seeded `valid_pct` of the files is held out.
- `data.path` null: `data.source` (fashion_mnist or mnist, fetched as `data=fashion_mnist` does), `data.n_train`
  and `data.n_valid` images of it, stretched to `data.size` pixels and 3 channels: an offline stand-in that
  exercises the same code.

Training images get light augmentation (a random crop of a padded or rescaled image; a horizontal flip for
photos only, since a flipped digit is another digit); every image is normalized with ImageNet's statistics.
Batches come from a DataLoader with `data.num_workers` workers (`data.batches`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lesson5.data.folds import Data, Fold, digest
from lesson5.errors import DataError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # ImageNet's, which pretrained bodies expect
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class TensorImages(Dataset):
    """Grey images held as one uint8 tensor (N, H, W), served as normalized 3-channel `size` px images."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, size: int, train: bool, augment: bool):
        # resized once, up front: per item, only a crop and the normalization remain
        big = F.interpolate(x.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False)
        self.x, self.y = big.round().clamp(0, 255).to(torch.uint8), y
        self.pad = size // 8 if train and augment else 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i].float() / 255
        if self.pad:  # a random shift of up to size/8 pixels
            size = img.shape[-1]
            padded = F.pad(img, (self.pad,) * 4)
            dx, dy = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            img = padded[:, dy : dy + size, dx : dx + size]
        return (img.expand(3, -1, -1) - MEAN) / STD, self.y[i]


class FileImages(Dataset):
    """Image files decoded with PIL and transformed by torchvision."""

    def __init__(self, files: list[Path], labels: list[int], size: int, train: bool, augment: bool):
        from torchvision.transforms import v2 as T

        self.files, self.labels = files, labels
        steps = ([T.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), T.RandomHorizontalFlip()]
                 if train and augment else [T.Resize(size, antialias=True), T.CenterCrop(size)])
        self.transform = T.Compose([T.ToImage(), *steps, T.ToDtype(torch.float32, scale=True),
                                    T.Normalize(MEAN.flatten().tolist(), STD.flatten().tolist())])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def _readable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many kinds for a bad file
        return False


def scan(folder: Path, label_regex: str | None, skip_corrupt: bool) -> tuple[list[Path], list[str], int]:
    """(files, their labels, how many unreadable files were skipped) under `folder`."""
    layouts = (f"an ImageFolder tree, {folder}/<class>/<image>.jpg (a subfolder per class), or a flat folder "
               f"{folder}/<image>.jpg with data.label_regex reading each label from the file name")
    if folder.is_file():
        raise DataError(f"data.path={folder} is a file, not a folder: data=images reads {layouts}. Point data.path "
                        f"at the folder{f' ({folder.parent})' if folder.parent != folder else ''} holding the "
                        f"images.")
    if not folder.is_dir():
        raise DataError(f"data.path={folder}: no such folder. Point it at {layouts}.")
    if label_regex:
        pattern = re.compile(label_regex)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
        labels = []
        for p in files:
            m = pattern.search(p.name)
            if m is None:
                raise DataError(f"{p}: data.label_regex={label_regex!r} does not match its name; fix the regex "
                                f"(its first group is the label) or move the file out.")
            labels.append(m.group(1) if m.groups() else m.group(0))
    else:
        files = sorted(p for p in folder.glob("*/*") if p.suffix.lower() in EXTENSIONS)
        labels = [p.parent.name for p in files]
        if not files and any(p.suffix.lower() in EXTENSIONS for p in folder.iterdir()):
            raise DataError(f"data.path={folder} holds images but no class subfolders: set data.label_regex to "
                            f"read each label from its file name (Pets, quoted for the shell and Hydra: "
                            f"'data.label_regex=\"^(.+)_\\d+\\.jpg$\"').")
    if not files:
        others = sorted(p for p in folder.rglob("*") if p.is_file())
        seen = f"; it holds {len(others)} other file(s), such as {others[0].relative_to(folder)}" if others else \
            "; it is empty"
        raise DataError(f"data.path={folder}: no images found in {folder}: expected {layouts}, as "
                        f"{', '.join(sorted(EXTENSIONS))} files{seen}.")
    ok = [_readable(p) for p in files]
    bad = [p for p, good in zip(files, ok) if not good]
    if bad and not skip_corrupt:
        raise DataError(f"{bad[0]}: PIL cannot read this image ({len(bad)} unreadable in {folder}). Remove it, or "
                        f"set data.skip_corrupt=true to skip such files.")
    if bad:
        print(f"warning: skipping {len(bad)} unreadable image(s) in {folder}, first {bad[0]} "
              f"(data.skip_corrupt=false refuses them instead)", file=sys.stderr)
    files, labels = [p for p, g in zip(files, ok) if g], [lab for lab, g in zip(labels, ok) if g]
    if not files:
        raise DataError(f"data.path={folder}: none of its {len(bad)} image file(s) can be read (first {bad[0]}): "
                        f"they are not images, or damaged. Point data.path at a folder of readable images.")
    if len(set(labels)) < 2:
        raise DataError(f"data.path={folder}: only {len(set(labels))} class ({', '.join(sorted(set(labels)))}); "
                        f"a classifier needs at least two.")
    return files, labels, len(bad)


def _from_folder(conf) -> Data:
    folder = Path(conf.path).expanduser()
    files, labels, skipped = scan(folder, conf.label_regex, conf.skip_corrupt)
    classes = sorted(set(labels))
    y = [classes.index(lab) for lab in labels]
    perm = np.random.default_rng(conf.seed).permutation(len(files))
    n_valid = max(1, int(round(conf.valid_pct * len(files))))
    va, tr = sorted(perm[:n_valid]), sorted(perm[n_valid:])
    part = lambda idx, train: FileImages([files[i] for i in idx], [y[i] for i in idx], conf.size, train,  # noqa: E731
                                         conf.augment)
    listing = "\n".join(f"{p.relative_to(folder)} {p.stat().st_size}" for p in files).encode()
    return Data(folds=[Fold("valid_pct", part(tr, True), part(va, False))], sizes={"n_classes": len(classes)},
                vocab={"classes": classes},
                info={"source": str(folder), "variant": folder.name, "n_train": len(tr), "n_valid": len(va),
                      "corrupt_skipped": skipped, "digest": digest(listing)})


def _from_grey(conf) -> Data:
    """The first n_train / n_valid images of Fashion-MNIST (or MNIST, or its 5k subset), class-balanced by a
    seeded shuffle, as 3-channel `size` px images."""
    from lesson5.config import ImageDataConf
    from lesson5.data import mnist

    grey = ImageDataConf(name=conf.source.value, cache_dir=conf.cache_dir, seed=conf.seed, valid_pct=conf.valid_pct,
                         sources=["debian", "download"] if conf.source.value == "fashion_mnist" else
                         ["download", "subset"])
    arrays, info = mnist.load(grey)
    if "x" in arrays:  # the 5k subset has no test set: a stratified, seeded split
        tr, va = mnist.stratified_split(arrays["y"], conf.valid_pct, conf.seed)
        arrays = {"train_x": arrays["x"][tr], "train_y": arrays["y"][tr],
                  "valid_x": arrays["x"][va], "valid_y": arrays["y"][va]}
    rng = np.random.default_rng(conf.seed)
    parts = {}
    for part, n in (("train", conf.n_train), ("valid", conf.n_valid)):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        idx = np.sort(rng.permutation(len(y))[: min(n, len(y))])
        parts[part] = (torch.from_numpy(x[idx].reshape(-1, 28, 28).copy()), torch.from_numpy(y[idx].astype(np.int64)))
    n_classes = int(max(parts["train"][1].max(), parts["valid"][1].max())) + 1
    return Data(folds=[Fold(info["variant"], TensorImages(*parts["train"], conf.size, True, conf.augment),
                            TensorImages(*parts["valid"], conf.size, False, conf.augment))],
                sizes={"n_classes": n_classes}, vocab={"classes": [str(c) for c in range(n_classes)]},
                info={"source": info["source"], "variant": f"{info['variant']}_{conf.size}px",
                      "n_train": len(parts["train"][1]), "n_valid": len(parts["valid"][1]),
                      "digest": digest(*(t.numpy() for p in parts.values() for t in p))})


def build(conf) -> Data:
    return _from_folder(conf) if conf.path else _from_grey(conf)
