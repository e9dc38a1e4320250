"""Every result kind, its one owner: reading a result (a file, a folder, a dict or a result object), telling
its kind, what it says about itself (``describe``), and the spectrum result's layout. No plotting import:
``landscape.plots`` draws and ``landscape.report`` renders from what this module reads.

Kinds (``RESULT_KINDS``): surface (a ``SurfaceResult``: surface.json / .npz / its folder), spectrum (eigenvalues,
trace and density together, as ``landscape-spectrum --json`` writes them: ``SpectrumResult``), eigenvalues,
trace, density (one part alone, as the Python API's results' ``to_dict()``), evaluation (``landscape-eval``),
training (a run: metrics.csv, its folder or a training JSON; see ``landscape.runs``). Older files without a
``kind`` are classified by their keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._version import __version__
from .analysis.directions import current_meta
from .analysis.surface_result import SurfaceResult, load_surface
from .errors import LandscapeError
from .io import read_json
from .names import folder_result, is_checkpoint_path, is_surface_folder, known_method, method_of_run, pretty_method

RESULT_KINDS = ("surface", "spectrum", "eigenvalues", "trace", "density", "evaluation", "training", "audit",
                "input_surface", "flatness")
SPECTRUM_PARTS = ("top_eigenvalues", "trace", "density")   # a spectrum result's parts, under these keys
DENSITY_FLOOR = 1e-6          # a density's log axis starts at this fraction of its peak (plots and report)


def load_result(obj: Any) -> Any:
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if is_surface_folder(p):          # a surface folder: its stored surface
            return load_surface(p).to_dict()
        p = folder_result(p) or p         # an input surface's folder: its JSON
        if not p.is_file():
            raise LandscapeError(f"result file not found: {p}")
        try:
            return read_json(p)
        except (OSError, ValueError) as e:
            raise LandscapeError(f"{p} is not a JSON result file ({e})") from e
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return obj


def find_setting(d: Any, *keys: str) -> Any:
    """The value of the first of ``keys`` found in ``d`` or its nested dicts, shallowest first (None if absent).
    Settings are scalars: a list under the same name (a trace's per-probe ``samples``) is not a setting."""
    level = [d]
    while level:
        for k in keys:
            for node in level:
                if isinstance(node, dict) and node.get(k) is not None and not isinstance(node.get(k), (dict, list)):
                    return node[k]
        level = [v for node in level if isinstance(node, dict) for k, v in node.items()
                 if isinstance(v, dict) and k not in ("digests", "files")]
    return None


def result_kind(obj: Any) -> str:
    """The ``kind`` of a result (one of ``RESULT_KINDS``): its ``kind`` field, else inferred from its keys
    (older files), a ``SurfaceResult``, a DataFrame / metrics.csv / run folder ("training")."""
    import pandas as pd
    if isinstance(obj, SurfaceResult):
        return "surface"
    if isinstance(obj, pd.DataFrame):
        return "training"
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.is_dir():
            if is_surface_folder(p):
                return "surface"
            if (p / "input_surface.json").is_file():
                return "input_surface"
            if (p / "metrics.csv").is_file():
                return "training"
            raise LandscapeError(f"{p}: a folder without surface.json or metrics.csv")
        if p.suffix == ".csv":
            return "training"
        if p.suffix == ".npz":
            return "input_surface" if p.name == "input_surface.npz" else "surface"
        obj = load_result(p)
    obj = load_result(obj)
    if not isinstance(obj, dict):
        raise LandscapeError("cannot tell what this result is (expected a JSON object)")
    kind = obj.get("kind")
    if kind in RESULT_KINDS:
        return kind
    if "x" in obj and "loss" in obj:
        return "surface"
    if "audit" in obj and isinstance(obj["audit"], dict) and "checks" in obj["audit"]:
        return "audit"
    if "history" in obj and isinstance(obj["history"], list):
        return "training"
    eig, dens, trace = spectrum_parts(obj)
    parts = [name for name, v in (("eigenvalues", eig), ("density", dens), ("trace", trace)) if v]
    if len(parts) > 1 or any(k in obj for k in ("top_eigenvalues", "top_eigenvalue")):
        return "spectrum" if parts else "evaluation"
    if parts:
        return parts[0]
    if any(k in obj for k in ("clean_acc", "pgd_acc", "autoattack_acc", "clean", "robust")):
        return "evaluation"
    raise LandscapeError("cannot tell what this result is (expected a surface, a spectrum, an evaluation "
                         "or a metrics.csv)")


#: a run folder of this name is named by the folder above it: a study's cells/CELL/train (study.spec.TRAIN_RUN)
GENERIC_RUN_FOLDERS = ("train",)


def run_folder_name(folder: Path) -> str:
    """A run folder's name as the report tells runs apart: its own, or for a study cell's ``CELL/train`` the
    cell's (every cell's run folder is called train)."""
    folder = Path(folder)
    return folder.parent.name if folder.name in GENERIC_RUN_FOLDERS and folder.parent.name else folder.name


def result_run(d: dict) -> str | None:
    """The run's name: a ``run`` field, else the folder of the checkpoint the result was computed from."""
    if isinstance(d.get("run"), str):
        return d["run"]
    ck = find_setting(d, "checkpoint")
    if isinstance(ck, str) and ck:
        p = Path(ck)
        return run_folder_name(p.parent) if is_checkpoint_path(p) and p.parent.name else p.stem
    return None


#: what a result was measured under (``measurement``), as the report tells results apart: the model (its
#: checkpoint file, architecture or wrapper, constructor arguments, dataset) and the attack / operator
#: settings that change a number
MEASUREMENT_KEYS = ("run", "checkpoint", "method", "model", "arch_kwargs", "dataset", "eps", "norm", "steps",
                    "restarts", "step_size", "bn", "split", "samples", "loss")
ESTIMATORS = ("lanczos", "eigsh", "hutch++", "hutchinson", "xtrace", "slq", "auto")   # a "method" that is no training


def _canonical(v: Any) -> Any:
    """A setting as a comparable value: floats rounded (1e-9 relative), dicts / JSON objects as sorted JSON."""
    import json
    if isinstance(v, str) and v.strip().startswith("{"):
        try:
            v = json.loads(v)
        except ValueError:
            return v
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, float):
        return float(f"{v:.9g}")
    return v


