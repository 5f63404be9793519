"""Data sets: the embedded ``digits`` default, CIFAR-10 from its python batches, and any image folder.

Every data set yields ``(image, label)`` with ``image`` a float tensor (C, H, W) in [-1, 1]. Channels are a
property of the data set (1 for digits, 3 otherwise); models take them from :func:`dataset_channels`.
``reference_uint8`` gives the uint8 images that quality metrics compare against.

``data.root`` may name environment variables, expanded when the data set is checked or loaded, never in the
config: the grids say ``root: $WAVEBENCH_DATA/stl10``, so one ``export WAVEBENCH_DATA=/data`` points every grid
at ``/data/<data set preset>/`` and the job hashes stay the same on every machine.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bench.schema import paper_preset

__all__ = [
    "DataConfig", "DATASETS", "DataError", "load_dataset", "dataset_channels", "reference_uint8", "to_signed_unit",
    "dataset_fingerprint", "check_data_config", "resolve_root", "DATA_ENV", "DATASET_PRESETS",
]


def to_signed_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], bit-identical on every device: one multiplication by a float32 constant
    and one subtraction, each exactly rounded (``x / 127.5`` is not: CUDA divides by multiplying with the
    reciprocal, the CPU divides, and the two differ in the last bit)."""
    return pixels.float().mul(2.0 / 255.0).sub(1.0)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CIFAR_LAYOUT = (
    "<root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch} (the python pickles of "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted)"
)


DATA_ENV = "WAVEBENCH_DATA"   # the folder holding one folder per data set preset (cifar10/, stl10/, celebahq256/ ...)
DATA_LAYOUT = (f"${DATA_ENV}/cifar10 = the folder containing cifar-10-batches-py; ${DATA_ENV}/stl10, "
               "celebahq256, celebahq512, celebahq1024, lsun_church = folders of images")
DATA_ENV_HINT = f"data.root: ${DATA_ENV}/<data set preset> with {DATA_ENV} set ({DATA_LAYOUT})"


class DataError(ValueError):
    """A data set that cannot be loaded: names the expected layout and the config key to set."""


