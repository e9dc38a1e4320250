"""RobustBench models as a checkpoint source (``robustbench:NAME``).

Weights live in RobustBench's layout ``MODEL_DIR/DATASET/THREAT/NAME.pt`` (default ``./models``) and are
read with ``torch.load(weights_only=True)`` by ``landscape.checkpoint`` (never by RobustBench, whose loader
unpickles anything). The architecture comes from the ``robustbench`` package's model zoo when it imports
(``pip install 'landscape[robustbench]'``), else from a small table of RobustBench-compatible classes below
(same state_dict key names, same function) for the models that matter here: the SAT authors'
``Sitawarin2020Improving`` (WRN-34-10, CIFAR-10 and CIFAR-100) and its baselines. A file is downloaded only
when asked (``download=True``, ``--download``), through the package.

RobustBench models take inputs in [0, 1] and normalize inside (``mu``/``sigma`` buffers), as ours do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, LandscapeError
from .models import _PreActBlock

THREAT_MODELS = ("Linf", "L2", "corruptions")
INSTALL_HINT = "pip install 'landscape[robustbench]'"
# RobustBench's Linf budgets (its leaderboards): recorded as the checkpoint's eps/norm, so that analysis
# defaults to the attack the model was evaluated against. L2 budgets (0.5 on CIFAR) are not recorded: not
# every consumer of a config's eps reads its norm yet, and an L2 radius taken as Linf would be a wrong number.
_BUDGET = {("cifar10", "Linf"): 8 / 255, ("cifar100", "Linf"): 8 / 255, ("imagenet", "Linf"): 4 / 255}
_CIFAR10_MU, _CIFAR10_SIGMA = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
_CIFAR100_MU = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
_CIFAR100_SIGMA = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)


class _InputNorm(nn.Module):
    """Holds RobustBench's optional ``mu``/``sigma`` buffers at the top level of a model (their key names)."""

    def _init_norm(self, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> None:
        self._norm = mean is not None
        if self._norm:
            self.register_buffer("mu", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("sigma", torch.tensor(std).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.sigma if self._norm else x


class _Group(nn.Module):
    """RobustBench's ``NetworkBlock``: a stage of blocks under ``.layer``."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(_InputNorm):
    """WideResNet-DEPTH-WIDEN with RobustBench's key names (``conv1``, ``block1.layer.0.bn1`` ...,
    ``bn1``, ``fc``); the same function as RobustBench's ``WideResNet`` (its unused ``sub_block1`` is left
    out). Pre-activation blocks, the projection on the activated input, global average pooling."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, channels: int = 3,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n, widths = (depth - 4) // 6, [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self._init_norm(mean, std)
        self.conv1 = nn.Conv2d(channels, 16, 3, padding=1, bias=False)
        cin = 16
        for g, w in enumerate(widths, start=1):
            blocks = [_PreActBlock(cin if j == 0 else w, w, stride=(2 if g > 1 and j == 0 else 1),
                                   shortcut_name="convShortcut") for j in range(n)]
            setattr(self, f"block{g}", _Group(blocks))
            cin = w
        self.bn1 = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class PreActResNet18(_InputNorm):
    """PreAct ResNet-18 with RobustBench's key names (``conv1``, ``layer1.0.shortcut.0``, ``bn``, ``linear``),
    as in its ``Rice2020Overfitting`` CIFAR-100 model (BatchNorm + ReLU before the classifier, projection
    on the activated input): the same function as our registry's ``preact-resnet18``."""

    def __init__(self, num_classes: int = 10, channels: int = 3, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None):
        super().__init__()
        self._init_norm(mean, std)
        self.conv1 = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
        cin = 64
        for i, w in enumerate((64, 128, 256, 512), start=1):
            blocks = [_PreActBlock(cin if j == 0 else w, w, stride=(2 if i > 1 and j == 0 else 1),
                                   seq_shortcut=True) for j in range(2)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = w
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@dataclass(frozen=True)
class _Entry:
    """How to build a RobustBench model without the package: ``build()`` and its description."""
    build: Callable[[], nn.Module]
    arch: str
    note: str = ""


def _wrn(depth: int, widen: int, classes: int, mean=None, std=None) -> Callable[[], nn.Module]:
    return lambda: WideResNet(depth, widen, classes, mean=mean, std=std)


TABLE: dict[tuple[str, str, str], _Entry] = {
    ("cifar10", "Linf", "Sitawarin2020Improving"): _Entry(_wrn(34, 10, 10), "WideResNet-34-10", "SAT (the paper's)"),
    ("cifar100", "Linf", "Sitawarin2020Improving"): _Entry(_wrn(34, 10, 100), "WideResNet-34-10", "SAT (the paper's)"),
    ("cifar10", "Linf", "Zhang2019Theoretically"): _Entry(_wrn(34, 10, 10), "WideResNet-34-10", "TRADES"),
    ("cifar10", "Linf", "Rice2020Overfitting"): _Entry(_wrn(34, 20, 10, _CIFAR10_MU, _CIFAR10_SIGMA),
                                                       "WideResNet-34-20", "PGD-AT (Madry et al.), early stopping"),
    ("cifar100", "Linf", "Rice2020Overfitting"): _Entry(
        lambda: PreActResNet18(100, mean=_CIFAR100_MU, std=_CIFAR100_SIGMA), "PreActResNet-18",
        "PGD-AT (Madry et al.), early stopping"),
    ("cifar10", "Linf", "Standard"): _Entry(_wrn(28, 10, 10), "WideResNet-28-10", "standard training"),
}


@dataclass
class ZooModel:
    """A RobustBench model located on disk: ``model`` (architecture, weights not loaded yet), ``path`` of its
    weights file, and the settings to record."""
    model: nn.Module
    path: Path
    config: dict
    skip_prefixes: tuple[str, ...] = ()     # keys in the file the model leaves out (unused by forward)
    optional: tuple[str, ...] = ()          # keys the file may lack (normalization constants)


def threat_model_name(name: str) -> str:
    """``linf`` -> ``Linf`` etc.; a one-line ``CheckpointError`` for anything else."""
    for t in THREAT_MODELS:
        if name.lower() == t.lower():
            return t
    raise CheckpointError(f"unknown threat model {name!r}; choose from {', '.join(THREAT_MODELS)}")


def _import_zoo():
    """RobustBench's model zoo and downloader, or the reason they are unavailable."""
    try:
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.model_zoo.models import model_dicts
        from robustbench.utils import download_gdrive_new
    except Exception as e:  # missing, or installed but broken (e.g. pkg_resources gone from setuptools>=81)
        return None, f"{type(e).__name__}: {' '.join(str(e).split())}"
    return (model_dicts, BenchmarkDataset, ThreatModel, download_gdrive_new), ""


def _zoo_entry(zoo, name: str, dataset: str, threat: str) -> dict | None:
    model_dicts, BenchmarkDataset, ThreatModel, _ = zoo
    try:
        return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)].get(name)
    except (ValueError, KeyError):
        return None


