"""Checkpoint sources: your own class (--arch FILE.py:CLASS / package.module:CLASS), wrappers and prefixes,
safetensors, mismatch messages, and robustbench:NAME from a model folder in RobustBench's layout."""
import json
import sys
import types

import pytest
import torch
from torch import nn

import landscape as ls
from landscape.checkpoint import save_checkpoint
from landscape.cli import eval as eval_cli
from landscape.cli import spectrum as spectrum_cli
from landscape.data import dataset_info
from landscape.errors import CheckpointError
from landscape.models import _PreActNet
from landscape.zoo import TABLE, PreActResNet18, WideResNet

from conftest import assert_one_line_error, run_main

# A user's class with its own layer names (conv1/fc1), not our registry's Sequential indices; digits are 8x8.
NET = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.fc1 = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc1(nn.functional.max_pool2d(x, 2).flatten(1))

class ThreeWay(Net):
    def __init__(self):
        super().__init__(num_classes=3)

def make(width=8):
    return Net(width)
'''


@pytest.fixture
def user_net(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(NET)
    model = ls.build_model(f"{path}:Net", "digits", seed=0, kwargs={"width": 6})
    model.train()(torch.rand(16, 1, 8, 8))  # BatchNorm running stats away from their init
    return path, model.eval(), {k: v.clone() for k, v in model.state_dict().items()}


def _variants(sd: dict) -> dict:
    return {
        "bare.pt": sd,
        "extras.pt": {**sd, "epoch": 3, "best_acc": 0.5, "args": {"lr": 0.1}},  # non-tensor extras beside it
        "lightning.ckpt": {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3,
                           "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
                           "hyper_parameters": {"width": 6}},
        "dp.pth": {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"state": {}}, "epoch": 9},
        "compiled_ddp.pt": {"net": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
    }


@pytest.mark.parametrize("name", list(_variants({})))
def test_user_class_loads_from_every_wrapper(tmp_path, user_net, name, capsys):
    path, model, sd = user_net
    torch.save(_variants(sd)[name], tmp_path / name)
    arch, kw = f"{path}:Net", {"width": 6}
    ck = ls.load_checkpoint(tmp_path / name, arch=arch, dataset="digits", arch_kwargs=kw)
    got = ck.model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    assert ck.foreign and not ck.model.training and ck.config["arch_kwargs"] == kw
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(ck.model(x), model(x))
    common = [tmp_path / name, "--arch", arch, "--arch-kwargs", json.dumps(kw), "--dataset", "digits"]
    out = tmp_path / "e.json"
    proc = run_main(eval_cli.main, [*common, "--n-samples", 24, "--eps", 0.1, "--steps", 2, "--json", out], capsys)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["n"] == 24 and 0 <= res["pgd_acc"] <= res["clean_acc"] <= 1
    out = tmp_path / "s.json"
    proc = run_main(spectrum_cli.main, [*common, "--loss", "adversarial", "--eps", 0.1, "--steps", 2,
                                        "--samples", 16, "--top-k", 1, "--max-hvps", 20, "--json", out], capsys)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["model"] == arch and res["settings"]["arch_kwargs"] == kw and res["num_params"] == \
        sum(p.numel() for p in model.parameters())


def test_package_module_class_and_factory(tmp_path, monkeypatch, user_net):
    _, _, sd = user_net
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save({"state_dict": sd}, tmp_path / "w.pt")
    for arch in ("mypkg.nets:Net", "mypkg.nets:make"):
        ck = ls.load_checkpoint(tmp_path / "w.pt", arch=arch, dataset="digits", arch_kwargs='{"width": 6}')
        assert torch.equal(ck.model.state_dict()["fc1.weight"], sd["fc1.weight"])


def test_safetensors(tmp_path, user_net):
    from safetensors.torch import save_file
    path, _, sd = user_net
    save_file({f"model.{k}": v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    ck = ls.load_checkpoint(tmp_path / "w.safetensors", arch=f"{path}:Net", dataset="digits",
                            arch_kwargs={"width": 6})
    assert all(torch.equal(ck.model.state_dict()[k], sd[k]) for k in sd)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        ls.load_checkpoint(tmp_path / "bad.safetensors", arch=f"{path}:Net", dataset="digits")


def test_mismatch_names_missing_and_unexpected_keys(tmp_path, user_net, capsys):
    path, _, sd = user_net
    bad = {k.replace("fc1", "head"): v for k, v in sd.items()}
    bad["extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": bad, "epoch": 1}, tmp_path / "w.pt")
    proc = run_main(eval_cli.main, [tmp_path / "w.pt", "--arch", f"{path}:Net", "--arch-kwargs", '{"width": 6}',
                                    "--dataset", "digits"], capsys)
    assert_one_line_error(proc, contains="do not fit")
    line = proc.stderr
    assert "2 missing keys (fc1.weight, fc1.bias)" in line, line
    assert "3 unexpected keys (head.weight, head.bias, extra.weight)" in line, line
    torch.save(sd, tmp_path / "w.pt")  # right keys, wrong width
    with pytest.raises(CheckpointError, match=r"shape mismatches \(e.g. conv1.weight: \(6, 1, 3, 3\) in the file"):
        ls.load_checkpoint(tmp_path / "w.pt", arch=f"{path}:Net", dataset="digits")


@pytest.mark.parametrize("arch,kwargs,contains", [
    ("{path}:ThreeWay", None, "to (2, 3); expected (2, 10) logits"),
    ("{path}:Nope", None, "has no class 'Nope'; it defines Net, ThreeWay"),
    ("{path}:Net", '{"depth": 3}', "Net(depth=3) failed: TypeError"),
    ("{path}:Net", "[1, 2]", "expected a JSON object"),
    ("{path}:Net", "{depth", "not valid JSON"),
    ("{dir}/none.py:Net", None, "no file"),
    ("no_such_pkg_xyz.mod:Net", None, "cannot import no_such_pkg_xyz.mod"),
    ("cnn-small", '{"width": 3}', "apply to FILE.py:CLASS"),
])
def test_bad_arch_is_one_line(tmp_path, user_net, capsys, arch, kwargs, contains):
    path, _, sd = user_net
    torch.save(sd, tmp_path / "w.pt")
    argv = [tmp_path / "w.pt", "--arch", arch.format(path=path, dir=tmp_path), "--dataset", "digits"]
    argv += ["--arch-kwargs", kwargs] if kwargs else []
    assert_one_line_error(run_main(eval_cli.main, argv, capsys), contains=contains)


def test_user_file_error_is_one_line_with_its_line(tmp_path, capsys):
    (tmp_path / "broken.py").write_text("import torch\n\nraise RuntimeError('boom')\n")
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    proc = run_main(eval_cli.main, [tmp_path / "w.pt", "--arch", f"{tmp_path}/broken.py:Net", "--dataset",
                                    "digits"], capsys)
    assert_one_line_error(proc, contains="importing")
    assert "broken.py:3" in proc.stderr and "RuntimeError: boom" in proc.stderr


def test_checkpoint_naming_a_user_file_never_imports_it(tmp_path, user_net):
    path, model, _ = user_net
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(NET + f"\nopen({str(marker)!r}, 'w').close()\n")
    info = dataset_info("digits")
    cfg = {"model": f"{evil}:Net", "dataset": "digits", "dataset_info": info.to_dict(), "arch_kwargs": {"width": 6}}
    save_checkpoint(tmp_path / "c.pt", model, cfg)
    with pytest.raises(CheckpointError, match="pass --arch"):
        ls.load_checkpoint(tmp_path / "c.pt")
    assert not marker.exists()
    ck = ls.load_checkpoint(tmp_path / "c.pt", arch=f"{path}:Net")  # the user's explicit choice
    assert torch.equal(ck.model.state_dict()["fc1.weight"], model.state_dict()["fc1.weight"])


# ---- RobustBench -------------------------------------------------------------------------------------------

def _rb_file(root, dataset, threat, name, model) -> dict:
    """A weights file as RobustBench ships them: under 'state_dict', with 'module.' prefixes, the WideResNet's
    unused sub_block1 included. ``model`` may live on the meta device (random values are drawn here)."""
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype))
          for k, v in model.state_dict().items()}
    # a BatchNorm variance is positive (a negative one gives NaN logits, which every analysis now refuses)
    sd.update({k: v.abs() + 0.5 for k, v in sd.items() if k.endswith("running_var")})
    if isinstance(model, WideResNet):
        sd.update({f"sub_block1.{k[len('block1.'):]}": v for k, v in sd.items() if k.startswith("block1.")})
    path = root / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 76}, path)
    return sd


def test_robustbench_sitawarin_from_model_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)  # as here: no importable package -> our table
    with torch.device("meta"):
        model = TABLE[("cifar10", "Linf", "Sitawarin2020Improving")].build()
    sd = _rb_file(tmp_path, "cifar10", "Linf", "Sitawarin2020Improving", model)
    ck = ls.load_checkpoint("robustbench:Sitawarin2020Improving", model_dir=tmp_path)
    got = ck.model.state_dict()
    assert got.keys() == {k for k in sd if not k.startswith("sub_block1.")} and len(got) == 191  # as RobustBench's
    assert all(torch.equal(got[k], sd[k]) for k in got)
    assert sum(p.numel() for p in ck.model.parameters()) == 46_160_474  # WRN-34-10, CIFAR-10
    assert ck.dataset == "cifar10" and ck.config["eps"] == pytest.approx(8 / 255) and ck.config["norm"] == "linf"
    assert ck.arch == "robustbench:Sitawarin2020Improving" and "landscape table" in ck.config["architecture"]
    # another dataset of CIFAR-10's shape is data to evaluate on: the model is still CIFAR-10's (issue 22)
    other = ls.load_checkpoint("robustbench:Sitawarin2020Improving", dataset="synthetic-cifar10", model_dir=tmp_path)
    assert other.dataset == "cifar10" and all(torch.equal(other.model.state_dict()[k], got[k]) for k in got)
    with pytest.raises(CheckpointError, match="matches no RobustBench dataset"):
        ls.load_checkpoint("robustbench:Sitawarin2020Improving", dataset="digits", model_dir=tmp_path)
    with pytest.raises(CheckpointError, match="pass --download"):
        ls.load_checkpoint("robustbench:Sitawarin2020Improving", dataset="cifar100", model_dir=tmp_path)
    with pytest.raises(CheckpointError, match="needs the robustbench package.*Sitawarin2020Improving"):
        ls.load_checkpoint("robustbench:Carmon2019Unlabeled", model_dir=tmp_path)
    with pytest.raises(CheckpointError, match="needs the robustbench package"):
        ls.load_checkpoint("robustbench:Sitawarin2020Improving", dataset="cifar100", model_dir=tmp_path,
                           download=True)


def test_robustbench_cli_preact18_with_normalization(tmp_path, monkeypatch, capsys):
    """Rice2020Overfitting (CIFAR-100): PGD-AT PreAct ResNet-18 with RobustBench's mu/sigma buffers, through
    landscape-eval (the data are stubbed: CIFAR-100 is not on this machine)."""
    monkeypatch.setitem(sys.modules, "robustbench", None)
    model = TABLE[("cifar100", "Linf", "Rice2020Overfitting")].build()
    sd = _rb_file(tmp_path, "cifar100", "Linf", "Rice2020Overfitting", model)
    del sd["mu"]  # normalization constants may be absent from the file: the table's stay
    real = ls.load_dataset

    def fake_cifar100(name, *a, **k):
        assert name == "cifar100"
        x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        return ls.data.Dataset(dataset_info("cifar100"), "test", x, torch.arange(8))
    monkeypatch.setattr(eval_cli, "load_dataset", fake_cifar100)
    out = tmp_path / "e.json"
    proc = run_main(eval_cli.main, ["robustbench:Rice2020Overfitting", "--dataset", "cifar100", "--model-dir",
                                    tmp_path, "--threat-model", "linf", "--steps", 1, "--n-samples", 4,
                                    "--json", out], capsys)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["config"]["threat_model"] == "Linf" and res["eps"] == pytest.approx(8 / 255)
    assert real is ls.load_dataset


def test_robustbench_compatible_classes_compute_our_registry_function():
    """Our RobustBench-key classes are the registry's PreAct nets under other key names: same outputs."""
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    for rb, ours in [(WideResNet(10, 2, 10), _PreActNet(info, [32, 64, 128], [1, 1, 1], stem=16)),
                     (PreActResNet18(10), ls.build_model("preact-resnet18", "cifar10")[1])]:
        rb.eval(), ours.eval()
        a, b = rb.state_dict(), ours.state_dict()
        assert [v.shape for v in a.values()] == [v.shape for v in b.values()]
        with torch.no_grad():
            for v in a.values():
                v.copy_(torch.randn_like(v.float()).abs().to(v.dtype) + 0.5 if v.is_floating_point() else v)
        ours.load_state_dict(dict(zip(b, a.values())))
        x = torch.rand(2, 3, 32, 32)
        assert torch.allclose(rb(x), ours(x), rtol=1e-4, atol=1e-5)
    with torch.device("meta"):
        keys = list(WideResNet(34, 10, 10).state_dict())  # RobustBench's names (compared with robustbench 1.1.1)
    assert keys[:2] == ["conv1.weight", "block1.layer.0.bn1.weight"] and "block2.layer.0.convShortcut.weight" \
        in keys and keys[-2:] == ["fc.weight", "fc.bias"] and len(keys) == 191


def _fake_robustbench(monkeypatch, entry: dict, calls: list) -> None:
    """A stand-in for the robustbench package's interface (model_zoo.models.model_dicts, enums, utils)."""
    import enum
    enums = types.ModuleType("robustbench.model_zoo.enums")
    enums.BenchmarkDataset = enum.Enum("BenchmarkDataset", {"cifar_10": "cifar10", "cifar_100": "cifar100"})
    enums.ThreatModel = enum.Enum("ThreatModel", {"Linf": "Linf", "L2": "L2"})
    models = types.ModuleType("robustbench.model_zoo.models")
    models.model_dicts = {enums.BenchmarkDataset("cifar10"): {enums.ThreatModel("Linf"): {"Tiny2024": entry}}}
    utils = types.ModuleType("robustbench.utils")

    def download_gdrive_new(gid, fname):
        calls.append(gid)
        net = entry["model"]()
        torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, fname)
    utils.download_gdrive_new = download_gdrive_new
    for name, mod in [("robustbench", types.ModuleType("robustbench")),
                      ("robustbench.model_zoo", types.ModuleType("robustbench.model_zoo")),
                      ("robustbench.model_zoo.enums", enums), ("robustbench.model_zoo.models", models),
                      ("robustbench.utils", utils)]:
        monkeypatch.setitem(sys.modules, name, mod)


class _RBTiny(WideResNet):
    """Like RobustBench's WideResNet: an unused sub_block1 that the loader drops."""

    def __init__(self):
        super().__init__(10, 1, 10)
        self.sub_block1 = nn.Linear(2, 2)


def test_robustbench_package_path_downloads_only_when_asked(tmp_path, monkeypatch, capsys):
    calls: list = []
    _fake_robustbench(monkeypatch, {"model": _RBTiny, "gdrive_id": "abc"}, calls)
    with pytest.raises(CheckpointError, match="pass --download"):
        ls.load_checkpoint("robustbench:Tiny2024", model_dir=tmp_path)
    assert calls == []
    ck = ls.load_checkpoint("robustbench:Tiny2024", model_dir=tmp_path, download=True)
    assert calls == ["abc"] and (tmp_path / "cifar10" / "Linf" / "Tiny2024.pt").is_file()
    assert not hasattr(ck.model, "sub_block1") and "robustbench package" in ck.config["architecture"]
    assert not list((tmp_path / "cifar10" / "Linf").glob(".*part"))
    ls.load_checkpoint("robustbench:Tiny2024", model_dir=tmp_path, download=True)
    assert calls == ["abc"]  # present: not fetched again
    with pytest.raises(CheckpointError, match="RobustBench has no model 'Nope'"):
        ls.load_checkpoint("robustbench:Nope", model_dir=tmp_path)
    proc = run_main(eval_cli.main, ["robustbench:Tiny2024", "--threat-model", "Linf2", "--model-dir", tmp_path],
                    capsys)
    assert_one_line_error(proc, contains="unknown threat model")
