"""Model registry by name (``build_model("cnn-small", dataset="digits")``).

Inputs are always in [0, 1]; when a model normalizes its inputs it does so with a ``Normalize`` layer
inside the model, so attacks and analysis see the same function a user trains.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import DATASETS, DatasetInfo, dataset_info
from .errors import ModelError

ModelFactory = Callable[[DatasetInfo], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}
_AUTO = {"digits": "cnn-small", "mnist": "cnn-small", "fashion-mnist": "cnn-small",
         "cifar10": "preact-resnet18", "cifar100": "preact-resnet18", "imagenette": "tv:resnet18"}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding a factory ``f(info) -> nn.Module`` to the registry under ``name``."""
    def deco(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = factory
        return factory
    return deco


def available_models() -> list[str]:
    """Registered model names (plus ``tv:NAME`` for any torchvision classifier and ``auto``)."""
    return sorted(_REGISTRY) + ["auto", "tv:NAME"]


class Normalize(nn.Module):
    """(x - mean) / std per channel, as a layer, so that the model's input stays in [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _with_norm(net: nn.Module, info: DatasetInfo) -> nn.Module:
    if info.mean is None:
        return net
    return nn.Sequential(Normalize(info.mean, info.std), net)


def _flat_dim(features: nn.Module, info: DatasetInfo) -> int:
    with torch.no_grad():
        out = features(torch.zeros(1, info.channels, info.size, info.size))
    if out.numel() == 0:
        raise ModelError(f"inputs of size {info.size}x{info.size} are too small for this model")
    return out.numel()


@register("mlp")
def mlp(info: DatasetInfo, width: int = 256) -> nn.Module:
    """Two hidden ReLU layers of ``width`` units."""
    d = info.channels * info.size * info.size
    return nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, info.num_classes))


def _cnn_small(info: DatasetInfo, bn: bool) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        return layers + [nn.ReLU()]
    # 8x8 inputs (digits) pool once; 28x28 and larger pool after each conv.
    pool_first = info.size >= 16
    layers = block(info.channels, 32) + ([nn.MaxPool2d(2)] if pool_first else [])
    layers += block(32, 64) + [nn.MaxPool2d(2), nn.Flatten()]
    features = nn.Sequential(*layers)
    return nn.Sequential(*features, nn.Linear(_flat_dim(features, info), 128), nn.ReLU(),
                         nn.Linear(128, info.num_classes))


@register("cnn-small")
def cnn_small(info: DatasetInfo) -> nn.Module:
    """Two 3x3 conv layers (32, 64 channels), max pooling, a 128-unit hidden layer."""
    return _cnn_small(info, bn=False)


@register("cnn-small-bn")
def cnn_small_bn(info: DatasetInfo) -> nn.Module:
    """``cnn-small`` with BatchNorm after each convolution."""
    return _cnn_small(info, bn=True)


@register("mnist-cnn")
def mnist_cnn(info: DatasetInfo) -> nn.Module:
    """The SAT paper's MNIST net: conv 64@8x8 s2 -> conv 128@6x6 s2 -> conv 128@5x5 -> linear."""
    if info.size < 20:
        raise ModelError(f"mnist-cnn needs inputs of at least 20x20 pixels, got {info.size}x{info.size}")
    features = nn.Sequential(nn.Conv2d(info.channels, 64, 8, stride=2, padding=3), nn.ReLU(),
                             nn.Conv2d(64, 128, 6, stride=2), nn.ReLU(),
                             nn.Conv2d(128, 128, 5), nn.ReLU(), nn.Flatten())
    return nn.Sequential(*features, nn.Linear(_flat_dim(features, info), info.num_classes))


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.drop = drop
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.drop:
            out = F.dropout(out, self.drop, self.training)
        return self.conv2(out) + skip


class _PreActNet(nn.Module):
    """Pre-activation ResNet body shared by PreAct ResNet-18 and WideResNet."""

    def __init__(self, info: DatasetInfo, widths: list[int], blocks: list[int], stem: int):
        super().__init__()
        self.stem = nn.Conv2d(info.channels, stem, 3, padding=1, bias=False)
        layers, cin = [], stem
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(_PreActBlock(cin, w, stride=(1 if i == 0 or j > 0 else 2)))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register("preact-resnet18")
def preact_resnet18(info: DatasetInfo) -> nn.Module:
    """PreAct ResNet-18 (He et al. 2016), the usual CIFAR adversarial-training baseline."""
    return _with_norm(_PreActNet(info, [64, 128, 256, 512], [2, 2, 2, 2], stem=64), info)


@register("wrn-34-10")
def wrn_34_10(info: DatasetInfo) -> nn.Module:
    """WideResNet-34-10 (Zagoruyko & Komodakis 2016), Madry's and TRADES' CIFAR model."""
    return _with_norm(_PreActNet(info, [160, 320, 640], [5, 5, 5], stem=16), info)


def _torchvision(name: str, info: DatasetInfo) -> nn.Module:
    import torchvision
    try:
        net = torchvision.models.get_model(name, weights=None, num_classes=info.num_classes)
    except (ValueError, KeyError) as e:
        raise ModelError(f"unknown torchvision model {name!r}") from e
    if info.channels != 3:
        raise ModelError(f"torchvision model {name!r} expects 3-channel inputs, the data have {info.channels}")
    return _with_norm(net, info)


def build_model(name: str = "auto", dataset: str | DatasetInfo = "digits", seed: int | None = None) -> nn.Module:
    """A freshly initialized model from the registry, shaped for ``dataset`` (a name or a ``DatasetInfo``).

    ``seed`` makes the initialization reproducible without touching the global RNG state.
    """
    info = dataset if isinstance(dataset, DatasetInfo) else dataset_info(dataset)
    if name == "auto":
        name = _AUTO.get(info.name, "cnn-small")
    if not name.startswith("tv:") and name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; choose from {', '.join(available_models())}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = _torchvision(name[3:], info) if name.startswith("tv:") else _REGISTRY[name](info)
    return net


def resolve_model_name(name: str, dataset: str) -> str:
    """The concrete registry name that ``auto`` stands for on ``dataset``."""
    return _AUTO.get(dataset.split(":")[0], "cnn-small") if name == "auto" else name


__all__ = ["build_model", "available_models", "register", "Normalize", "resolve_model_name", "DATASETS"]
