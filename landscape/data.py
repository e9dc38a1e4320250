"""Dataset registry: every dataset is a set of in-memory tensors, inputs in [0, 1] and int64 labels.

Splits are deterministic: ``train`` and ``val`` are a seeded 90/10 partition of the original training
set (``split_seed``, default 0), ``train-full`` is all of it, ``test`` is the official test split (digits,
which has none, holds out a seeded 20%). Within a split, samples keep the order of the source files,
so ``tensors(n)`` is always "the first n samples".

Where files are looked for: ``data_dir`` (``--data-dir``), else ``$LANDSCAPE_DATA``, else ``./data``;
Fashion-MNIST also in ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
Nothing is downloaded unless ``download=True``.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import DataError

SPLITS = ("train", "val", "train-full", "test")
VAL_FRACTION = 0.1
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: input shape, classes, and (optional) normalization."""
    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "channels": self.channels, "size": self.size,
                "num_classes": self.num_classes, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(d["name"], int(d["channels"]), int(d["size"]), int(d["num_classes"]),
                   tuple(d["mean"]) if d.get("mean") else None, tuple(d["std"]) if d.get("std") else None)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 1, 8, 10),
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 28, 10),
    "mnist": DatasetInfo("mnist", 1, 28, 10),
    "cifar10": DatasetInfo("cifar10", 3, 32, 10, _CIFAR_MEAN, _CIFAR_STD),
    "cifar100": DatasetInfo("cifar100", 3, 32, 100, _CIFAR_MEAN, _CIFAR_STD),
    "imagenette": DatasetInfo("imagenette", 3, 128, 10, _IMAGENET_MEAN, _IMAGENET_STD),
    "synthetic-cifar10": DatasetInfo("synthetic-cifar10", 3, 32, 10, _CIFAR_MEAN, _CIFAR_STD),
}
AUGMENTED = {"cifar10", "cifar100", "imagenette"}


def available_datasets() -> list[str]:
    return sorted(DATASETS) + ["folder:PATH"]


def dataset_info(name: str, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """Static description of a registered dataset; ``folder:PATH`` is inspected on disk."""
    if name.startswith("folder:"):
        return _folder_arrays(name[len("folder:"):], "test", 0, data_dir)[2]
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(available_datasets())}")
    return DATASETS[name]


