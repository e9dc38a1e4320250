"""A study file (TOML) read and checked whole before anything runs: cells (the trained models, or the models
given), steps (console commands), the reference cell of each cell, the resources per step and the claims to
judge. ``load_study`` returns a ``Study``; every mistake is one ``ConfigError`` naming the key.

Schema (docs/study.md has it in full):

    [study]     name (required), out (default ./NAME), description, reference = {method = "at"}
    [train]     any landscape-train option by its long name
    [method.NAME]  landscape-train options for one method only (e.g. [method.trades] beta = 6); with
                method = "h-sat" the label NAME trains that method (a variant: [method.h-sat-affine])
    [grid] / [[grid]]  axes -> lists of values (method, eps, seed, or any landscape-train option); every
                combination is a cell; several [[grid]] tables are joined (e.g. AT alone at more eps)
    [models]    checkpoints = [...] (files or robustbench:NAME) instead of [train] and [grid]; its other keys
                are source options (dataset, arch, model-dir, threat-model, ...) of every analysis
    [[analysis]]  step = eval | spectrum | surface; name; checkpoint ("{best}" default, "{reference}");
                only / skip = {axis = [values]}; resources = {...}; any option of that console script;
                values may hold {best}, {reference}, {cell} (the cell's folder) and an axis value,
                alone or scaled: {eps}, {eps/4}, {eps*2}, {seed}, {method}
    [resources] cpus, gpus, time, mem, partition, account, sbatch = [...], torchrun (GPUs per training),
                device; [resources.train] / [resources.eval] / ... per step kind
    [estimate]  sample-pass-ms: the cost of one forward+backward pass of one sample on the target device
    [[claims]]  name, metric, a = {...}, b = {...}, expect = "above"|"below"|"equal"; or
                trend = "increasing"|"decreasing" along = "eps" where = {...}
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, LandscapeError
from ..io import safe_name
from .scripts import ANALYSES, PATH_OPTIONS, SCRIPTS, check_argv, format_value, given_options, options_argv

TOP_KEYS = ("study", "train", "method", "grid", "models", "analysis", "resources", "estimate", "claims")
STUDY_KEYS = ("name", "out", "description", "reference")
STEP_KEYS = ("step", "name", "checkpoint", "only", "skip", "resources")
RESOURCE_KEYS = ("cpus", "gpus", "time", "mem", "partition", "account", "sbatch", "torchrun", "device")
CLAIM_KEYS = ("name", "metric", "a", "b", "expect", "trend", "along", "where")
EXPECT = ("above", "below", "equal")
TRENDS = ("increasing", "decreasing")
PLACEHOLDERS = ("{best}", "{reference}", "{cell}")
TRAIN_RUN = "train"          # a cell's run folder: cells/CELL/train (landscape-train --runs-dir cells/CELL --name train)


@dataclass(frozen=True)
class Step:
    """One console command per cell: a training, or an analysis of the cell's checkpoint."""
    name: str
    kind: str                                   # train | eval | spectrum | surface
    options: dict = field(default_factory=dict)  # the user's options, in the file's order
    checkpoint: str = "{best}"
    only: dict = field(default_factory=dict)
    skip: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)

    def applies(self, cell: "Cell") -> bool:
        """Whether this step runs on ``cell`` (its ``only`` and ``skip`` filters)."""
        def match(flt: dict) -> bool:
            return all(_same(cell.values.get(k), vs) for k, vs in flt.items())
        return (not self.only or match(self.only)) and not (self.skip and match(self.skip))

    @property
    def uses_reference(self) -> bool:
        return "{reference}" in self.checkpoint or any("{reference}" in str(v) for v in _flat(self.options))


@dataclass(frozen=True)
class Cell:
    """One model of the study: its axis values (method, eps, seed, ...) or the checkpoint it analyzes."""
    name: str
    values: dict
    source: str | None = None       # a given checkpoint (no training): a path or robustbench:NAME
    reference: str | None = None    # the cell whose checkpoint {reference} names

    @property
    def trained(self) -> bool:
        return self.source is None


@dataclass(frozen=True)
class Claim:
    name: str
    metric: str
    a: dict = field(default_factory=dict)
    b: dict = field(default_factory=dict)
    expect: str | None = None
    trend: str | None = None
    along: str | None = None
    where: dict = field(default_factory=dict)


