"""Pieces shared by the console scripts: one-line errors with exit status 2, argument types that refuse
nonsense numbers, output checks before any work, device choice, progress, interrupts that say how to resume."""
from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..constraints import Constraint, Interval, argparse_type, flag
from ..devices import DEVICE_HELP, resolve_device
from ..names import is_checkpoint_path
from ..distributed import World, finish, group_initialized, init_from_env
from ..errors import EXIT_REQUEUE, LandscapeError, ModelError, OutputError, Preempted

EXIT_BAD_INPUT = 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` as written: the description and the examples (epilog) keep their lines; an option's default
    is shown once, as "(default: X)", unless its help already speaks of its default or there is none to show
    (None, False, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS
                or not action.option_strings or isinstance(action, argparse._StoreConstAction)):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit status 2, and whose ``--help``
    keeps its examples as written (``HelpFormatter``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, except that a value that starts with a minus sign and a digit (``--max-memory -5GB``,
        ``--eps -0.1``) is taken as the option's value, so that it is refused for what it is instead of
        "expected one argument"."""
        argv = list(sys.argv[1:] if args is None else args)
        takes_value = {o for a in self._actions if a.nargs is None and a.option_strings for o in a.option_strings}
        out: list[str] = []
        i = 0
        while i < len(argv):
            tok = argv[i]
            if tok in takes_value and i + 1 < len(argv) and re.match(r"-\.?\d", argv[i + 1]):
                out.append(f"{tok}={argv[i + 1]}")
                i += 2
                continue
            out.append(tok)
            i += 1
        ns, extras = super().parse_known_args(out, namespace)
        global _OVERWRITE
        # what check_output's overwrite=None means: this command's --overwrite (None: it has no such flag),
        # from the command's own (first) parse; parsers it runs later (a study reading its steps) do not count
        if _OVERWRITE is _UNSET:
            _OVERWRITE = bool(ns.overwrite) if "overwrite" in vars(ns) else None
        return ns, extras

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


# --- argument types (argparse ``type=``): a bad number is a one-line usage error, before any work -----------

# options with no settings object behind them (a settings field's flag takes ``cli_types`` of its table)
positive_int = argparse_type(Interval(int, 1))
dpi = argparse_type(Interval(int, 10, 1200))  # a 6.4 x 4.8 in figure at 1200 dpi is 7680 x 5760 pixels


def cli_types(table: Mapping[str, Constraint], flags: Mapping[str, str] | None = None
              ) -> dict[str, Callable[[str], Any]]:
    """The argparse types of a settings table (``constraints``), by flag (``--batch-size`` for
    ``batch_size``, or as ``flags`` names it): ``set_types`` gives them to a parser, whose refusals then use
    the words the API's ``validate`` uses."""
    return {flag(field, flags): argparse_type(c) for field, c in table.items()}


def set_types(p: argparse.ArgumentParser, types: dict[str, Callable[[str], Any]]) -> argparse.ArgumentParser:
    """Give the options named in ``types`` (flag -> type, e.g. ``cli_types(CONSTRAINTS)``) their validating
    types, in one table per script; options the parser lacks are skipped. ``tests/test_constraints.py`` checks
    that no int/float option of any script is left without a table constraint, and that each is refused in
    the words of its API."""
    for action in p._actions:
        for opt in action.option_strings:
            if opt in types:
                action.type = types[opt]
    return p


def plain_name(text: str) -> str:
    """An argparse type for names joined to a folder (``--name``): no path separators, no ``..``."""
    from ..io import safe_name
    try:
        return safe_name(text, "name")
    except LandscapeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def is_figure_path(token: str) -> bool:
    """Whether ``token`` after ``--plot`` is the figure's path rather than the checkpoint argument (a
    ``*.pt``-like file or a ``robustbench:NAME`` source). Its format is checked later by ``check_output``."""
    return not (token.startswith("-") or ":" in token.split("/")[0]
                or is_checkpoint_path(token))


def is_folder_token(token: str) -> bool:
    """Whether ``token`` is the value of ``--resume DIR``: an existing folder, or a name that cannot be the
    checkpoint argument (no checkpoint suffix, no ``source:NAME``, not an existing file), so that a folder
    that does not exist gets "nothing to resume" rather than "unrecognized argument"."""
    if token.startswith("-"):
        return False
    p = Path(token)
    return p.is_dir() or not (is_checkpoint_path(p) or ":" in token or p.is_file())


def glue_optional_values(argv: Sequence[str], options: dict[str, Callable[[str], bool]]) -> list[str]:
    """``argv`` with each bare option of ``options`` (``--plot``, ``--resume``: an optional value) written
    ``--plot=`` when the next token is not a value its predicate accepts, so that argparse does not take the
    checkpoint in ``--plot runs/at/best.pt`` for the figure's path. Such options are declared with
    ``nargs="?", const=""``; the empty value means "the default place"."""
    out = list(argv)
    for i, tok in enumerate(out):
        if tok in options and not (i + 1 < len(out) and options[tok](out[i + 1])):
            out[i] = tok + "="
    return out


def default_plot_path(json_path: str | None, checkpoint: str, kind: str) -> str:
    """Where ``--plot`` with no PATH draws: beside ``--json`` (same name, .png), else ``STEM-KIND.png`` in the
    working folder (STEM: the checkpoint's file stem, or a ``robustbench:NAME`` source's name)."""
    if json_path:
        return str(Path(json_path).with_suffix(".png"))
    stem = Path(str(checkpoint).split(":")[-1]).stem or "checkpoint"
    return f"{stem}-{kind}.png"


# --- outputs: checked before the work ------------------------------------------------------------------

_UNSET = object()
_OVERWRITE: Any = _UNSET   # the running command's --overwrite (None: it has none); set by its first Parser


def _main_rank() -> bool:
    """Whether this process writes the outputs: not one of torchrun's other ranks (RANK > 0)."""
    try:
        return int(os.environ.get("RANK") or 0) == 0
    except ValueError:
        return True

def image_formats() -> tuple[str, ...]:
    """The file suffixes matplotlib can save (png, pdf, svg, jpg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase
    return tuple(sorted(FigureCanvasBase.get_supported_filetypes()))


def check_output(path: str | os.PathLike, what: str, suffixes: Sequence[str] | None = None,
                 folder: bool = False, inputs: Sequence[str | os.PathLike] = (), overwrite: bool | None = None,
                 lock: bool | None = None) -> Path:
    """Make sure ``path`` can be written before any work starts, and keep other processes off it, or raise
    ``OutputError`` / ``BusyError`` in one line:

    - it must not be one of the command's ``inputs`` nor a file no result may replace
      (``names.protected_reason``: a checkpoint, a run's files, a surface's state, or such a file in a folder
      this command holds for a run or a surface);
    - a file path must not be an existing folder nor a device or pipe, a folder path (``folder=True``) not an
      existing file, no parent may be a file, the suffix must be one of ``suffixes`` (without dots) when given,
      and the nearest existing folder must accept a new file (tried by creating and removing one, so it holds
      for root and read-only file systems too, where ``os.access`` says yes);
    - an existing file that landscape did not write (``io.written_by_landscape``: no mark of ours in it) is a
      user's and is refused unless ``overwrite``; our own earlier output is replaced, as a re-run should.
      ``overwrite=None``: the command's own ``--overwrite`` flag (``Parser`` records it), False without one.
    - locks: a file output is held (``io.hold_output``: ``.NAME.lock`` beside it) until the command ends, so a
      second process on the same ``--json``/``--plot``/``--out`` is refused at once, naming the first; a
      folder output is held the same way (``io.hold_folder``) with ``lock=True``. The ``cli`` wrapper
      releases them. Under torchrun only rank 0, which writes, holds them.

    Creates nothing that stays: the missing folders that hold a lock are removed at the end if nothing was
    written in them (``landscape.io`` makes missing folders for every output). Returns ``path``. Cost: a few
    system calls, and reading the head of an existing file (a JSON file: the whole of it)."""
    from ..io import hold_folder, hold_output, held_folders, written_by_landscape
    from ..names import protected_reason
    p = Path(path)
    if str(path) == "":
        raise OutputError(f"{what}: empty path")
    for src in inputs:
        if src is not None and str(src) and _same_file(p, Path(src)):
            raise OutputError(f"{what} {p} is also an input of this command; it would be replaced by the "
                              "output: write the output elsewhere")
    if not folder:
        reason = protected_reason(p, becoming=held_folders())
        if reason:
            raise OutputError(f"{what} {p} would replace a file that no result may replace: {reason}; "
                              "write the output elsewhere")
    if folder:
        if p.exists() and not p.is_dir():
            raise OutputError(f"{what} {p} exists and is not a folder")
        target = p
    else:
        if p.is_dir():
            raise OutputError(f"{what} {p} is a folder; give a file name")
        if p.exists() and not p.is_file():
            raise OutputError(f"{what} {p} is not a regular file (a device, pipe or socket); give a file name")
        if suffixes is not None and p.suffix.lower().lstrip(".") not in suffixes:
            raise OutputError(f"{what} {p}: unknown file type {p.suffix or '(no suffix)'}; use one of "
                              f"{', '.join('.' + x for x in suffixes)}")
        target = p.parent
    anc = target
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise OutputError(f"{what} {p}: {anc} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".landscape-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write {what} {p}: {anc} is not writable ({e.strerror or e})") from None
    if _main_rank():
        if folder and lock:
            hold_folder(p, what)
        elif not folder and lock is not False:
            hold_output(p, what)
    if not folder and p.is_file() and not written_by_landscape(p):
        flag = None if _OVERWRITE is _UNSET else _OVERWRITE
        allowed = flag if overwrite is None else overwrite
        if not allowed:
            how = "pass --overwrite to replace it" if flag is not None or overwrite is not None else "move it away"
            raise OutputError(f"{what} {p} exists and landscape did not write it (it carries no mark of ours); "
                              f"{how}, or write the output elsewhere")
    return p


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder (links followed where both exist, else as absolute
    paths: two outputs of one command given the same new name)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


def check_compatible(ck: Any, info: Any) -> None:
    """Refuse data the checkpoint's model cannot take: input channels, size and number of classes of the
    dataset ``info`` must match those the model was built for (``ck.info``). Cost: none."""
    mine = getattr(ck, "info", None)
    if mine is None or info is None:
        return
    have = (info.channels, info.size, info.size, info.num_classes)
    want = (mine.channels, mine.size, mine.size, mine.num_classes)
    if have != want:
        raise ModelError(f"{info.name} has {info.channels}x{info.size}x{info.size} inputs and {info.num_classes} "
                         f"classes, but the model in {ck.path} was built for {mine.name} "
                         f"({mine.channels}x{mine.size}x{mine.size}, {mine.num_classes} classes); "
                         "use a dataset of the same shape")


# --- interrupts -------------------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what to do next (the ``cli`` decorator prints it on the same line)."""


@contextmanager
def on_interrupt(hint: str | Callable[[], str]) -> Iterator[None]:
    """Turn a ``KeyboardInterrupt`` in the block into ``Interrupted(hint)`` (a callable is asked then)."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(hint() if callable(hint) else hint) from None


def resume_command(prog: str, argv: Sequence[str], drop: Sequence[str] = ("--overwrite",),
                   add: Sequence[str] = ("--resume",), values: dict[str, str] | None = None) -> str:
    """The command line that continues a run: ``argv`` without the flags in ``drop``, with those in ``add``,
    and each option in ``values`` set (appended when absent), shell-quoted."""
    toks = [t for t in argv if t not in drop]
    for opt, val in (values or {}).items():
        if not any(t == opt or t.startswith(opt + "=") for t in toks):
            toks += [opt, str(val)]
    toks += [a for a in add if a not in toks]
    return shlex.join([prog, *toks])


def _memory_hint(e: BaseException) -> str:
    where = "GPU" if "cuda" in str(e).lower() or "gpu" in str(e).lower() else "memory"
    return (f"out of {where} ({' '.join(str(e).split())[:100] or type(e).__name__}); use fewer --samples, a "
            "smaller --batch-size or grid, or --device cpu")


def cli(prog: str) -> Callable[[Callable[[Sequence[str] | None], int | None]], Callable[..., int]]:
    """Decorate a ``main(argv)``: a ``LandscapeError`` becomes ``prog: error: ...`` and exit status 2, and so
    does running out of memory (CPU or GPU: one line saying what to reduce); any other exception is a bug and
    keeps its traceback. Ctrl-C is one line, with the ``Interrupted`` hint (how to resume), and exit 130. A
    process group the command joined (under torchrun) is left at the end, whatever happened; one the caller
    had already joined is left alone. The outputs that ``check_output`` locked are released at the end."""
    def deco(fn):
        @functools.wraps(fn)
        def main(argv: Sequence[str] | None = None) -> int:
            from ..io import release_held
            global _OVERWRITE
            had_group = group_initialized()
            code = 1     # a bug's exception keeps its traceback; the group is left without waiting
            _OVERWRITE = _UNSET
            try:
                code = fn(argv) or 0
            except LandscapeError as e:
                msg = " ".join(str(e).split())
                print(f"{prog}: error: {msg}", file=sys.stderr)
                code = EXIT_BAD_INPUT
            except (MemoryError, torch.OutOfMemoryError) as e:
                print(f"{prog}: error: {_memory_hint(e)}", file=sys.stderr)
                code = EXIT_BAD_INPUT
            except Preempted as e:
                print(f"{prog}: {' '.join(str(e).split())}", file=sys.stderr)
                code = EXIT_REQUEUE
            except KeyboardInterrupt as e:
                hint = " ".join(str(e).split())
                print(f"{prog}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
                code = 130
            finally:
                release_held()   # the outputs check_output locked (io.hold_output / hold_folder)
                _OVERWRITE = _UNSET
                if not had_group:
                    finish(clean=code == 0, refused=code == EXIT_BAD_INPUT)
            return code
        return main
    return deco


def resolve_world(name: str = "auto") -> tuple[World, torch.device]:
    """The device as ``resolve_device``, after joining the process group when launched by ``torchrun``
    (gloo on CPU; nccl with each rank on ``cuda:LOCAL_RANK``). Single process: ``World(0, 1)``."""
    return init_from_env(resolve_device(name))


TORCHRUN_HELP = """Several processes: run the same command under PyTorch's launcher, e.g.
  torchrun --standalone --nproc-per-node 2 $(which {prog}) ARGS
(gloo on CPU; on GPUs nccl with one GPU per process). Every process must see the checkpoint and the data;
rank 0 prints and writes the results."""


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


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
                                     "cifar10), or another dataset with the same input shape (a robustbench:NAME "
                                     "model is still looked up under the RobustBench dataset of that shape)")
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
