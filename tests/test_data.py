import pytest
import torch

from landscape import load_dataset
from landscape.data import augment
from landscape.errors import DataError
from conftest import have_fashion_mnist


def test_digits_splits_are_disjoint_deterministic_and_cover_the_training_set():
    tr, va, full = (load_dataset("digits", s) for s in ("train", "val", "train-full"))
    te = load_dataset("digits", "test")
    assert len(tr) + len(va) == len(full) and len(full) + len(te) == 1797
    assert abs(len(va) - 0.1 * len(full)) <= 1
    x1, y1 = load_dataset("digits", "val").tensors()
    x2, y2 = va.tensors()
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # a different split seed gives a different validation set
    assert not torch.equal(load_dataset("digits", "val", split_seed=1).tensors()[1], y1) or \
        not torch.equal(load_dataset("digits", "val", split_seed=1).tensors()[0], x1)
    # the parts are disjoint: no training image appears in validation
    xt = tr.tensors()[0].flatten(1)
    xv = va.tensors()[0].flatten(1)
    assert (torch.cdist(xv, xt).min(1).values > 0).all()       # digits holds no duplicate images: no leak at all
    # and the two parts are exactly train-full (a sample dropped or counted twice would change the multiset)
    rows = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
    assert rows(torch.cat([xt, xv])) == rows(full.tensors()[0].flatten(1))
    xs = te.tensors()[0].flatten(1)
    assert (torch.cdist(xs, torch.cat([xt, xv])).min(1).values > 0).all()   # nor between test and train-full


def test_inputs_in_unit_interval_and_int64_labels():
    x, y = load_dataset("digits", "test").tensors(100)
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    assert y.dtype == torch.int64 and set(y.tolist()) <= set(range(10))


def test_tensors_n_is_the_first_n_in_order():
    ds = load_dataset("digits", "test")
    xa, ya = ds.tensors(50)
    xb, yb = ds.tensors()
    assert torch.equal(xa, xb[:50]) and torch.equal(ya, yb[:50])
    with pytest.raises(DataError):
        ds.tensors(len(ds) + 1)


def test_batches_cover_everything_once_and_shuffle_is_seeded():
    ds = load_dataset("digits", "val")
    ys = torch.cat([y for _, y in ds.batches(32, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert sorted(ys.tolist()) == sorted(ds.labels.tolist())
    ys2 = torch.cat([y for _, y in ds.batches(32, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert torch.equal(ys, ys2)


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet-21k")
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("digits", "dev")


def test_torchvision_datasets_never_download_without_flag(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not any(tmp_path.rglob("*.tar.gz"))


def test_fashion_mnist_missing_is_a_clear_error(tmp_path, monkeypatch):
    import landscape.data as data
    monkeypatch.setattr(data, "fashion_mnist_dirs", lambda d=None: [tmp_path / "nothing"])
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        load_dataset("fashion-mnist", "test")


def test_truncated_idx_file_is_refused(tmp_path):
    import gzip
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    for prefix in ("t10k",):
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + bytes(100))
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(10))
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path)


@pytest.mark.skipif(not have_fashion_mnist(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package():
    te = load_dataset("fashion-mnist", "test")
    assert len(te) == 10000
    assert len(load_dataset("fashion-mnist", "train")) == 54000
    x, y = te.tensors(8)
    assert x.shape == (8, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert y.tolist()[:3] == [9, 2, 1]  # the first test labels of Fashion-MNIST (ankle boot, pullover, trouser)


def test_folder_dataset(tmp_path):
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    tr = load_dataset(f"folder:{tmp_path}", "train-full")
    te = load_dataset(f"folder:{tmp_path}", "test")
    assert len(tr) + len(te) == 10 and tr.num_classes == 2
    x, _ = te.tensors()
    assert x.shape[1:] == (3, 64, 64) and x.max() <= 1


def test_augment_crops_and_flips_on_tensors():
    x = torch.rand(16, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    # with zero padding allowed shift, every output is x or its mirror image
    same = augment(x, torch.Generator().manual_seed(0), pad=0)
    for a, b in zip(same, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    assert any(not torch.equal(a, b) for a, b in zip(same, x))


def test_digits_reader_matches_scikit_learn():
    import numpy as np
    from sklearn.datasets import load_digits
    from landscape.data import _digits_arrays
    pixels, labels = _digits_arrays()
    d = load_digits()
    assert np.array_equal(pixels, d.data) and np.array_equal(labels, d.target)