@dataclass
class Study:
    """A checked study: ``cells`` x ``steps``, with the argv of every (cell, step) (``command``)."""
    name: str
    file: Path
    out: Path
    cells: list[Cell]
    steps: list[Step]
    train: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)
    source_options: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    estimate: dict = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    description: str = ""
    axes: tuple[str, ...] = ()
    reference: dict = field(default_factory=dict)     # the axis values of reference cells ({method: "at"})

    # --- where things are (relative to ``out``: every command runs with ``out`` as its working folder) ---
    def cell_dir(self, cell: Cell | str) -> str:
        return f"cells/{cell if isinstance(cell, str) else cell.name}"

    def best(self, cell: Cell) -> str:
        """The checkpoint a cell's analyses read: its training's best.pt, or the checkpoint given."""
        if cell.source is not None:
            return cell.source
        return f"{self.cell_dir(cell)}/{TRAIN_RUN}/best.pt"

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise ConfigError(f"no cell {name!r} in study {self.name!r}")

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise ConfigError(f"no step {name!r} in study {self.name!r}; its steps: "
                          f"{', '.join(s.name for s in self.steps)}")

    def steps_of(self, cell: Cell) -> list[Step]:
        return [s for s in self.steps if (s.kind != "train" or cell.trained) and s.applies(cell)]

    def pairs(self) -> list[tuple[Cell, Step]]:
        """Every (cell, step) that runs, cell by cell, training first."""
        return [(c, s) for c in self.cells for s in self.steps_of(c)]

    def outputs(self, cell: Cell, step: Step) -> dict[str, str]:
        """The files a step writes (relative to ``out``): its result JSON, and the folders it keeps."""
        d = self.cell_dir(cell)
        if step.kind == "train":
            return {"run": f"{d}/{TRAIN_RUN}", "result": f"{d}/{TRAIN_RUN}/best.pt"}
        out = {"result": f"{d}/{step.name}.json"}
        if step.kind == "surface":
            out["folder"] = f"{d}/{step.name}"
        if step.kind == "eval" and (step.options.get("autoattack") or step.options.get("audit")) \
                and step.options.get("autoattack") is not False:
            out["state"] = f"{d}/{step.name}-autoattack"
        return out

    def command(self, cell: Cell, step: Step) -> list[str]:
        """The exact console command of ``step`` on ``cell``, to be run in ``out`` (as ``plan`` prints it)."""
        script = SCRIPTS[step.kind][0]
        if step.kind == "train":
            over = dict(self.methods.get(str(cell.values.get("method")), {}))
            values = {**cell.values, **({"method": over.pop("method")} if "method" in over else {})}
            axes = [w for k, v in values.items() for w in (f"--{k}", format_value(v))]
            opts = {k: self._fill(v, cell) for k, v in {**self.train, **over}.items()}
            device = self.resources_of(step).get("device")
            if device and "device" not in opts:
                opts["device"] = device
            return [script, *axes, *options_argv("train", self._paths(opts), f"[train] of cell {cell.name}"),
                    "--runs-dir", self.cell_dir(cell), "--name", TRAIN_RUN]
        opts = dict(self.source_options)
        if cell.trained and "seed" not in step.options and "seed" in cell.values:
            opts["seed"] = cell.values["seed"]      # an analysis is seeded like its model
        opts.update(step.options)
        opts = {k: self._fill(v, cell) for k, v in self._paths(opts).items()}
        device = self.resources_of(step).get("device")
        if device and "device" not in opts:
            opts["device"] = device
        ck = step.checkpoint
        if not any(p in ck for p in PLACEHOLDERS) and not ck.startswith("robustbench:"):
            ck = _rel(ck, self.file.parent, self.out)      # a literal path: from the study file's folder
        argv = [script, self._fill(ck, cell), *options_argv(step.kind, opts, f"[[analysis]] {step.name}")]
        outs = self.outputs(cell, step)
        if step.kind == "surface":
            argv += ["--out", outs["folder"]]
        argv += ["--json", outs["result"]]
        if "state" in outs:
            argv += ["--autoattack-state", outs["state"]]
        return argv

    def digest(self, cell: Cell, step: Step) -> str:
        """What a step's result depends on: its command and, for an analysis, the digests of the trainings
        whose checkpoints it reads (a retrained model invalidates its analyses)."""
        parts = [json.dumps(self.command(cell, step))]
        if step.kind != "train":
            for c in [cell.name] + ([cell.reference] if cell.reference else []):
                src = self.cell(c)
                if src.trained and any(s.kind == "train" for s in self.steps):
                    if c == cell.name or step.uses_reference:
                        parts.append(self.digest(src, self.train_step))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def train_step(self) -> Step:
        return next(s for s in self.steps if s.kind == "train")

    def resources_of(self, step: Step) -> dict:
        """The resources of a step: [resources], then [resources.KIND], then the step's own."""
        base = {k: v for k, v in self.resources.items() if k in RESOURCE_KEYS}
        return {**base, **self.resources.get(step.kind, {}), **step.resources}

    # --- helpers ----------------------------------------------------------------------------------------
    def _paths(self, opts: Mapping[str, Any]) -> dict:
        """Path options given relative to the study file, rewritten relative to ``out``."""
        return {k: (_rel(v, self.file.parent, self.out) if k in PATH_OPTIONS and isinstance(v, str)
                    and not any(p in v for p in PLACEHOLDERS) else v) for k, v in opts.items()}

    def _fill(self, value: Any, cell: Cell) -> Any:
        """Placeholders: {best}, {reference}, {cell}, and an axis value, alone or scaled: {eps}, {eps/4},
        {eps*2}, {seed}, {method}."""
        if not isinstance(value, str):
            return value
        if "{reference}" in value and cell.reference is None:
            raise ConfigError(f"cell {cell.name} has no reference cell for {{reference}}")
        value = (value.replace("{best}", self.best(cell)).replace("{cell}", self.cell_dir(cell))
                 .replace("{reference}", self.best(self.cell(cell.reference)) if cell.reference else ""))

        def axis(m: re.Match) -> str:
            name, op, num = m.group(1), m.group(2), m.group(3)
            if name not in cell.values:
                raise ConfigError(f"{{{m.group(0)[1:-1]}}}: {name!r} is not an axis of cell {cell.name} "
                                  f"({', '.join(cell.values)})")
            v = cell.values[name]
            if op is None:
                return format_value(v)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(f"{{{m.group(0)[1:-1]}}}: axis {name!r} of cell {cell.name} is not a number")
            return format_value(float(v) * float(num) if op == "*" else float(v) / float(num))
        return re.sub(r"\{([A-Za-z][\w-]*)(?:([*/])(\d+(?:\.\d*)?))?\}", axis, value)


