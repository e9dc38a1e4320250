"""The committed SAT study's per-model layout (results/sat-study), read back: ``OUT/models/NAME/`` holds
train.json, accuracy.json, spectrum.json, surface_random.json, flatness.json, layers.json, path.json (grid
models other than AT) and audit.json. ``model_row`` reads one such folder as a flat row, ``read_models`` every
finished one, ``read_per_model`` the per_model.csv written from them. Read by the tables
(``landscape.study.legacy``) and the figures (``landscape.study.figures``) alike."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..audit import rejudge
from ..errors import LandscapeError
from ..results import load_result   # the results owner reads result files

#: the study's methods, in their table order
METHODS = ("at", "trades", "sat-eps", "p-sat", "h-sat", "h-sat-affine")


def model_row(folder: Path) -> tuple[dict, list[dict]]:
    """One flat row of scalars for a model's folder, and its per-layer rows."""
    tr = load_result(folder / "train.json")
    st = tr["settings"]
    row: dict = {"method": st["method"], "eps": st["eps"], "seed": st["seed"], "best_epoch": tr["best_epoch"],
                 "train_acc_objective_last": tr["train_acc_objective_last"], "train_clean": tr["train_clean_acc"],
                 "train_pgd20": tr["train_pgd20_acc"], "train_seconds": tr["seconds"]}
    if (folder / "accuracy.json").exists():
        acc = load_result(folder / "accuracy.json")
        row.update(test_clean=acc["clean_acc"], test_pgd20=acc["pgd20_acc"])
    if (folder / "spectrum.json").exists():
        sp = load_result(folder / "spectrum.json")
        for i, v in enumerate(sp["eigenvalues"]):
            row[f"eig{i + 1}"] = v
        if "trace" in sp:
            row["trace"] = sp["trace"]
        if "surface_eigen" in sp:
            se = sp["surface_eigen"]
            row.update(eigen_plane_center=se["loss_center"], eigen_plane_max=se["loss_max"],
                       eigen_plane_mean=se["loss_mean"])
    if (folder / "surface_random.json").exists():
        sr = load_result(folder / "surface_random.json")
        row.update(random_plane_center=sr["loss_center"], random_plane_max=sr["loss_max"],
                   random_plane_mean=sr["loss_mean"])
    if (folder / "flatness.json").exists():
        fl = load_result(folder / "flatness.json")
        for loss in ("clean", "adversarial"):
            for measure in ("average", "worst"):
                r = fl[loss][measure]
                for radius, inc in zip(r["radii"], r["increase"]):
                    row[f"flat_{measure}_{loss}_r{radius:g}"] = inc
    if (folder / "path.json").exists():
        p = load_result(folder / "path.json")
        row.update(path_barrier_clean=p["clean"]["barrier"], path_barrier_adversarial=p["adversarial"]["barrier"])
    if (folder / "audit.json").exists():      # AutoAttack and the audit, re-judged under today's thresholds
        au = load_result(folder / "audit.json")
        block = rejudge(au)
        acc = au["accuracies"]
        row.update(test_autoattack=acc["autoattack"], audit_pgd20=acc["pgd"], audit_worst_case=acc["worst_case"],
                   audit_n=au["n"], audit_suspect=float(block["verdict"] == "suspect"),
                   audit_flags=" ".join(c["name"] for c in block["checks"] if c["passed"] is False))
    row["analysis_seconds"] = sum(float(load_result(p).get("seconds") or 0.0) for p in folder.glob("*.json")
                                  if p.name not in ("train.json", "audit.json")) + float(tr.get("eval_seconds") or 0.0)
    layers = []
    if (folder / "layers.json").exists():
        for lr in load_result(folder / "layers.json")["layers"]:
            layers.append({"method": st["method"], "eps": st["eps"], "seed": st["seed"], "layer": lr["layer"],
                           "loss": lr["loss"], "top_eigenvalue": lr["top_eigenvalue"],
                           **({"audit_suspect": row["audit_suspect"]} if "audit_suspect" in row else {})})
    return row, layers


def read_per_model(out: Path) -> pd.DataFrame:
    """The per_model.csv that ``aggregate_legacy`` wrote (what the figures draw)."""
    return pd.read_csv(Path(out) / "per_model.csv")


def read_models(out: Path) -> tuple[pd.DataFrame, list[dict]]:
    """Every finished model of ``out/models`` (one with train.json): the per-model table (sorted by eps,
    method, seed) and the per-layer rows."""
    rows, layers = [], []
    for folder in sorted((out / "models").glob("*")):
        if (folder / "train.json").exists():
            r, lr = model_row(folder)
            rows.append(r)
            layers += lr
    if not rows:
        raise LandscapeError(f"{out / 'models'} holds no finished model to aggregate")
    return pd.DataFrame(rows).sort_values(["eps", "method", "seed"]), layers
