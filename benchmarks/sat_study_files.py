"""The SAT study's files, read back: the methods it trains, in their table order, and one model folder's
numbers as a flat row (``model_row``). Shared by ``sat_study.py`` (tables) and ``sat_study_figures.py``
(figures), so that neither imports the other."""
from __future__ import annotations

from pathlib import Path

from landscape.io import read_json

METHODS = ("at", "trades", "sat-eps", "p-sat", "h-sat", "h-sat-affine")


def model_row(folder: Path) -> tuple[dict, list[dict]]:
    """One flat row of scalars for a model's folder, and its per-layer rows."""
    tr = read_json(folder / "train.json")
    st = tr["settings"]
    row: dict = {"method": st["method"], "eps": st["eps"], "seed": st["seed"], "best_epoch": tr["best_epoch"],
                 "train_acc_objective_last": tr["train_acc_objective_last"], "train_clean": tr["train_clean_acc"],
                 "train_pgd20": tr["train_pgd20_acc"], "train_seconds": tr["seconds"]}
    if (folder / "accuracy.json").exists():
        acc = read_json(folder / "accuracy.json")
        row.update(test_clean=acc["clean_acc"], test_pgd20=acc["pgd20_acc"])
    if (folder / "spectrum.json").exists():
        sp = read_json(folder / "spectrum.json")
        for i, v in enumerate(sp["eigenvalues"]):
            row[f"eig{i + 1}"] = v
        if "trace" in sp:
            row["trace"] = sp["trace"]
        if "surface_eigen" in sp:
            se = sp["surface_eigen"]
            row.update(eigen_plane_center=se["loss_center"], eigen_plane_max=se["loss_max"],
                       eigen_plane_mean=se["loss_mean"])
    if (folder / "surface_random.json").exists():
        sr = read_json(folder / "surface_random.json")
        row.update(random_plane_center=sr["loss_center"], random_plane_max=sr["loss_max"],
                   random_plane_mean=sr["loss_mean"])
    if (folder / "flatness.json").exists():
        fl = read_json(folder / "flatness.json")
        for loss in ("clean", "adversarial"):
            for measure in ("average", "worst"):
                r = fl[loss][measure]
                for radius, inc in zip(r["radii"], r["increase"]):
                    row[f"flat_{measure}_{loss}_r{radius:g}"] = inc
    if (folder / "path.json").exists():
        p = read_json(folder / "path.json")
        row.update(path_barrier_clean=p["clean"]["barrier"], path_barrier_adversarial=p["adversarial"]["barrier"])
    if (folder / "audit.json").exists():      # AutoAttack and the audit (sat_study_audit.py), re-judged today
        from landscape.audit import judge_dict
        au = read_json(folder / "audit.json")
        block = judge_dict(au)
        acc = au["accuracies"]
        row.update(test_autoattack=acc["autoattack"], audit_pgd20=acc["pgd"], audit_worst_case=acc["worst_case"],
                   audit_n=au["n"], audit_suspect=float(block["verdict"] == "suspect"),
                   audit_flags=" ".join(c["name"] for c in block["checks"] if c["passed"] is False))
    row["analysis_seconds"] = sum(float(read_json(p).get("seconds") or 0.0) for p in folder.glob("*.json")
                                  if p.name not in ("train.json", "audit.json")) + float(tr.get("eval_seconds") or 0.0)
    layers = []
    if (folder / "layers.json").exists():
        for lr in read_json(folder / "layers.json")["layers"]:
            layers.append({"method": st["method"], "eps": st["eps"], "seed": st["seed"], "layer": lr["layer"],
                           "loss": lr["loss"], "top_eigenvalue": lr["top_eigenvalue"],
                           **({"audit_suspect": row["audit_suspect"]} if "audit_suspect" in row else {})})
    return row, layers