def _rel(path: str, base: Path, out: Path) -> str:
    """``path`` (relative to the study file's folder ``base``, or absolute) as seen from ``out``."""
    if path.startswith(("robustbench:",)) or os.path.isabs(path):
        return path
    return os.path.relpath((base / path).resolve(), out.resolve())


def _flat(obj: Any) -> list:
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _flat(x)]
    if isinstance(obj, (list, tuple)):
        return [v for x in obj for v in _flat(x)]
    return [obj]


def _same(value: Any, wanted: Any) -> bool:
    """``value`` is one of ``wanted`` (a value or a list); numbers compare as numbers."""
    wanted = wanted if isinstance(wanted, list) else [wanted]
    for w in wanted:
        if isinstance(value, (int, float)) and isinstance(w, (int, float)) and not isinstance(value, bool):
            if abs(float(value) - float(w)) <= 1e-12 * max(1.0, abs(float(w))):
                return True
        elif value == w:
            return True
    return False


def _table(doc: Mapping, key: str, where: str) -> dict:
    v = doc.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: '{key}' must be a table ([{key}]), got {type(v).__name__}")
    return v


def _unknown(table: Mapping, allowed: Sequence[str], where: str) -> None:
    bad = [k for k in table if k not in allowed]
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}; allowed: {', '.join(allowed)}")


def _str(table: Mapping, key: str, where: str, default: str | None = None) -> str | None:
    v = table.get(key, default)
    if v is not None and not isinstance(v, str):
        raise ConfigError(f"{where}: '{key}' must be a string, got {v!r}")
    return v


def cell_name(values: Mapping[str, Any]) -> str:
    """METHOD-epsEPS-sSEED, then -KEYVALUE for every other axis (e.g. at-eps0.3-s0-lr0.05)."""
    parts = [str(values["method"])] if "method" in values else []
    if "eps" in values:
        parts.append(f"eps{values['eps']:g}")
    if "seed" in values:
        parts.append(f"s{values['seed']}")
    parts += [f"{k}{format_value(v) if not isinstance(v, float) else format(v, 'g')}"
              for k, v in values.items() if k not in ("method", "eps", "seed")]
    return "-".join(parts)