def _download(zoo, entry: dict, name: str, path: Path) -> None:
    """Fetch ``path`` through RobustBench's downloader into a temporary file, then rename (atomic)."""
    gid = entry.get("gdrive_id")
    if not gid or isinstance(gid, (list, tuple)):
        raise CheckpointError(f"robustbench:{name} is "
                              + ("an ensemble of several files" if gid else "a timm model without a weights file")
                              + "; landscape loads single-network RobustBench models only")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        zoo[3](gid, str(tmp))
        if not tmp.is_file():
            raise OSError("the download produced no file")
        os.replace(tmp, path)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"downloading robustbench:{name} to {path} failed: "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from e
    finally:
        tmp.unlink(missing_ok=True)


RB_DATASETS = ("cifar10", "cifar100", "imagenet")


def robustbench_dataset(info: Any) -> str:
    """The RobustBench dataset whose models take ``info``'s data: itself when it is one of ``RB_DATASETS``,
    else the one with the same input shape and number of classes (``--dataset synthetic-cifar10`` or another
    32x32 10-class set evaluates a CIFAR-10 model: the lookup stays in RobustBench's cifar10 folder); none
    is a ``CheckpointError``."""
    from .data import dataset_info
    if info.name in RB_DATASETS:
        return info.name
    for rb in RB_DATASETS:
        try:
            other = dataset_info(rb)
        except LandscapeError:
            continue
        if (other.channels, other.size, other.num_classes) == (info.channels, info.size, info.num_classes):
            return rb
    raise CheckpointError(f"--dataset {info.name} ({info.channels}x{info.size}x{info.size}, {info.num_classes} "
                          f"classes) matches no RobustBench dataset ({', '.join(RB_DATASETS)}) a robustbench:NAME "
                          "model could take")


