import os

import pytest
import torch

from landscape import build_model
from landscape.checkpoint import load_checkpoint, save_checkpoint
from landscape.data import dataset_info
from landscape.errors import CheckpointError


def _config(name="cnn-small", dataset="digits"):
    return {"model": name, "dataset": dataset, "dataset_info": dataset_info(dataset).to_dict(), "eps": 0.1}


def test_round_trip(tmp_path):
    model = build_model("cnn-small-bn", "digits", seed=0)
    model(torch.rand(8, 1, 8, 8))  # move BN running stats away from their init
    path = save_checkpoint(tmp_path / "a.pt", model, _config("cnn-small-bn"), {"val_clean": 0.5}, epoch=3)
    ck = load_checkpoint(path)
    assert not ck.model.training and ck.epoch == 3 and ck.metrics == {"val_clean": 0.5}
    assert ck.dataset == "digits" and ck.arch == "cnn-small-bn" and ck.config["eps"] == 0.1
    a, b = model.state_dict(), ck.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob(".*tmp"))  # the temp file of the atomic write is gone


def test_pickled_callable_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt", arch="cnn-small", dataset="digits")
    assert not marker.exists()


def test_missing_and_truncated(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    path = save_checkpoint(tmp_path / "a.pt", build_model("mlp", "digits"), _config("mlp"))
    data = path.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "t.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")


def test_foreign_state_dicts(tmp_path):
    model = build_model("cnn-small", "digits", seed=2)
    sd = model.state_dict()
    variants = {"bare.pt": sd, "wrapped.pt": {"state_dict": sd, "epoch": 9},
                "dp.pt": {"model": {f"module.{k}": v for k, v in sd.items()}}}
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        ck = load_checkpoint(tmp_path / name, arch="cnn-small", dataset="digits")
        assert ck.foreign and all(torch.equal(ck.model.state_dict()[k], sd[k]) for k in sd)
    with pytest.raises(CheckpointError, match="--arch"):
        load_checkpoint(tmp_path / "bare.pt")


def test_foreign_state_dict_without_normalize_prefix(tmp_path):
    model = build_model("preact-resnet18", "cifar10", seed=0)
    bare = {k[2:]: v for k, v in model.state_dict().items() if k.startswith("1.")}
    torch.save(bare, tmp_path / "r.pt")
    ck = load_checkpoint(tmp_path / "r.pt", arch="preact-resnet18", dataset="cifar10")
    assert torch.equal(ck.model.state_dict()["1.fc.weight"], model.state_dict()["1.fc.weight"])


def test_weights_that_do_not_fit(tmp_path):
    torch.save(build_model("mlp", "digits").state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "mlp.pt", arch="cnn-small", dataset="digits")
    torch.save(build_model("cnn-small", "digits").state_dict(), tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(tmp_path / "c.pt", arch="cnn-small", dataset="cifar100")