def _grid_cells(doc: Mapping, path: Path) -> tuple[list[dict], tuple[str, ...]]:
    grids = doc.get("grid")
    if grids is None:
        raise ConfigError(f"{path}: a study with [train] needs a [grid] (at least: method = [...])")
    grids = [grids] if isinstance(grids, dict) else grids
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ConfigError(f"{path}: [grid] must be a table of axes (or [[grid]] tables)")
    cells: list[dict] = []
    axes: list[str] = []
    for i, g in enumerate(grids):
        where = "[grid]" if len(grids) == 1 else f"[[grid]] {i + 1}"
        if "method" not in g:
            raise ConfigError(f"{where}: 'method' is missing (the methods to train, e.g. method = [\"at\"])")
        lists = {}
        for k, v in g.items():
            v = v if isinstance(v, list) else [v]
            if not v:
                raise ConfigError(f"{where}: axis {k!r} is empty; give it at least one value")
            if any(isinstance(x, (dict, list)) for x in v):
                raise ConfigError(f"{where}: axis {k!r} holds a table or list; give plain values")
            if len({json.dumps(x) for x in v}) < len(v):
                raise ConfigError(f"{where}: axis {k!r} repeats a value: {v!r}")
            lists[k] = v
            if k not in axes:
                axes.append(k)
        lists.setdefault("seed", [0])
        order = ["method", "eps", "seed", *[k for k in lists if k not in ("method", "eps", "seed")]]
        keys = [k for k in order if k in lists]
        for combo in itertools.product(*(lists[k] for k in keys)):
            cells.append(dict(zip(keys, combo)))
    if "seed" not in axes:
        axes.append("seed")
    return cells, tuple(axes)


def _resources(table: Any, where: str, nested: bool) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {table!r}")
    allowed = (*RESOURCE_KEYS, *(SCRIPTS if nested else ()))
    _unknown(table, allowed, where)
    for k, v in table.items():
        if k in SCRIPTS:
            _resources(v, f"[resources.{k}]", False)
        elif k in ("cpus", "gpus", "torchrun") and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"{where}: '{k}' must be a whole number >= 0, got {v!r}")
        elif k == "time" and not (isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool) and v > 0)):
            raise ConfigError(f"{where}: 'time' is minutes (a number) or SLURM's \"D-HH:MM:SS\", got {v!r}")
        elif k == "sbatch" and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise ConfigError(f"{where}: 'sbatch' is a list of extra #SBATCH lines, got {v!r}")
        elif k in ("mem", "partition", "account", "device") and not isinstance(v, str):
            raise ConfigError(f"{where}: '{k}' must be a string, got {v!r}")
    return table


def _claims(doc: Mapping, axes: Sequence[str]) -> list[Claim]:
    raw = doc.get("claims", [])
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise ConfigError("[[claims]] must be tables")
    out = []
    for i, c in enumerate(raw):
        where = f"[[claims]] {i + 1}" + (f" ({c['name']})" if isinstance(c.get("name"), str) else "")
        _unknown(c, CLAIM_KEYS, where)
        for k in ("name", "metric"):
            if not isinstance(c.get(k), str) or not c[k]:
                raise ConfigError(f"{where}: '{k}' is required (a string)")
        for k in ("a", "b", "where"):
            if k in c and not isinstance(c[k], dict):
                raise ConfigError(f"{where}: '{k}' must be a table of axis values, e.g. {{method = \"at\"}}")
            for ax in c.get(k, {}):
                if ax not in axes:
                    raise ConfigError(f"{where}: {k}.{ax} is not an axis of the study ({', '.join(axes)})")
        if "trend" in c:
            if c["trend"] not in TRENDS or c.get("along") not in axes or "a" in c or "b" in c or "expect" in c:
                raise ConfigError(f"{where}: a trend claim is trend = \"increasing\"|\"decreasing\", along = an "
                                  f"axis ({', '.join(axes)}), where = {{...}}")
        else:
            if "a" not in c or "b" not in c or c.get("expect") not in EXPECT:
                raise ConfigError(f"{where}: a comparison claim needs a = {{...}}, b = {{...}} and expect = "
                                  f"{' | '.join(EXPECT)}")
        out.append(Claim(**{k: c[k] for k in CLAIM_KEYS if k in c}))
    return out


