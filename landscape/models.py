"""Model registry by name (``build_model("cnn-small", dataset="digits")``), and your own classes.

Inputs are always in [0, 1]; when a model normalizes its inputs it does so with a ``Normalize`` layer
inside the model, so attacks and analysis see the same function a user trains.

Besides registry names, ``build_model`` takes ``FILE.py:CLASS`` or ``package.module:CLASS``: your own
``nn.Module`` (or a function returning one), built with ``kwargs`` (default: no arguments). It must map a
batch of the dataset's inputs in [0, 1] to ``num_classes`` logits, normalizing inside ``forward``; one
forward pass on a dummy batch checks that. Importing ``FILE.py`` runs that file's code (it is yours).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import DATASETS, DatasetInfo, dataset_info
from .errors import ModelError

ModelFactory = Callable[[DatasetInfo], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}
_AUTO = {"digits": "cnn-small", "mnist": "cnn-small", "fashion-mnist": "cnn-small",
         "cifar10": "preact-resnet18", "cifar100": "preact-resnet18", "imagenette": "tv:resnet18",
         "synthetic-cifar10": "preact-resnet18"}


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
    """Pre-activation block; the 1x1 projection (when shapes change) is applied to the activated input and
    is stored as ``shortcut_name`` (wrapped in an ``nn.Sequential`` when ``seq_shortcut``), so that the same
    block serves our registry and RobustBench's key names (``convShortcut``, ``shortcut.0``)."""

    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.0, shortcut_name: str = "shortcut",
                 seq_shortcut: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.drop = drop
        self._shortcut_name = shortcut_name
        proj = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None
        setattr(self, shortcut_name, nn.Sequential(proj) if proj is not None and seq_shortcut else proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        proj = getattr(self, self._shortcut_name)
        skip = proj(out) if proj is not None else x
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


def is_user_arch(name: str) -> bool:
    """True for ``FILE.py:CLASS`` / ``package.module:CLASS`` (a user's class), False for registry names."""
    return ":" in name and not name.startswith("tv:")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _where(e: BaseException, path: Path) -> str:
    """`` (FILE:LINE)`` of the deepest frame of ``e`` inside ``path``, for a one-line error."""
    if isinstance(e, SyntaxError) and e.lineno:
        return f" ({path.name}:{e.lineno})"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename) == path]
    return f" ({path.name}:{frames[-1].lineno})" if frames else ""


def _import_file(path: Path) -> Any:
    """Execute ``path`` as a fresh module (its folder on ``sys.path`` meanwhile, for its own imports)."""
    if not path.is_file():
        raise ModelError(f"--arch: no file {path}")
    name = "landscape_user_arch_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"--arch: cannot import {path} (not a Python file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's own code failed: one line, with where
        sys.modules.pop(name, None)
        raise ModelError(f"--arch: importing {path} failed{_where(e, path.resolve())}: {_one_line(e)}") from e
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def import_arch(spec: str) -> Callable[..., nn.Module]:
    """The class (or factory function) that ``FILE.py:CLASS`` or ``package.module:CLASS`` names.

    Cost: imports the file or module, which runs its top-level code."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelError(f"--arch {spec!r}: expected FILE.py:CLASS or package.module:CLASS")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target).expanduser())
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise ModelError(f"--arch {spec}: cannot import {target} ({e}); install it, put it on PYTHONPATH, "
                             f"or give a file: path/to/file.py:{attr}") from e
        except Exception as e:
            raise ModelError(f"--arch {spec}: importing {target} failed: {_one_line(e)}") from e
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__)
        raise ModelError(f"--arch {spec}: {target} has no class {attr!r}"
                         + (f"; it defines {', '.join(found)}" if found else ""))
    return obj


def check_logits(model: nn.Module, info: DatasetInfo, what: str) -> None:
    """One forward pass of a dummy batch of 2 inputs of ``info``'s shape (in eval mode, no grad, on the
    model's device): the output must be ``(2, num_classes)`` logits, else a one-line ``ModelError``."""
    p = next(iter(model.parameters()), None)
    shape = (2, info.channels, info.size, info.size)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(p.device if p is not None else "cpu")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise ModelError(f"{what} fails on a dummy {tuple(shape)} batch of {info.name} inputs: "
                         f"{_one_line(e)[:300]}") from e
    finally:
        model.train(was)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (2, info.num_classes):
        raise ModelError(f"{what} maps a {tuple(shape)} batch of {info.name} inputs to {got}; expected "
                         f"(2, {info.num_classes}) logits (inputs are in [0, 1]; normalize inside forward)")


def _build_user(name: str, info: DatasetInfo, kwargs: dict) -> nn.Module:
    factory = import_arch(name)
    try:
        net = factory(**kwargs)
    except Exception as e:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ModelError(f"--arch {name}: {name.rpartition(':')[2]}({args}) failed: {_one_line(e)}") from e
    if not isinstance(net, nn.Module):
        raise ModelError(f"--arch {name} made a {type(net).__name__}, not a torch.nn.Module")
    check_logits(net, info, f"--arch {name}")
    return net


def build_model(name: str = "auto", dataset: str | DatasetInfo = "digits", seed: int | None = None,
                kwargs: dict | None = None) -> nn.Module:
    """A freshly initialized model, shaped for ``dataset`` (a name or a ``DatasetInfo``): a registry name,
    or ``FILE.py:CLASS`` / ``package.module:CLASS`` built as ``CLASS(**kwargs)`` and checked to map the
    dataset's inputs to ``num_classes`` logits (one forward pass of 2 dummy inputs).

    ``seed`` makes the initialization reproducible without touching the global RNG state.
    """
    info = dataset if isinstance(dataset, DatasetInfo) else dataset_info(dataset)
    if name == "auto":
        name = _AUTO.get(info.name, "cnn-small")
    user = is_user_arch(name)
    if kwargs and not user:
        raise ModelError(f"arch_kwargs (--arch-kwargs) apply to FILE.py:CLASS and package.module:CLASS "
                         f"architectures, not to the registry model {name!r}")
    if not user and not name.startswith("tv:") and name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; choose from {', '.join(available_models())}, "
                         "FILE.py:CLASS or package.module:CLASS")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if user:
            return _build_user(name, info, dict(kwargs or {}))
        net = _torchvision(name[3:], info) if name.startswith("tv:") else _REGISTRY[name](info)
    return net


def resolve_model_name(name: str, dataset: str) -> str:
    """The concrete registry name that ``auto`` stands for on ``dataset``."""
    return _AUTO.get(dataset.split(":")[0], "cnn-small") if name == "auto" else name


__all__ = ["build_model", "available_models", "register", "Normalize", "resolve_model_name", "DATASETS",
           "is_user_arch", "import_arch", "check_logits"]