def measurement(obj: Any) -> dict:
    """The settings that change a result's numbers (``MEASUREMENT_KEYS``; None where the result does not
    say), read from what was measured: the attack's own record first (``attack`` / ``settings.attack``), then
    the result's fields and settings; the checkpoint's training config, which the CLIs' results carry under
    ``config``, only for the model (model, arch_kwargs, dataset), never for eps or steps (an audit at eps 0.3
    of a model trained at 0.1 is at 0.3). ``checkpoint``: the file's name (best.pt and last.pt are two
    models); ``arch_kwargs``: sorted JSON. A clean loss has no attack: eps, norm, steps, restarts and
    step_size are None. ``bn``: BatchNorm's mode in the attack (eval / train) or in the Hessian operator
    (running / batch). A training result (a run's config and history) gives its training eps."""
    d = _result_dict(obj)
    cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
    own = {k: v for k, v in d.items() if k != "config"}
    settings = own.get("settings") if isinstance(own.get("settings"), dict) else {}
    attack = next((a for a in (own.get("attack"), settings.get("attack")) if isinstance(a, dict)), {})

    def get(*keys: str) -> Any:
        for k in keys:
            if attack.get(k) is not None and not isinstance(attack.get(k), (dict, list)):
                return attack[k]
        return find_setting(own, *keys)

    loss = find_setting(own, "loss")
    out = {"run": result_run(d), "loss": loss if isinstance(loss, str) else None}
    ck = find_setting(own, "checkpoint")
    if isinstance(ck, str) and ck:
        out["checkpoint"] = Path(ck).name if is_checkpoint_path(ck) else ck
    method = cfg.get("method") or find_setting(own, "method")
    out["method"] = method if isinstance(method, str) and method not in ESTIMATORS else None   # the training's
    out["model"] = find_setting(own, "model", "arch") or cfg.get("model")
    kw = next((v for v in (own.get("arch_kwargs"), settings.get("arch_kwargs"), cfg.get("arch_kwargs"))
               if v not in (None, "", {})), None)
    out["arch_kwargs"] = kw if kw is not None else ({} if out["model"] else None)   # a model named: no kwargs
    out["dataset"] = find_setting(own, "dataset") or cfg.get("dataset")
    out["split"] = find_setting(own, "split")
    bn = get("bn", "attack_bn")
    out["bn"] = bn if isinstance(bn, str) else None     # BatchNorm in the attack (eval / train) or the operator
    n = find_setting(own, "num_samples", "samples", "hessian_samples", "n", "n_test")
    out["samples"] = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None
    if loss != "clean":
        out.update(eps=get("eps"), norm=get("norm", "attack_norm"), steps=get("steps"), restarts=get("restarts"),
                   step_size=get("step_size", "alpha"))
    res = {k: _canonical(out.get(k)) for k in MEASUREMENT_KEYS}
    if isinstance(res["norm"], str):
        res["norm"] = res["norm"].lower()
    if isinstance(res["eps"], (int, float)) and not isinstance(res["eps"], bool):
        res["eps"] = round(float(res["eps"]), 6)
    return res


def fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _result_dict(obj: Any) -> dict:
    """A result as a dict ({} for a table or anything that is not one); a SurfaceResult by its settings."""
    if isinstance(obj, SurfaceResult):
        return {"settings": obj.settings}
    d = load_result(obj) if not is_table_like(obj) else {}
    return d if isinstance(d, dict) else {}


def describe(obj: Any) -> dict:
    """What produced a result, from its settings: ``name`` (method or run, for legends), ``method``, ``eps``,
    ``loss``, ``dataset``, ``n`` (samples), ``model`` (None where the result does not say)."""
    d = _result_dict(obj)
    run = result_run(d)
    method = find_setting(d, "method")
    if method in ("lanczos", "eigsh", "hutch++", "hutchinson", "xtrace", "slq"):   # an estimator, not training
        method = None
    if method is None and run:
        method = known_method(run)
    loss = find_setting(d, "loss")
    eps = measurement(d)["eps"] if isinstance(d.get("config"), dict) else find_setting(d, "eps")
    if loss == "clean":
        eps = None
    n = find_setting(d, "num_samples", "samples", "hessian_samples", "n", "n_test")
    name = run or method or ""
    if run:   # "at-eps0.3", "p-sat-digits-eps0.1-s0" -> "at", "p-sat": the rest goes to the title
        name = method_of_run(run, find_setting(d, "dataset"))
    return {"name": pretty_method(name) if name else "", "run": run, "method": method, "eps": eps,
            "loss": loss if isinstance(loss, str) else None, "dataset": find_setting(d, "dataset"),
            "n": int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None,
            "model": find_setting(d, "model", "arch")}


def is_table_like(obj: Any) -> bool:
    import pandas as pd
    return isinstance(obj, pd.DataFrame) or (isinstance(obj, (str, os.PathLike)) and (
        Path(obj).suffix == ".csv" or (Path(obj).is_dir() and folder_result(obj) is None)))   # a run folder's metrics


def caption(info: dict, with_eps: bool = True, noun: str = "loss") -> str:
    """``adversarial loss (ε = 0.3), n = 512, fashion-mnist`` from ``describe``'s fields (``noun``: what is
    measured, e.g. ``accuracy`` -> ``adversarial accuracy (ε = 0.3)``)."""
    parts = []
    if info.get("loss"):
        loss = f"{info['loss']} {noun}"
        if with_eps and info.get("eps") is not None:
            loss += f" (ε = {fmt_value(info['eps'])})"
        parts.append(loss)
    if info.get("n"):
        parts.append(f"n = {info['n']}")
    if info.get("dataset"):
        parts.append(str(info["dataset"]))
    return ", ".join(parts)


