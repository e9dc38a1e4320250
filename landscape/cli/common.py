"""Pieces shared by the console scripts: one-line errors with exit status 2, device choice, output files."""
from __future__ import annotations

import argparse
import functools
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from ..distributed import World, finish, group_initialized, init_from_env
from ..errors import LandscapeError

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def cli(prog: str) -> Callable[[Callable[[Sequence[str] | None], int | None]], Callable[..., int]]:
    """Decorate a ``main(argv)``: a ``LandscapeError`` becomes ``prog: error: ...`` and exit status 2; a
    process group the command joined (under torchrun) is left at the end, whatever happened; one the caller
    had already joined is left alone."""
    def deco(fn):
        @functools.wraps(fn)
        def main(argv: Sequence[str] | None = None) -> int:
            had_group = group_initialized()
            try:
                code = fn(argv) or 0
            except LandscapeError as e:
                msg = " ".join(str(e).split())
                print(f"{prog}: error: {msg}", file=sys.stderr)
                code = EXIT_BAD_INPUT
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                code = 130
            finally:
                if not had_group:
                    finish()
            return code
        return main
    return deco


@contextmanager
def progress(desc: str, unit: str, total: int | None = None, show: bool = True,
             leave: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr (hidden when stderr is not a terminal, or ``show`` is False); yields the
    ``callback(done, total)`` that the analysis functions call."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if show else True, leave=leave)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh() if done == total else bar.update(0)
    try:
        yield update
    finally:
        bar.close()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ``LandscapeError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise LandscapeError(f"unknown device {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LandscapeError("--device cuda was asked for but no CUDA device is available")
    return dev


def resolve_world(name: str = "auto") -> tuple[World, torch.device]:
    """The device as ``resolve_device``, after joining the process group when launched by ``torchrun``
    (gloo on CPU; nccl with each rank on ``cuda:LOCAL_RANK``). Single process: ``World(0, 1)``."""
    return init_from_env(resolve_device(name))


TORCHRUN_HELP = """Several processes: run the same command under PyTorch's launcher, e.g.
  torchrun --standalone --nproc-per-node 2 $(which {prog}) ARGS
(gloo on CPU; on GPUs nccl with one GPU per process). Every process must see the checkpoint and the data;
rank 0 prints and writes the results."""


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA when available)")


def _json_object(text: str) -> dict:
    """argparse type: a JSON object (``--arch-kwargs '{"depth": 34}'``)."""
    import json
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object like '{\"depth\": 34}'")
    return value


def add_checkpoint_source(p: argparse.ArgumentParser) -> None:
    """CKPT (any source that ``landscape.checkpoint.load_checkpoint`` resolves), what a foreign checkpoint
    needs (--arch, --arch-kwargs, --dataset), RobustBench's --threat-model / --model-dir, and where data live.
    Pass the new options on with ``**source_options(args)``."""
    p.add_argument("checkpoint", metavar="CKPT",
                   help="a landscape checkpoint (.pt), a foreign state_dict (.pt, .pth, .safetensors; needs --arch "
                        "and --dataset), or robustbench:NAME (RobustBench's model zoo)")
    p.add_argument("--arch", help="architecture of a foreign state_dict: a registry name (landscape.available_models()"
                                  "), FILE.py:CLASS or package.module:CLASS (your nn.Module; inputs are in [0, 1], "
                                  "so it must normalize inside forward)")
    p.add_argument("--arch-kwargs", type=_json_object, metavar="JSON",
                   help="keyword arguments for --arch CLASS, e.g. '{\"depth\": 34}' (default: none)")
    p.add_argument("--dataset", help="dataset of a foreign checkpoint (input shape, classes; robustbench: default "
                                     "cifar10), or another dataset with the same input shape")
    p.add_argument("--threat-model", default="Linf", help="robustbench:NAME: Linf, L2 or corruptions")
    p.add_argument("--model-dir", default="./models",
                   help="robustbench:NAME: RobustBench's model folder (its layout DIR/DATASET/THREAT/NAME.pt)")
    p.add_argument("--data-dir", help="where datasets live (default: $LANDSCAPE_DATA or ./data)")
    p.add_argument("--download", action="store_true",
                   help="allow downloads: the dataset (torchvision) and a robustbench:NAME model")


def source_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``load_checkpoint`` that ``add_checkpoint_source`` adds beyond arch/dataset."""
    return {"arch_kwargs": args.arch_kwargs, "threat_model": args.threat_model, "model_dir": args.model_dir,
            "download": args.download}