def locate(name: str, dataset: str, threat_model: str = "Linf", model_dir: str | os.PathLike = "models",
           download: bool = False) -> ZooModel:
    """The architecture and weights file of RobustBench model ``name`` for ``dataset`` and ``threat_model``.

    The file is ``model_dir/dataset/threat_model/name.pt``; it is downloaded only when ``download``.
    The architecture comes from the robustbench package when it imports, else from ``TABLE``.
    Cost: builds the model (random init); a download when asked and missing.
    """
    threat = threat_model_name(threat_model)
    path = Path(model_dir).expanduser() / dataset / threat / f"{name}.pt"
    zoo, why = _import_zoo()
    entry = _zoo_entry(zoo, name, dataset, threat) if zoo else None
    ours = TABLE.get((dataset, threat, name))
    known = ", ".join(sorted(n for d, t, n in TABLE if (d, t) == (dataset, threat)))
    if zoo is not None and entry is None:
        raise CheckpointError(f"RobustBench has no model {name!r} for {dataset} / {threat}")
    if zoo is None and ours is None:
        raise CheckpointError(f"robustbench:{name} ({dataset} / {threat}) needs the robustbench package "
                              f"({INSTALL_HINT}; here: {why}); without it landscape knows "
                              f"{known or 'no models for this dataset and threat model'}")
    if not path.is_file():
        if not download:
            raise CheckpointError(f"{path} not found (RobustBench's layout MODEL_DIR/DATASET/THREAT/NAME.pt; "
                                  "--model-dir sets MODEL_DIR); pass --download to fetch it")
        if zoo is None:
            raise CheckpointError(f"downloading robustbench:{name} needs the robustbench package "
                                  f"({INSTALL_HINT}; here: {why}); or put the file at {path}")
        _download(zoo, entry, name, path)
    if zoo is not None:
        if isinstance(entry.get("gdrive_id"), (list, tuple)):
            raise CheckpointError(f"robustbench:{name} is an ensemble of several files; "
                                  "landscape loads single-network RobustBench models only")
        model = entry["model"]()
        arch = f"robustbench package ({type(model).__name__})"
    else:
        model, arch = ours.build(), f"landscape table ({ours.arch})"
    skip: tuple[str, ...] = ()
    if isinstance(getattr(model, "sub_block1", None), nn.Module):  # RobustBench WideResNet: never used
        del model.sub_block1
        skip = ("sub_block1.",)
    elif ours is not None and isinstance(model, WideResNet):
        skip = ("sub_block1.",)
    optional = tuple(k for k, _ in model.named_buffers() if k.split(".")[-1] in ("mu", "sigma", "mean", "std"))
    config = {"source": "robustbench", "robustbench_name": name, "threat_model": threat,
              "weights_file": str(path), "architecture": arch}
    if (dataset, threat) in _BUDGET:
        config.update(eps=_BUDGET[(dataset, threat)], norm=threat.lower())
    return ZooModel(model, path, config, skip, optional)


__all__ = ["WideResNet", "PreActResNet18", "TABLE", "ZooModel", "locate", "threat_model_name", "INSTALL_HINT"]