def as_surface(obj: Any) -> SurfaceResult:
    if isinstance(obj, SurfaceResult):
        return obj
    if isinstance(obj, dict):
        if obj.get("kind") not in (None, "surface") or "loss" not in obj or "x" not in obj:
            raise LandscapeError("not a surface result (needs x and loss)")
        return SurfaceResult.from_dict(obj)
    return load_surface(obj)


def as_surfaces(objs: Any) -> list[SurfaceResult]:
    return [as_surface(o) for o in (objs if isinstance(objs, (list, tuple)) else [objs])]


def surface_field(r: SurfaceResult, field: str) -> np.ndarray:
    if field not in ("loss", "accuracy"):
        raise LandscapeError(f"unknown field {field!r}; choose loss or accuracy")
    z = np.asarray(r.loss if field == "loss" else r.accuracy, dtype=np.float64)
    return np.where(r.mask, z, np.nan)


def surface_directions(r: SurfaceResult) -> dict:
    return current_meta((r.settings or {}).get("directions") or {})  # older files say "norm"


def axis_names(r: SurfaceResult) -> tuple[str, str]:
    """Axis names from the directions' settings: ``eigvec 1 (λ = 13.3)``, ``filter-normalized random dir. 1``,
    ``PC 1 (62% of variance)``, ``interpolation to RUN``; ``direction 1`` when the surface does not say."""
    d = surface_directions(r)
    kind = d.get("kind")
    names = []
    for i in range(2):
        if kind == "eigen":
            ev = d.get("eigenvalues") or []
            names.append(f"eigvec {i + 1}" + (f" (λ = {ev[i]:.3g})" if i < len(ev) else ""))
        elif kind == "random":
            nz = d.get("normalization", "filter")
            names.append(("random dir." if nz in (None, "none") else f"{nz}-normalized random dir.")
                         + f" {i + 1}")
        elif kind == "pca":
            evr = d.get("explained_variance_ratio") or []
            names.append(f"PC {i + 1}" + (f" ({100 * evr[i]:.0f}% of variance)" if i < len(evr) else ""))
        elif kind == "interpolate":
            to = d.get("to")
            names.append("interpolation α" + (f" (α = 1: {result_run({'checkpoint': to})})" if to else "")
                         if i == 0 else "direction 2")
        else:
            names.append(f"direction {i + 1}")
    return names[0], names[1]


def finite_range(zs: Sequence[np.ndarray]) -> tuple[float, float]:
    vals = np.concatenate([z[np.isfinite(z)].ravel() for z in zs]) if zs else np.zeros(0)
    if vals.size == 0:
        raise LandscapeError("the surface holds no computed points yet")
    return float(vals.min()), float(vals.max())


def spectrum_parts(d: Any) -> tuple[dict | None, dict | None, dict | None]:
    """(eigenvalues {values, converged}, density {grid, density}, trace {estimate, half_width_95}) from any
    spectrum-like JSON (new ``kind`` files, landscape-spectrum's, older analysis files), tolerantly."""
    d = load_result(d)
    if not isinstance(d, dict):
        raise LandscapeError("not a spectrum result")
    eig = None
    for key in ("top_eigenvalues", "eigenvalues", "top_k", "eigen"):
        e = d.get(key)
        if isinstance(e, dict) and isinstance(e.get("values"), list):
            eig = e
            break
        if isinstance(e, list) and e and isinstance(e[0], (int, float)):
            eig = {"values": e}
            break
    if eig is None and isinstance(d.get("values"), list) and d.get("kind") in (None, "eigenvalues"):
        eig = d
    if eig is not None:
        values = [float(v) if v is not None else float("nan") for v in eig["values"]]
        conv = eig.get("converged")
        conv = [bool(c) for c in conv] if isinstance(conv, list) and len(conv) == len(values) else None
        if not all(np.isfinite(values)):   # a NaN / infinite eigenvalue is never "converged"
            conv = [bool(np.isfinite(v)) and (conv is None or conv[i]) for i, v in enumerate(values)]
        eig = {"values": values, "converged": conv}
    dens = None
    for key in ("density", "spectral_density", "esd"):
        e = d.get(key)
        if isinstance(e, dict) and "grid" in e and "density" in e:
            dens = e
            break
    if dens is None and isinstance(d.get("grid"), (list, np.ndarray)) and isinstance(d.get("density"), (list, np.ndarray)):
        dens = d
    trace = None
    t = d.get("trace")
    if isinstance(t, dict) and t.get("estimate") is not None:
        trace = trace_interval(t)
    elif isinstance(t, (int, float)) and not isinstance(t, bool):
        trace = trace_interval({"estimate": t, "stderr": d.get("trace_stderr")})
    elif d.get("kind") == "trace" and d.get("estimate") is not None:
        trace = trace_interval(d)
    return eig, dens, trace