def resolve_root(cfg: "DataConfig") -> Path | None:
    """``data.root`` as a path, ``~`` and environment variables (``$WAVEBENCH_DATA``) expanded; None when unset.

    Expanded here, at check and load time only: the config keeps the portable form, so the job hash does not
    depend on the machine. An unset variable is an error naming it, not a literal ``$`` path."""
    if cfg.root is None:
        return None
    unset = [v for v in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", cfg.root) if v not in os.environ]
    if unset:
        fix = (f"set {DATA_ENV} to the folder that holds the data sets ({DATA_LAYOUT})" if DATA_ENV in unset
               else "set it")
        raise DataError(f"data.root={cfg.root} uses {', '.join('$' + v for v in unset)}, which is not set: {fix}; "
                        "or set data.root to the data set's folder")
    return Path(os.path.expandvars(cfg.root)).expanduser()


def _root_text(cfg: "DataConfig", root: Path) -> str:
    """"data.root=$WAVEBENCH_DATA/stl10 (= /data/stl10)": what the config says and what it resolved to."""
    return f"data.root={cfg.root}" + (f" (= {root})" if str(root) != cfg.root else "")


@dataclass
class DataConfig:
    name: str = "digits"        # digits | cifar10 | image-folder
    root: str | None = None     # cifar10: folder containing cifar-10-batches-py; image-folder: the folder
    resolution: int = 32        # images are resized (image-folder: centre-cropped, then resized) to this
    hflip: bool = False         # random horizontal flip during training
    download: bool = False      # cifar10 only: let torchvision download when the folder is missing


# Data set presets: the data config, and which paper configuration applies (bench.schema.paper_preset: `digits`,
# 1x32x32 and embedded, runs every CIFAR-10 configuration unchanged; only the channel count differs).
DATASET_PRESETS: dict[str, tuple[DataConfig, str]] = {name: (data, paper_preset(name)) for name, data in {
    "digits": DataConfig(name="digits", resolution=32),
    "cifar10": DataConfig(name="cifar10", resolution=32, hflip=True),
    "stl10": DataConfig(name="image-folder", resolution=64, hflip=True),
    "celebahq256": DataConfig(name="image-folder", resolution=256, hflip=True),
    "celebahq512": DataConfig(name="image-folder", resolution=512, hflip=True),
    "celebahq1024": DataConfig(name="image-folder", resolution=1024, hflip=True),
    "lsun_church": DataConfig(name="image-folder", resolution=256, hflip=True),
}.items()}


class InMemoryImages(Dataset):
    """uint8 images (N, C, H, W) held in memory; items are ([-1, 1] float image, label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, hflip: bool = False):
        assert images.dtype == torch.uint8 and images.dim() == 4
        self.images, self.labels, self.hflip = images, labels.long(), hflip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x = to_signed_unit(self.images[i])
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


class ImageFolder(Dataset):
    """Every image under ``root`` (recursively, sorted), RGB, centre-cropped to a square and resized."""

    def __init__(self, root: Path, resolution: int, hflip: bool = False):
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self.resolution, self.hflip = resolution, hflip

    def __len__(self) -> int:
        return len(self.files)

    def load_uint8(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize(
                (self.resolution, self.resolution), Image.Resampling.BICUBIC
            )
            return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)

    def __getitem__(self, i: int):
        x = to_signed_unit(self.load_uint8(i))
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, torch.tensor(0)


# --------------------------------------------------------------------------------------------- loaders

def _resize_uint8(images: torch.Tensor, resolution: int) -> torch.Tensor:
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    x = F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear", antialias=True,
                      align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _digits(cfg: DataConfig, split: str) -> InMemoryImages:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), fixed stratified 80/20 split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx_train, idx_test = train_test_split(
        np.arange(len(d.target)), test_size=0.2, random_state=0, stratify=d.target
    )
    idx = np.sort(idx_train if split == "train" else idx_test)
    images = torch.from_numpy(np.round(d.images[idx] * (255.0 / 16.0)).astype(np.uint8))[:, None]
    return InMemoryImages(_resize_uint8(images, cfg.resolution), torch.from_numpy(d.target[idx]),
                          hflip=cfg.hflip and split == "train")


def _cifar10(cfg: DataConfig, split: str) -> InMemoryImages:
    root = resolve_root(cfg)
    if root is None:
        raise DataError(f"data set 'cifar10' needs data.root: the folder that contains {CIFAR_LAYOUT}; or "
                        f"{DATA_ENV_HINT}")
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir() and cfg.download:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(root=str(root), train=True, download=True)
        except Exception as e:  # no network, no permission, ...
            raise DataError(
                f"cifar10: {folder} is missing and the download failed ({e}). Provide {CIFAR_LAYOUT} "
                "and set data.root"
            ) from e
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"cifar10: {folder} lacks {', '.join(missing)}. Expected layout: {CIFAR_LAYOUT}; "
            "set data.root to the folder that contains cifar-10-batches-py (or data.download: true where a "
            f"download is possible), or {DATA_ENV_HINT}"
        )
    data, labels = [], []
    for n in names:
        try:
            with open(folder / n, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        except Exception as e:
            raise DataError(
                f"cifar10: {folder / n} is not a CIFAR-10 python batch ({type(e).__name__}: {e}). "
                f"Expected layout: {CIFAR_LAYOUT}"
            ) from e
    images = torch.from_numpy(np.concatenate(data))
    return InMemoryImages(_resize_uint8(images, cfg.resolution), torch.tensor(labels),
                          hflip=cfg.hflip and split == "train")


def _image_folder(cfg: DataConfig, split: str) -> ImageFolder:
    root = resolve_root(cfg)
    if root is None:
        raise DataError("data set 'image-folder' needs data.root: a folder of images (png/jpg/webp/bmp); or "
                        f"{DATA_ENV_HINT}")
    if not root.is_dir():
        raise DataError(f"image-folder: {_root_text(cfg, root)} is not a folder; expected a folder of images "
                        f"({', '.join(IMAGE_SUFFIXES)}), searched recursively; set data.root, or {DATA_ENV_HINT}")
    ds = ImageFolder(root, cfg.resolution, hflip=cfg.hflip and split == "train")
    if len(ds) == 0:
        raise DataError(f"image-folder: no images ({', '.join(IMAGE_SUFFIXES)}) under {_root_text(cfg, root)}; "
                        "set data.root")
    return ds


DATASETS = {"digits": _digits, "cifar10": _cifar10, "image-folder": _image_folder}
CHANNELS = {"digits": 1, "cifar10": 3, "image-folder": 3}


def check_data_config(cfg: DataConfig) -> list[str]:
    """Problems with a data config, found without loading it (used to validate grids before any work)."""
    problems = []
    if cfg.name not in DATASETS:
        return [f"data.name={cfg.name!r} is not a data set; valid: {', '.join(DATASETS)}"]
    if cfg.resolution < 8 or cfg.resolution & (cfg.resolution - 1):
        problems.append(f"data.resolution={cfg.resolution} must be a power of two >= 8")
    try:
        root = resolve_root(cfg)
    except DataError as e:
        return problems + [str(e)]
    if cfg.name == "cifar10":
        if root is None:
            problems.append(f"data.root is required for cifar10: the folder containing {CIFAR_LAYOUT}; or "
                            f"{DATA_ENV_HINT}")
        elif not (root / "cifar-10-batches-py").is_dir() and not cfg.download:
            problems.append(f"{_root_text(cfg, root)}: no cifar-10-batches-py inside (expected {CIFAR_LAYOUT})")
    if cfg.name == "image-folder":
        if root is None:
            problems.append(f"data.root is required for image-folder: a folder of images; or {DATA_ENV_HINT}")
        elif not root.is_dir():
            problems.append(f"{_root_text(cfg, root)} is not a folder (expected a folder of images, "
                            f"{', '.join(IMAGE_SUFFIXES)}, searched recursively)")
    return problems


def load_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if cfg.name not in DATASETS:
        raise DataError(f"unknown data set {cfg.name!r} (data.name); valid: {', '.join(DATASETS)}")
    return DATASETS[cfg.name](cfg, split)


def dataset_channels(cfg: DataConfig) -> int:
    if cfg.name not in CHANNELS:
        raise DataError(f"unknown data set {cfg.name!r} (data.name); valid: {', '.join(DATASETS)}")
    return CHANNELS[cfg.name]


def reference_uint8(ds: Dataset, limit: int | None = None) -> torch.Tensor:
    """The data set's images as uint8 (N, C, H, W), unflipped, in order (the first ``limit`` of them)."""
    n = len(ds) if limit is None else min(limit, len(ds))
    if isinstance(ds, InMemoryImages):
        return ds.images[:n]
    return torch.stack([ds.load_uint8(i) for i in range(n)])


def dataset_fingerprint(images: torch.Tensor) -> str:
    """Content hash of uint8 images (shape included): part of every metric cache key."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