class Dataset:
    """One split of a dataset, held as tensors (uint8 images are converted to float on access)."""

    def __init__(self, info: DatasetInfo, split: str, inputs: torch.Tensor, labels: torch.Tensor):
        self.info, self.split = info, split
        self._inputs, self.labels = inputs, labels.long()

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, split={self.split!r}, n={len(self)})"

    @staticmethod
    def _float(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def tensors(self, n: int | None = None, device: str | torch.device = "cpu",
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` samples (all if None) as ``(inputs, labels)``, in dataset order."""
        if n is not None and not 0 < n <= len(self):
            raise DataError(f"asked for {n} samples but the {self.split} split of {self.name} has {len(self)}")
        n = len(self) if n is None else n
        return self._float(self._inputs[:n]).to(device), self.labels[:n].to(device)

    def subset(self, n: int) -> "Dataset":
        """The first ``n`` samples as a new Dataset (no copy)."""
        self.tensors(n)  # validates n
        return Dataset(self.info, self.split, self._inputs[:n], self.labels[:n])

    def to(self, device: str | torch.device) -> "Dataset":
        """The same split with its tensors moved to ``device`` (stored in their compact dtype)."""
        return Dataset(self.info, self.split, self._inputs.to(device), self.labels.to(device))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: str | torch.device | None = None, drop_last: bool = False,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches as float tensors on ``device``; the permutation is drawn on the CPU from ``generator``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self._inputs.device)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            x, y = self._float(self._inputs[idx]), self.labels[idx]
            yield (x, y) if device is None else (x.to(device, non_blocking=True), y.to(device, non_blocking=True))


def cut_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int | None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) cut in order into views of ``batch_size`` samples (one batch when None; none when empty): the one
    batching rule of the Hessian operator and the surfaces. Cost: none (views)."""
    bs = batch_size or max(len(x), 1)
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR-style augmentation on a batch on its own device: random crop after zero padding, random h-flip.

    The random draws come from ``generator`` (a CPU generator), so runs are reproducible on any device.
    """
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    rows = (dy.view(b, 1) + torch.arange(h, device=x.device).view(1, h))             # (b, h)
    cols = dx.view(b, 1) + torch.arange(w, device=x.device).view(1, w)               # (b, w)
    cols = torch.where(flip.view(b, 1), cols.flip(1), cols)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]   # (b, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where dataset folders are looked for, in order."""
    if data_dir is not None:
        return [Path(data_dir)]
    env = os.environ.get("LANDSCAPE_DATA")
    return [Path(env)] if env else [Path("data")]


def _partition(n: int, fraction: float, seed: int, held_out: bool) -> torch.Tensor:
    """Sorted indices of a seeded partition of range(n): the held-out ``fraction``, or the rest."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(fraction * n))
    return (perm[:k] if held_out else perm[k:]).sort().values


def load_dataset(name: str = "digits", split: str = "test", data_dir: str | os.PathLike | None = None,
                 download: bool = False, split_seed: int = 0) -> Dataset:
    """Load one split of a registered dataset into memory.

    ``split`` is one of ``train`` (90% of the training set), ``val`` (the other 10%, seeded by
    ``split_seed``), ``train-full`` or ``test``.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    part = "test" if split == "test" else "train"
    if name.startswith("folder:"):
        x, y, info = _folder_arrays(name[len("folder:"):], part, split_seed, data_dir)
    else:
        info = dataset_info(name)
        x, y = _LOADERS[name](part, data_dir, download)
    if split in ("train", "val"):
        idx = _partition(len(y), VAL_FRACTION, split_seed, held_out=(split == "val"))
        x, y = x[idx], y[idx]
    return Dataset(info, split, x, y)


# --- loaders: each returns (inputs, labels) for part "train" or "test" -------------------------------

def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1797 x 64 pixels in 0..16, labels). Read straight from the CSV that
    scikit-learn ships, which skips importing scikit-learn itself (seconds at every start-up)."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if csv is not None and csv.is_file():
        raw = np.loadtxt(csv, delimiter=",", dtype=np.float32)
        return raw[:, :-1], raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def _digits(part: str, data_dir, download) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = _digits_arrays()
    x = torch.from_numpy(pixels).view(-1, 1, 8, 8).div_(16.0)
    y = torch.from_numpy(labels)
    # scikit-learn ships one set: a fixed, seeded 20% is our test split.
    idx = _partition(len(y), 0.2, 20210101, held_out=(part == "test"))
    return x[idx], y[idx]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated ({data.size} bytes of data, expected {int(np.prod(dims))})")
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_dirs(data_dir=None) -> list[Path]:
    """Folders searched for the Fashion-MNIST IDX files."""
    return [r / "fashion-mnist" for r in data_roots(data_dir)] + [Path("/usr/share/datasets/fashion-mnist")]


def _fashion_mnist(part: str, data_dir, download) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if part == "train" else "t10k"
    for folder in fashion_mnist_dirs(data_dir):
        img = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        lab = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            x = torch.from_numpy(_read_idx(img).copy()).unsqueeze(1)
            y = torch.from_numpy(_read_idx(lab).astype(np.int64))
            return x, y
    if download:
        return _torchvision_arrays("FashionMNIST", part, data_dir, True)
    looked = ", ".join(str(p) for p in fashion_mnist_dirs(data_dir))
    raise DataError(f"Fashion-MNIST not found (looked in {looked}); "
                    "install Debian's dataset-fashion-mnist or pass --download")


def _torchvision_arrays(cls_name: str, part: str, data_dir, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision
    root = data_roots(data_dir)[0]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        ds = cls(str(root), train=(part == "train"), download=download)
    except RuntimeError as e:
        hint = "" if download else " (pass --download to fetch it)"
        raise DataError(f"{cls_name} not found under {root}{hint}: {e}".splitlines()[0]) from e
    data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.asarray(ds.data))
    x = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def _imagenette(part: str, data_dir, download) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision
    from torchvision.transforms import v2
    root = data_roots(data_dir)[0]
    size = DATASETS["imagenette"].size
    tf = v2.Compose([v2.PILToTensor(), v2.Resize(size + size // 8, antialias=True), v2.CenterCrop(size)])
    try:
        ds = torchvision.datasets.Imagenette(str(root), split="train" if part == "train" else "val",
                                             size="160px", download=download, transform=tf)
    except RuntimeError as e:
        hint = "" if download else " (pass --download to fetch it)"
        raise DataError(f"Imagenette not found under {root}{hint}") from e
    return _stack(ds)


def _synthetic(part: str, n_train: int = 4096, n_test: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped synthetic data (no files, no download): per class a fixed smooth random template plus
    pixel noise, as uint8; learnable, and the same on every machine. For smoke tests and benchmarks."""
    gen = torch.Generator().manual_seed(20240 if part == "train" else 20241)
    templates = torch.nn.functional.interpolate(
        torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1234)), size=32, mode="bilinear")
    n = n_train if part == "train" else n_test
    y = torch.randint(0, 10, (n,), generator=gen)
    x = (0.6 * templates[y] + 0.4 * torch.rand(n, 3, 32, 32, generator=gen)).mul_(255).round_().to(torch.uint8)
    return x, y


def _stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for img, label in ds:
        xs.append(img)
        ys.append(label)
    if not xs:
        raise DataError("the image folder holds no images")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def _folder_arrays(path: str, part: str, seed: int, data_dir, size: int = 64,
                   ) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """An ImageFolder tree: ``PATH/{train,test}/CLASS/*`` if present, else ``PATH/CLASS/*`` with 20% held out."""
    import torchvision
    from torchvision.transforms import v2
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    tf = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    split_dirs = (root / "train").is_dir() and test_dir is not None
    sub = (root / "train" if part == "train" else test_dir) if split_dirs else root
    try:
        ds = torchvision.datasets.ImageFolder(str(sub), transform=tf,
                                              loader=lambda p: __import__("PIL.Image").Image.open(p).convert("RGB"))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"cannot read image folder {sub}: {e}") from e
    x, y = _stack(ds)
    if not split_dirs:
        idx = _partition(len(y), 0.2, seed, held_out=(part == "test"))
        x, y = x[idx], y[idx]
    info = DatasetInfo(f"folder:{path}", 3, size, len(ds.classes), _IMAGENET_MEAN, _IMAGENET_STD)
    return x, y, info


_LOADERS = {
    "digits": _digits,
    "fashion-mnist": _fashion_mnist,
    "mnist": lambda part, d, dl: _torchvision_arrays("MNIST", part, d, dl),
    "cifar10": lambda part, d, dl: _torchvision_arrays("CIFAR10", part, d, dl),
    "cifar100": lambda part, d, dl: _torchvision_arrays("CIFAR100", part, d, dl),
    "imagenette": _imagenette,
    "synthetic-cifar10": lambda part, d, dl: _synthetic(part),
}