def trace_interval(t: dict) -> dict:
    """{estimate, half_width_95}: the house's one confidence convention (a 95% interval, as landscape-spectrum
    prints it). Older results with only a standard error get 1.96 x stderr."""
    est = float(t["estimate"])
    hw = t.get("half_width_95")
    if hw is None and t.get("stderr") is not None:
        hw = 1.96 * float(t["stderr"])
    return {"estimate": est, "half_width_95": None if hw is None else float(hw)}


def format_trace(t: dict) -> str:
    """``72.8 ± 3.15 (95%)``."""
    t = trace_interval(t)
    return f"{t['estimate']:.4g}" + (f" ± {t['half_width_95']:.3g} (95%)" if t["half_width_95"] is not None else "")




@dataclass
class SpectrumResult:
    """The "spectrum" result (what ``landscape-spectrum --json`` writes): any of the top eigenvalues, the trace
    and the density of one operator (``parts``: their ``to_dict()`` under ``SPECTRUM_PARTS``' keys), with
    what was measured (``context``: checkpoint, model, dataset, settings, operator, ...), the seconds of each
    part and of setup, and the memory plan. ``to_dict`` adds the kind, the version, the HVPs of each part and
    in total, and the shared name ``eigenvalues`` for the top eigenvalues (``top_eigenvalues`` kept for
    older readers)."""
    parts: dict
    context: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    memory: dict | None = None
    estimate: dict | None = None

    def __post_init__(self):
        unknown = sorted(set(self.parts) - set(SPECTRUM_PARTS))
        if unknown:
            raise LandscapeError(f"unknown spectrum part(s) {', '.join(unknown)}; expected {', '.join(SPECTRUM_PARTS)}")

    @property
    def hvps(self) -> dict:
        """HVPs of each part, and their total."""
        h = {k: int(v["hvps"]) for k, v in self.parts.items()}
        return {**h, "total": sum(h.values())}

    def to_dict(self) -> dict:
        parts = dict(self.parts)
        if "top_eigenvalues" in parts:
            parts["eigenvalues"] = parts["top_eigenvalues"]
        seconds = {**self.seconds, **{k: float(v["seconds"]) for k, v in self.parts.items()
                                      if isinstance(v, dict) and "seconds" in v and k not in self.seconds}}
        return {"kind": "spectrum", "landscape_version": __version__, **self.context, **parts,
                "hvps": self.hvps, "seconds": seconds, "memory": self.memory, "estimate": self.estimate}

    @classmethod
    def from_dict(cls, d: Any) -> "SpectrumResult":
        """A spectrum result from its dict or file (older layouts too: see ``spectrum_parts``)."""
        d = load_result(d)
        if not isinstance(d, dict):
            raise LandscapeError("not a spectrum result (expected a JSON object)")
        parts = {k: d[k] for k in SPECTRUM_PARTS if isinstance(d.get(k), dict)}
        skip = {"kind", "landscape_version", "eigenvalues", "hvps", "seconds", "memory", "estimate", *SPECTRUM_PARTS}
        return cls(parts, {k: v for k, v in d.items() if k not in skip}, dict(d.get("seconds") or {}),
                   d.get("memory"), d.get("estimate"))