def load_study(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Study:
    """Read and check a study file; ``out`` overrides ``[study] out``. Cost: parses every command with its
    console script's parser (no model, no data is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    _unknown(doc, TOP_KEYS, str(path))
    st = _table(doc, "study", str(path))
    _unknown(st, STUDY_KEYS, "[study]")
    name = _str(st, "name", "[study]")
    if not name:
        raise ConfigError("[study]: 'name' is required (a plain name: it names the study's folder)")
    safe_name(name, "[study] name")
    base = path.parent
    out_dir = Path(out) if out is not None else Path(_str(st, "out", "[study]", "") or name)
    if out is None and st.get("out") and not Path(st["out"]).is_absolute():
        out_dir = base / st["out"]
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"[study] out: {out_dir} is a file, not a folder")
    reference = st.get("reference", None)
    if reference is not None and not isinstance(reference, dict):
        raise ConfigError("[study] reference must be a table of axis values, e.g. reference = {method = \"at\"}")

    if "train" in doc and "models" in doc:
        raise ConfigError(f"{path}: a study either trains ([train] and [grid]) or analyzes given models "
                          "([models]), not both")
    if "models" not in doc and "train" not in doc:
        raise ConfigError(f"{path}: no [train] table (models to train) and no [models] table (models given)")
    steps: list[Step] = []
    cells: list[Cell] = []
    train = methods = source = {}
    axes: tuple[str, ...] = ()
    if "train" in doc:
        train = _table(doc, "train", str(path))
        methods = _table(doc, "method", str(path))
        if "grid" not in doc:
            raise ConfigError(f"{path}: a study with [train] needs a [grid] (at least: method = [...])")
        values, axes = _grid_cells(doc, path)
        for m, over in methods.items():
            if not isinstance(over, dict):
                raise ConfigError(f"[method.{m}] must be a table of landscape-train options")
            if not any(v.get("method") == m for v in values):
                raise ConfigError(f"[method.{m}]: no cell of the grid trains {m!r}")
            if "method" in over and not isinstance(over["method"], str):
                raise ConfigError(f"[method.{m}]: 'method' (the landscape-train method this label trains) must be "
                                  "a string")
        steps.append(Step(name="train", kind="train", resources=dict(doc.get("resources", {}).get("train", {}))
                          if isinstance(doc.get("resources"), dict) else {}))
        names = [cell_name(v) for v in values]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ConfigError(f"[grid]: the cell {dup} comes twice (two [[grid]] tables overlap)")
        cells = [Cell(n, v) for n, v in zip(names, values)]
    else:
        models = _table(doc, "models", str(path))
        given = models.get("checkpoints")
        if not isinstance(given, list) or not given or not all(isinstance(g, str) and g for g in given):
            raise ConfigError("[models]: 'checkpoints' must be a non-empty list of checkpoint files or "
                              "robustbench:NAME")
        source = {k: v for k, v in models.items() if k != "checkpoints"}
        seen: dict[str, str] = {}
        for g in given:
            n = g.split(":", 1)[1] if g.startswith("robustbench:") else Path(g).stem
            n = n.replace(" ", "_")
            if n in seen:
                raise ConfigError(f"[models]: {g!r} and {seen[n]!r} would both be cell {n!r}")
            seen[n] = g
            src = g if g.startswith("robustbench:") else _rel(g, base, out_dir)
            cells.append(Cell(n, {"model": n}, source=src))
        axes = ("model",)
    # analyses
    raw = doc.get("analysis", [])
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise ConfigError("[[analysis]] must be a list of tables ([[analysis]] with step = ...)")
    counts: dict[str, int] = {}
    for i, a in enumerate(raw):
        where = f"[[analysis]] {i + 1}"
        kind = a.get("step")
        if kind not in ANALYSES:
            raise ConfigError(f"{where}: 'step' must be one of {', '.join(ANALYSES)}, got {kind!r}")
        counts[kind] = counts.get(kind, 0) + 1
        sname = a.get("name") or (kind if counts[kind] == 1 else f"{kind}-{counts[kind]}")
        if not isinstance(sname, str):
            raise ConfigError(f"{where}: 'name' must be a string")
        safe_name(sname, f"{where} name")
        if sname in {s.name for s in steps}:
            raise ConfigError(f"{where}: two steps are named {sname!r}; give one a 'name'")
        where = f"[[analysis]] {sname}"
        for k in ("only", "skip"):
            flt = a.get(k, {})
            if not isinstance(flt, dict):
                raise ConfigError(f"{where}: '{k}' must be a table of axis values, e.g. {{method = [\"at\"]}}")
            for ax in flt:
                if ax not in axes:
                    raise ConfigError(f"{where}: {k}.{ax} is not an axis of the study ({', '.join(axes)})")
        ck = a.get("checkpoint", "{best}")
        if not isinstance(ck, str):
            raise ConfigError(f"{where}: 'checkpoint' must be a string such as \"{{best}}\" or \"{{reference}}\"")
        opts = {k: v for k, v in a.items() if k not in STEP_KEYS}
        steps.append(Step(name=sname, kind=kind, options=opts, checkpoint=ck, only=dict(a.get("only", {})),
                          skip=dict(a.get("skip", {})),
                          resources=_resources(a.get("resources", {}), f"{where} resources", False)))
    resources = _resources(doc.get("resources", {}), "[resources]", True)
    est = _table(doc, "estimate", str(path))
    _unknown(est, ("sample-pass-ms", "note"), "[estimate]")
    if "sample-pass-ms" in est and (not isinstance(est["sample-pass-ms"], (int, float))
                                    or isinstance(est["sample-pass-ms"], bool) or est["sample-pass-ms"] <= 0):
        raise ConfigError(f"[estimate]: 'sample-pass-ms' must be a positive number, got {est['sample-pass-ms']!r}")
    study = Study(name=name, file=path.resolve(), out=out_dir, cells=cells, steps=steps, train=train,
                  methods=methods, source_options=source, resources=resources, estimate=est,
                  claims=_claims(doc, axes), description=_str(st, "description", "[study]", "") or "", axes=axes)
    study.reference = dict(reference) if reference else (
        {"method": "at"} if any(c.values.get("method") == "at" for c in cells) else {})
    _link_references(study, reference)
    _check_commands(study)
    return study


def _link_references(study: Study, reference: dict | None) -> None:
    """Each cell's reference cell: the cell equal on every axis but those in ``reference``, which take its
    values (default {method = "at"} when the grid has AT). A step that reads {reference} on a cell without
    one is refused; the reference cell itself gets none."""
    needs = [s for s in study.steps if s.uses_reference]
    if reference is None:
        if not needs:
            return
        if not any(c.values.get("method") == "at" for c in study.cells):
            raise ConfigError("a step reads {reference}, but [study] reference is not given and the grid has no "
                              "'at' cell to default to")
        reference = {"method": "at"}
    for ax in reference:
        if ax not in study.axes:
            raise ConfigError(f"[study] reference: {ax!r} is not an axis of the study ({', '.join(study.axes)})")
    by_values = {json.dumps(c.values, sort_keys=True): c for c in study.cells}
    for i, c in enumerate(study.cells):
        if all(_same(c.values.get(k), v) for k, v in reference.items()):
            continue              # a reference cell has no reference of its own
        want = {**c.values, **reference}
        ref = by_values.get(json.dumps(want, sort_keys=True))
        if ref is None:
            if any(s.applies(c) for s in needs):
                raise ConfigError(f"cell {c.name}: its reference cell ({cell_name(want)}) is not in the grid, but "
                                  f"step {next(s.name for s in needs if s.applies(c))} reads {{reference}}; add "
                                  "it or skip that step for this cell")
            continue
        study.cells[i] = dataclasses.replace(c, reference=ref.name)
    for s in needs:
        for c in study.cells:
            if s.applies(c) and study.cell(c.name).reference is None:
                raise ConfigError(f"step {s.name} reads {{reference}} but cell {c.name} is a reference cell "
                                  "itself; add skip = {" + ", ".join(f"{k} = {json.dumps(v)}"
                                                                     for k, v in reference.items()) + "}")


def _check_commands(study: Study) -> None:
    """Parse every command with its console script's parser (types, ranges, choices), and check the
    training config of each cell (unknown method, dataset, model: ``TrainConfig.resolved``)."""
    from ..training import TrainConfig
    seen_train: set[str] = set()
    for cell, step in study.pairs():
        argv = study.command(cell, step)
        where = f"cell {cell.name}, step {step.name}"
        ns = check_argv(step.kind, argv[1:], where)
        if step.kind == "train":
            key = json.dumps(argv[1:-4])
            if key in seen_train:
                continue
            seen_train.add(key)
            fields = {f.name for f in dataclasses.fields(TrainConfig)}
            try:
                cfg = TrainConfig(**{k: v for k, v in vars(ns).items() if k in fields}).resolved()
                refusal = cfg.ignored(given_options("train", argv[1:]))   # an option this method ignores
            except LandscapeError as e:      # unknown method, dataset or model, a bad combination
                raise ConfigError(f"{where}: {e}") from None
            if refusal:
                raise ConfigError(f"{where}: {refusal} (give it under [method.NAME] for the methods that use it)")
